// A static server on 127.0.0.1 standing in for the app host and the weight CDN, with switches
// the tests use: go offline, drop the connection after N shards, corrupt a shard once, and
// count requests per path.
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
  const state = { offline: false, packOffline: false, shardBudget: Infinity, corruptOnce: new Set(), counts: new Map() };
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
    res.writeHead(200, { 'content-type': MIME[path.extname(file)] || 'application/octet-stream', 'content-length': body.length, 'cache-control': 'no-cache' });
    res.end(body);
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve({ server, state, url: `http://127.0.0.1:${server.address().port}` })));
}

function notFound(res) {
  res.writeHead(404, { 'content-type': 'text/plain' });
  res.end('not found');
}
