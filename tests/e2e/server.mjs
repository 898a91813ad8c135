// A static server on 127.0.0.1 standing in for the app host, the weight CDN and the Hugging Face
// Hub (single HTTP Range requests are honoured, as the Hub's CDN does), with switches the tests
// use: go offline, drop the connection after N shards, corrupt a shard once, cut the next
// .safetensors response after N bytes or all of them once a byte budget is spent, count requests
// per path and record the ranges asked for.
import http from 'node:http';
import fs from 'node:fs';
import path from 'node:path';

const MIME = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.json': 'application/json',
  '.wasm': 'application/wasm',
  '.png': 'image/png',
  '.jpg': 'image/jpeg',
  '.bin': 'application/octet-stream',
  '.npy': 'application/octet-stream',
  '.svg': 'image/svg+xml',
  '.webmanifest': 'application/manifest+json',
};

export function startServer(mounts) {
  const state = { offline: false, packOffline: false, shardBudget: Infinity, corruptOnce: new Set(), counts: new Map(), budget: Infinity, cutOnce: 0, ranges: [], served: 0 };
  const server = http.createServer((req, res) => {
    const url = new URL(req.url, 'http://x');
    const p = decodeURIComponent(url.pathname);
    state.counts.set(p, (state.counts.get(p) || 0) + 1);
    if (state.offline || (state.packOffline && p.startsWith('/pack/'))) {
      req.socket.destroy();
      return;
    }
    const mount = Object.keys(mounts).sort((a, b) => b.length - a.length).find((m) => p.startsWith(m));
    if (!mount) return notFound(res);
    let file = path.join(mounts[mount], p.slice(mount.length));
    if (!file.startsWith(mounts[mount])) return notFound(res);
    if (fs.existsSync(file) && fs.statSync(file).isDirectory()) file = path.join(file, 'index.html');
    if (!fs.existsSync(file)) return notFound(res);
    let body = fs.readFileSync(file);
    if (p.endsWith('.bin')) {
      if (state.shardBudget <= 0) {
        req.socket.destroy();
        return;
      }
      state.shardBudget -= 1;
      const name = path.basename(p);
      if (state.corruptOnce.has(name)) {
        state.corruptOnce.delete(name);
        body = Buffer.from(body);
        body[body.length >> 1] ^= 0xff;
      }
    }
    const type = MIME[path.extname(file)] || 'application/octet-stream';
    const range = /^bytes=(\d+)-(\d*)$/.exec(req.headers.range || '');
    let status = 200;
    const headers = { 'content-type': type, 'cache-control': 'no-cache', 'accept-ranges': 'bytes' };
    if (range) {
      const start = Number(range[1]);
      const end = range[2] ? Math.min(Number(range[2]), body.length - 1) : body.length - 1;
      state.ranges.push({ path: p, start, end });
      if (start >= body.length) {
        res.writeHead(416, { 'content-range': `bytes */${body.length}` });
        return res.end();
      }
      headers['content-range'] = `bytes ${start}-${end}/${body.length}`;
      body = body.subarray(start, end + 1);
      status = 206;
    }
    headers['content-length'] = body.length;
    if (p.endsWith('.safetensors')) {
      const cut = Math.min(state.cutOnce > 0 ? state.cutOnce : Infinity, state.budget);
      state.served += Math.min(cut, body.length);
      state.budget -= Math.min(cut, body.length);
      if (cut < body.length) {
        state.cutOnce = 0;
        if (cut === 0) return req.socket.destroy();
        // Headers and the first `cut` bytes, then the connection drops.
        res.writeHead(status, headers);
        res.write(body.subarray(0, cut), () => setTimeout(() => req.socket.destroy(), 20));
        return;
      }
    }
    res.writeHead(status, headers);
    res.end(body);
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve({ server, state, url: `http://127.0.0.1:${server.address().port}` })));
}

function notFound(res) {
  res.writeHead(404, { 'content-type': 'text/plain' });
  res.end('not found');
}
