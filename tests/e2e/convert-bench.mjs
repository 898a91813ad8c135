// Benchmark of the in-browser conversion (www/hf.js): serves a checkpoint folder in the Hugging
// Face layout (with its VAE in DIR/vae or VAE_DIR) on a local server, converts it in Debian's
// Chromium exactly as the app does on first load, and prints throughput and the wasm heap's
// high-water mark. Not part of `./build.sh test` (the real size takes minutes):
//   node tests/e2e/convert-bench.mjs /path/to/JanusFlow-1.3B [/path/to/sdxl-vae] [q4a] [workers]
// (workers: conversion threads; the app's default, hf.js defaultWorkers(), when left out)
import { chromium } from 'playwright-core';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { startServer } from './server.mjs';

const root = path.resolve(path.dirname(new URL(import.meta.url).pathname), '../..');
const model = path.resolve(process.argv[2] || path.join(root, 'tests/fixtures/tiny'));
const vae = path.resolve(process.argv[3] || path.join(model, 'vae'));
const quant = process.argv[4] || 'q4a';
const workers = process.argv[5] ? Number(process.argv[5]) : undefined;
const { server, url } = await startServer({ '/hf/model/': model, '/hf/vae/': vae, '/e2e/': path.join(root, 'tests/e2e'), '/': path.join(root, 'www') });
// A persistent profile: incognito contexts keep IndexedDB in memory with a smaller quota.
const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'janusflow-bench-'));
const browser = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: ['--enable-unsafe-webgpu', '--no-sandbox', '--disable-gpu-sandbox', '--no-first-run'],
});
try {
  const page = await browser.newPage();
  page.on('console', (m) => console.log(`  ${m.text()}`));
  await page.goto(`${url}/e2e/test.html`);
  const r = await page.evaluate(async ([quant, workers]) => {
    const wasm = await (await import('/pkg/janusflow.js')).default();
    const hf = await import('/hf.js');
    const source = { model: '/hf/model/', vae: '/hf/vae/', workers };
    await new Promise((res) => { const q = indexedDB.deleteDatabase('janusflow'); q.onsuccess = q.onerror = q.onblocked = () => res(); });
    const sizes = await hf.describe(source, quant);
    const t0 = performance.now();
    let last = 0;
    const out = await hf.importHf(source, quant, (p) => {
      if (p.phase === 'convert' && p.loaded && performance.now() - last > 10000) {
        last = performance.now();
        console.log(`${((100 * p.loaded) / p.total).toFixed(1)} % ${(p.speed / 1e6).toFixed(1)} MB/s ${p.detail}`);
      }
    });
    const secs = (performance.now() - t0) / 1000;
    const m = JSON.parse(out.text);
    // Compare with a native pack: sha256 of manifest.json's shard file names, in order.
    const names = new TextEncoder().encode(m.shards.map((s) => s.file).join('\n'));
    const shardsSha = Array.from(new Uint8Array(await crypto.subtle.digest('SHA-256', names)), (b) => b.toString(16).padStart(2, '0')).join('');
    return { quant, seconds: +secs.toFixed(1), read_mb: +(sizes.download / 1e6).toFixed(1), stored_mib: +(m.total_bytes / 1048576).toFixed(1), shards: m.shards.length, mb_per_s: +(sizes.download / 1e6 / secs).toFixed(1), workers: out.workers, cores: navigator.hardwareConcurrency, wasm_heap_mib: +(Math.max(wasm.memory.buffer.byteLength, out.workerHeap || 0) / 1048576).toFixed(1), shards_sha256: shardsSha, agent: navigator.userAgent.match(/Chrom\w+\/[\d.]+/)?.[0] };
  }, [quant, workers]);
  console.log(JSON.stringify(r));
} finally {
  await browser.close();
  server.close();
  fs.rmSync(profile, { recursive: true, force: true });
}
