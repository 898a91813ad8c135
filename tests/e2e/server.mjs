// A static server on 127.0.0.1 standing in for the app host, the weight CDN and the Hugging Face
// Hub (single HTTP Range requests are honoured, as the Hub's CDN does), with switches the tests
// use: go offline, drop the connection after N shards, corrupt a shard once, cut the next
// .safetensors response after N bytes or all of them once a byte budget is spent, count requests
// per path and record the ranges asked for, answer garbage for a pack manifest, pad a shard
// beyond its size, serve another folder under a mount (a pack update) or other bytes for a path.
//
// Every HTML and script response carries a strict Content-Security-Policy (scripts and styles
// from this origin only, wasm allowed, no eval, connections to this origin only), so every
// browser test runs under it; violations are reported to /__csp-report and kept in
// state.cspReports (the worker and service worker obey the header sent with their own script).
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

export const CSP = "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; worker-src 'self'; connect-src 'self'; img-src 'self' blob: data:; style-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; report-uri /__csp-report";

export function startServer(mounts) {
  const state = { offline: false, packOffline: false, shardBudget: Infinity, corruptOnce: new Set(), padOnce: new Set(), stallOnce: new Set(), counts: new Map(), budget: Infinity, cutOnce: 0, ranges: [], served: 0, garbageManifest: null, remap: {}, cspReports: [], shardDelay: 0, override: {} };
  const server = http.createServer((req, res) => {
    const url = new URL(req.url, 'http://x');
    const p = decodeURIComponent(url.pathname);
    if (p === '/__csp-report' && req.method === 'POST') {
      let body = '';
      req.on('data', (c) => (body += c));
      req.on('end', () => {
        state.cspReports.push(body);
        res.writeHead(204).end();
      });
      return;
    }
    state.counts.set(p, (state.counts.get(p) || 0) + 1);
    if (state.offline || (state.packOffline && p.startsWith('/pack/'))) {
      req.socket.destroy();
      return;
    }
    const mount = Object.keys(mounts).sort((a, b) => b.length - a.length).find((m) => p.startsWith(m));
    if (!mount) return notFound(res);
    if (state.garbageManifest != null && mount === '/pack/' && p.endsWith('/manifest.json')) {
      res.writeHead(200, { 'content-type': 'application/json', 'cache-control': 'no-cache' });
      return res.end(state.garbageManifest);
    }
    if (p in state.override) {
      res.writeHead(200, { 'content-type': MIME[path.extname(p)] || 'application/octet-stream', 'cache-control': 'no-cache' });
      return res.end(state.override[p]);
    }
    const dir = state.remap[mount] || mounts[mount];
    let file = path.join(dir, p.slice(mount.length));
    if (!file.startsWith(dir)) return notFound(res);
    if (fs.existsSync(file) && fs.statSync(file).isDirectory()) file = path.join(file, 'index.html');
    if (!fs.existsSync(file)) return notFound(res);
    const type = MIME[path.extname(file)] || 'application/octet-stream';
    const headers = { 'content-type': type, 'cache-control': 'no-cache', 'accept-ranges': 'bytes' };
    if (/\.(html|js|mjs)$/.test(file)) headers['content-security-policy'] = CSP;
    if (p.endsWith('.bin') && state.shardDelay > 0 && !req.delayed) {
      // A slow CDN: each shard waits, so other pages can act while a download is under way.
      req.delayed = true;
      state.counts.set(p, state.counts.get(p) - 1);
      return setTimeout(() => server.emit('request', req, res), state.shardDelay);
    }
    if (p.endsWith('.bin')) {
      if (state.shardBudget <= 0) {
        req.socket.destroy();
        return;
      }
      state.shardBudget -= 1;
      let body = fs.readFileSync(file);
      const name = path.basename(p);
      if (state.corruptOnce.has(name)) {
        state.corruptOnce.delete(name);
        body = Buffer.from(body);
        body[body.length >> 1] ^= 0xff;
      }
      if (state.stallOnce.has(name)) {
        // Half the body, then nothing more: a connection that hangs without closing.
        state.stallOnce.delete(name);
        res.writeHead(200, { ...headers, 'content-length': body.length });
        return res.write(body.subarray(0, body.length >> 1));
      }
      if (state.padOnce.has(name)) {
        // More bytes than the manifest declares, chunked (no Content-Length to refuse it early).
        state.padOnce.delete(name);
        res.writeHead(200, headers);
        return res.end(Buffer.concat([body, Buffer.alloc(65536)]));
      }
      res.writeHead(200, { ...headers, 'content-length': body.length });
      return res.end(body);
    }
    // Everything else is streamed from disk (checkpoints can be gigabytes), honouring one Range.
    const size = fs.statSync(file).size;
    let [start, end, status] = [0, size - 1, 200];
    const range = /^bytes=(\d+)-(\d*)$/.exec(req.headers.range || '');
    if (range) {
      start = Number(range[1]);
      end = range[2] ? Math.min(Number(range[2]), size - 1) : size - 1;
      state.ranges.push({ path: p, start, end });
      if (start >= size) {
        res.writeHead(416, { 'content-range': `bytes */${size}` });
        return res.end();
      }
      headers['content-range'] = `bytes ${start}-${end}/${size}`;
      status = 206;
    }
    const length = end - start + 1;
    headers['content-length'] = length;
    let cut = Infinity;
    if (p.endsWith('.safetensors')) {
      cut = Math.min(state.cutOnce > 0 ? state.cutOnce : Infinity, state.budget);
      if (cut < length) state.cutOnce = 0;
      state.served += Math.min(cut, length);
      state.budget -= Math.min(cut, length);
      if (cut === 0) return req.socket.destroy();
    }
    res.writeHead(status, headers);
    if (length === 0) return res.end();
    const stream = fs.createReadStream(file, { start, end: start + Math.min(cut, length) - 1 });
    if (cut < length) {
      // The first `cut` bytes, then the connection drops. `end` closes the socket only once they
      // are flushed (a `destroy` discards unsent data: on a busy machine the client then got
      // fewer bytes than the budget allowed, and sometimes no shard before the failure), and
      // only after a pause, as a real stall would: Chromium discards what it has received but
      // the page has not read yet when a response fails, so an instant close after a burst on
      // localhost sometimes delivered nothing at all.
      stream.on('end', () => setTimeout(() => req.socket.end(), 500));
      stream.pipe(res, { end: false });
    } else {
      stream.pipe(res);
    }
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve({ server, state, url: `http://127.0.0.1:${server.address().port}` })));
}

function notFound(res) {
  res.writeHead(404, { 'content-type': 'text/plain' });
  res.end('not found');
}
