// Decode speed in the browser, side by side: builds of two commits (each a `www/` folder with its
// `pkg/`) in the same headless Chromium (WebGPU on SwiftShader here), through the public API, on
// one weight pack. Tokens are counted, not text callbacks: every timed reply must end with
// finish = "length", so it holds exactly maxTokens tokens (random weights emit partial UTF-8, so
// text arrives in bursts). Decode rate = (N − 1) / (t(N) − t(1)), each timed after a reset so that
// both prefill the same prompt.
//
//   node benchmarks/browser-decode.mjs PACK_DIR label=WWW_DIR[,fast] [label=WWW_DIR[,fast] ...]
//   ",fast": that build's chats with the opt-in fast setting (f16 KV cache)
//   env: TOKENS (default 17), ROUNDS (default 2), REPEAT (the prompt's sentence this many times,
//   default 1: longer contexts), CHROMIUM (default /usr/bin/chromium)
import { chromium } from 'playwright-core';
import http from 'node:http';
import fs from 'node:fs';
import path from 'node:path';

const [packDir, ...builds] = process.argv.slice(2);
if (!packDir || !builds.length) {
  console.error('usage: node benchmarks/browser-decode.mjs PACK_DIR label=WWW_DIR [label=WWW_DIR ...]');
  process.exit(2);
}
const roots = Object.fromEntries(builds.map((b) => [b.split('=')[0], b.split('=')[1].split(',')[0]]));
const fastOf = Object.fromEntries(builds.map((b) => [b.split('=')[0], b.split('=')[1].split(',').includes('fast')]));
const repeat = Number(process.env.REPEAT || 1);
const types = { '.js': 'text/javascript', '.mjs': 'text/javascript', '.wasm': 'application/wasm', '.json': 'application/json', '.html': 'text/html', '.css': 'text/css' };
const probe = '<!doctype html><meta charset="utf-8"><title>decode bench</title>';

const server = http.createServer((req, res) => {
  const url = new URL(req.url, 'http://x');
  const [, label, ...rest] = url.pathname.split('/');
  const file = label === 'pack' ? path.join(packDir, ...rest) : roots[label] && path.join(roots[label], ...rest);
  if (rest.join('/') === 'probe.html') {
    res.writeHead(200, { 'content-type': 'text/html' });
    return res.end(probe);
  }
  if (!file || !fs.existsSync(file) || fs.statSync(file).isDirectory()) {
    res.writeHead(404);
    return res.end();
  }
  res.writeHead(200, { 'content-type': types[path.extname(file)] || 'application/octet-stream' });
  fs.createReadStream(file).pipe(res);
});
await new Promise((r) => server.listen(0, '127.0.0.1', r));
const base = `http://127.0.0.1:${server.address().port}`;

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: ['--enable-unsafe-webgpu', '--no-sandbox', '--disable-gpu-sandbox'],
});
const tokens = Number(process.env.TOKENS || 17);
const rounds = Number(process.env.ROUNDS || 2);
const results = {};
try {
  for (let round = 0; round < rounds; round++) {
    for (const label of Object.keys(roots)) {
      const page = await (await browser.newContext()).newPage();
      await page.goto(`${base}/${label}/probe.html`);
      const r = await page.evaluate(
        async ({ pack, tokens, fast, repeat }) => {
          const { create } = await import('./janus.js');
          const engine = await create({ source: { pack } });
          const messages = [{ role: 'user', content: Array(repeat).fill('Write a short story about a lighthouse keeper and a storm.').join(' ') }];
          const timed = async (n) => {
            await engine.reset();
            const t0 = performance.now();
            const reply = await engine.call('chat', { messages, options: { temperature: 0, maxTokens: n, fast } });
            if (reply.finish !== 'length') throw new Error(`reply ended with ${reply.finish} before ${n} tokens`);
            return { ms: performance.now() - t0, promptTokens: reply.promptTokens };
          };
          await timed(2); // compiles and warms everything up
          const one = await timed(1);
          const many = await timed(tokens);
          const i = (await navigator.gpu.requestAdapter())?.info || {};
          const adapter = [i.vendor, i.architecture, i.description].filter(Boolean).join(' / ');
          const { loadSeconds, compileSeconds, pipelines } = engine.info;
          return { adapter, promptTokens: one.promptTokens, firstTokenMs: one.ms, decodeTokensPerS: (tokens - 1) / ((many.ms - one.ms) / 1000), loadSeconds, compileSeconds, pipelines };
        },
        { pack: `${base}/pack/`, tokens, fast: fastOf[label], repeat },
      );
      (results[label] ||= []).push(r);
      const load = `load ${r.loadSeconds.toFixed(2)} s (compile phase ${r.compileSeconds.toFixed(2)} s, ${r.pipelines} pipelines)`;
      console.log(`${label} round ${round + 1}: ${load}, prompt ${r.promptTokens} tokens, first token ${(r.firstTokenMs / 1000).toFixed(2)} s, decode ${r.decodeTokensPerS.toFixed(2)} tokens/s (${r.adapter || 'adapter not disclosed'})`);
      await page.context().close();
    }
  }
} finally {
  await browser.close();
  server.close();
}
for (const [label, rs] of Object.entries(results)) {
  const best = Math.max(...rs.map((r) => r.decodeTokensPerS));
  console.log(`${label}: best decode ${best.toFixed(2)} tokens/s over ${rs.length} rounds`);
}
