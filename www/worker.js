// The engine's home: a module worker, so the page never blocks. It downloads a weight pack into
// IndexedDB (verified, shard by shard, resumable), streams it from there into the wasm engine and
// runs chat / image questions / generation. Messages in: {id, op, ...}; out: {id, type, ...}
// with type progress | token | step | result | error.

import init, { loadEngine, adapterInfo } from './pkg/janusflow.js';
import * as store from './store.js';
import { importHf, hfKey, baseUrl, describe as describeHf } from './hf.js';

let engine = null;
let canceller = null;
let engineKey = null;
let queue = Promise.resolve();
let wasmReady = null;

function post(id, type, payload = {}, transfer = []) {
  self.postMessage({ id, type, ...payload }, transfer);
}

function fail(id, e) {
  const message = (e && e.message) || String(e);
  post(id, 'error', { message, kind: (e && e.kind) || classify(message) });
}

function classify(message) {
  if (/webgpu|adapter|gpu device/i.test(message)) return 'webgpu';
  if (/device (was )?lost|has been lost/i.test(message)) return 'device-lost';
  if (/quota/i.test(message)) return 'quota';
  return 'error';
}

function ensureWasm() {
  if (!wasmReady) wasmReady = init();
  return wasmReady;
}

/** Manifest: from the network when reachable, else the stored copy (offline start). */
async function manifestFor(base, id) {
  const stored = await store.getPack(base);
  try {
    const r = await fetch(new URL('manifest.json', base), { cache: 'no-cache' });
    if (!r.ok) throw new Error(`HTTP ${r.status}`);
    const text = await r.text();
    JSON.parse(text);
    return { text, stored };
  } catch (e) {
    if (stored) return { text: stored.manifestText, stored, offline: true };
    throw new Error(`cannot fetch the weight pack manifest from ${base} (${e.message}) and no copy is stored`);
  }
}

/** Downloads every missing shard, verifying each before it is committed. */
async function download(id, base, manifest) {
  const have = await store.shardNames();
  const missing = manifest.shards.filter((s) => !have.has(s.file));
  const total = manifest.shards.reduce((a, s) => a + s.size, 0);
  const need = missing.reduce((a, s) => a + s.size, 0);
  let loaded = total - need;
  await store.checkSpace(need);
  const t0 = performance.now();
  let fetched = 0;
  for (const s of missing) {
    let lastError = null;
    for (let attempt = 0; attempt < 3; attempt++) {
      try {
        const r = await fetch(new URL(s.file, base), { cache: 'no-store' });
        if (!r.ok) throw new Error(`HTTP ${r.status} for ${s.file}`);
        const buf = await readWithProgress(r, (n) => {
          const secs = (performance.now() - t0) / 1000;
          const speed = (fetched + n) / Math.max(secs, 1e-3);
          post(id, 'progress', { phase: 'download', loaded: loaded + n, total, speed, remaining: (need - fetched - n) / Math.max(speed, 1) });
        });
        post(id, 'progress', { phase: 'verify', loaded: loaded + buf.byteLength, total, detail: s.file });
        await store.putShard(s.file, buf);
        fetched += s.size;
        loaded += s.size;
        lastError = null;
        break;
      } catch (e) {
        lastError = e;
        if (e.kind === 'quota') throw e;
      }
    }
    if (lastError) throw lastError;
  }
  return { total, downloaded: fetched };
}

async function readWithProgress(response, onBytes) {
  if (!response.body) return response.arrayBuffer();
  const reader = response.body.getReader();
  const chunks = [];
  let n = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    chunks.push(value);
    n += value.byteLength;
    onBytes(n);
  }
  const out = new Uint8Array(n);
  let o = 0;
  for (const c of chunks) {
    out.set(c, o);
    o += c.byteLength;
  }
  return out.buffer;
}

/** Shard reads for the engine: one shard (≤ 32 MiB) cached at a time, re-verified once per session. */
function shardReader(id, total) {
  let name = null;
  let bytes = null;
  let read = 0;
  const verified = new Set();
  return async (file, offset, length) => {
    if (file !== name) {
      const buf = await store.getShard(file);
      if (!buf) throw new Error(`shard ${file} is missing from the weight store`);
      if (!verified.has(file)) {
        if (`${await store.sha256Hex(buf)}.bin` !== file) throw Object.assign(new Error(`stored shard ${file} is corrupt; delete the model and download again`), { kind: 'corrupt' });
        verified.add(file);
      }
      name = file;
      bytes = new Uint8Array(buf);
    }
    read += length;
    post(id, 'progress', { phase: 'upload', loaded: Math.min(read, total), total });
    return bytes.subarray(offset, offset + length);
  };
}

/** The IndexedDB key of a source: a pack's base URL, or the HF model and VAE URLs. */
function sourceKey(source) {
  if (source && source.pack) return baseUrl(source.pack);
  if (source && source.hf && source.hf.model) return hfKey(source.hf);
  throw new Error('no weight source given ({pack: URL} or {hf: {model: URL, vae: URL}})');
}

/** A pack's manifest text, after making sure every shard is stored (downloading what is missing). */
async function packManifest(id, source) {
  const base = baseUrl(source.pack);
  const { text, offline } = await manifestFor(base, id);
  const manifest = JSON.parse(text);
  const total = manifest.shards.reduce((a, s) => a + s.size, 0);
  const stats = offline ? { total, downloaded: 0 } : await download(id, base, manifest);
  await store.putPack(base, { manifestText: text, complete: true, bytes: total, storedAt: Date.now() });
  return { text, total, downloaded: stats.downloaded, offline };
}

async function load(id, { source, quant }) {
  const wasm = await ensureWasm();
  const key = sourceKey(source);
  if (engine && engineKey === key) return engine.info();
  if (navigator.storage && navigator.storage.persist) navigator.storage.persist().catch(() => {});
  let text, total, downloaded, offline;
  if (source.pack) {
    ({ text, total, downloaded, offline } = await packManifest(id, source));
  } else {
    // Converted in this worker while downloading; afterwards it is a pack like any other.
    ({ text, downloaded } = await importHf(source.hf, quant, (p) => post(id, 'progress', p)));
    total = JSON.parse(text).total_bytes;
    quant = '';
    offline = downloaded === 0;
  }
  if (engine) {
    engine.free();
    engine = null;
    canceller = null;
  }
  const t0 = performance.now();
  const read = shardReader(id, total);
  engine = await loadEngine(text, read, quant || '', (done, all, what) => post(id, 'progress', { phase: 'upload', detail: what, step: done, steps: all }));
  if (await isCpuAdapter()) engine.setGpuTuning(false);
  post(id, 'progress', { phase: 'compile', detail: 'compiling shaders' });
  const c0 = performance.now();
  const pipelines = await engine.compileKernels();
  const compileSeconds = (performance.now() - c0) / 1000;
  engineKey = key;
  canceller = engine.cancelHandle();
  const info = engine.info();
  // The wasm heap only grows, so its size now is the high-water mark of conversion and loading.
  return { ...info, downloaded, bytes: total, loadSeconds: (performance.now() - t0) / 1000, offline: !!offline, pipelines, compileSeconds, wasmHeapBytes: wasm.memory.buffer.byteLength };
}

// wgpu cannot see what the browser's adapter is. A CPU rasteriser (SwiftShader, WARP, llvmpipe)
// runs kernels shaped for few large workgroups faster than those shaped for a real GPU.
async function isCpuAdapter() {
  try {
    const a = await navigator.gpu?.requestAdapter();
    const i = a?.info || {};
    const text = [i.vendor, i.architecture, i.device, i.description].join(' ');
    return !!(a?.isFallbackAdapter || i.isFallbackAdapter || /swiftshader|llvmpipe|lavapipe|warp|basic render/i.test(text));
  } catch {
    return false;
  }
}

const ops = {
  async adapter() {
    await ensureWasm();
    return adapterInfo();
  },
  load,
  async chat(id, { messages, options }) {
    if (!engine) throw new Error('the model is not loaded');
    return engine.chat(messages, options || {}, (text) => post(id, 'token', { text }));
  },
  async generate(id, { prompt, options, noise }) {
    if (!engine) throw new Error('the model is not loaded');
    const png = await engine.generate(prompt, options || {}, noise || undefined, (step, steps, preview, side) => {
      const payload = { step, steps, side };
      const transfer = [];
      if (preview) {
        payload.preview = preview;
        transfer.push(preview.buffer);
      }
      post(id, 'step', payload, transfer);
    });
    return png ? png : null;
  },
  async reset() {
    if (engine) engine.reset();
    return true;
  },
  async unload() {
    if (engine) engine.free();
    engine = null;
    canceller = null;
    engineKey = null;
    return true;
  },
  async delete(id, { source }) {
    const key = sourceKey(source);
    if (engineKey === key) await ops.unload();
    await store.deletePack(key);
    return true;
  },
  /** Sizes before downloading: {download, store} bytes (the consent screen shows them). */
  async describe(id, { source, quant }) {
    if (source.pack) {
      const { text } = await manifestFor(baseUrl(source.pack), id);
      const bytes = JSON.parse(text).shards.reduce((a, s) => a + s.size, 0);
      return { download: bytes, store: bytes };
    }
    await ensureWasm();
    return describeHf(source.hf, quant);
  },
  async storage(id, { source }) {
    const est = navigator.storage && navigator.storage.estimate ? await navigator.storage.estimate() : {};
    const persisted = navigator.storage && navigator.storage.persisted ? await navigator.storage.persisted() : false;
    const rec = source ? await store.getPack(sourceKey(source)) : null;
    return { usage: est.usage, quota: est.quota, persisted, stored: rec ? { bytes: rec.bytes, complete: rec.complete, shards: rec.complete ? undefined : (rec.shards || []).length } : null };
  },
};

self.onmessage = async (ev) => {
  const { id, op, ...args } = ev.data;
  if (op === 'cancel') {
    if (canceller) canceller.cancel();
    return;
  }
  const fn = ops[op];
  if (!fn) return fail(id, new Error(`unknown operation ${op}`));
  // One operation at a time: the engine is busy until the previous one finishes.
  queue = queue.then(async () => {
    try {
      const value = await fn(id, args);
      post(id, 'result', { value });
    } catch (e) {
      fail(id, e);
    }
  });
};
