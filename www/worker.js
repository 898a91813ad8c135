// The engine's home: a module worker, so the page never blocks. It downloads a weight pack into
// IndexedDB (verified, shard by shard, resumable), streams it from there into the wasm engine and
// runs chat / image questions / generation. The messages are defined in protocol.js.
//
// Failures reach the page as {message, kind}; the kinds come from where things fail (the engine
// sets its own in Rust), never from reading the message. Two failures end the engine: a lost GPU
// device (reported as MSG.lost, the page reloads the engine on a fresh one) and a trap of the
// wasm instance (a Rust panic; reported as MSG.crashed, the page replaces this worker).

import init, * as wasm from './pkg/janusflow.js';
import * as store from './store.js';
import { importHf, hfKey, migrateKey, baseUrl, describe as describeHf, DEFAULT_QUANT } from './hf.js';
import { OP, URGENT, MSG, KIND, kindError } from './protocol.js';
import { fetchRetry, readBody, readText, setStallSeconds, withRetry, sleep, RETRIES } from './net.js';

/** A manifest lists a few hundred tensors (≈ 100 KB for the real model): 8 MiB is plenty. */
const MANIFEST_CAP = 8 << 20;
/** As in src/weights/pack.rs: shards are named by their SHA-256 and hold at most 32 MiB. */
const SHARD_NAME = /^[0-9a-f]{64}\.bin$/;
const MAX_SHARD = 32 << 20;

let engine = null;
let canceller = null;
let engineKey = null;
let engineInfo = null;
let queue = Promise.resolve();
/** The request running now, those waiting behind it, and those cancelled while they waited. */
let running = null;
const queued = new Set();
const cancelledQueued = new Set();
let wasmReady = null;
let crashed = false;

function post(id, type, payload = {}, transfer = []) {
  self.postMessage({ id, type, ...payload }, transfer);
}

function ensureWasm() {
  if (!wasmReady) wasmReady = init();
  return wasmReady;
}

// ---- The GPU device: seen, watched, and (for tests) lost on purpose ----------------------------

// wgpu asks the adapter for its device itself, so the worker wraps requestDevice to hold the
// GPUDevice it gets: its `lost` promise is the only reliable sign that the device is gone (a
// loss surfaces in the engine as whatever call failed next, a readback, a submit, a map).
let lastDevice = null;
/** The loaded engine's device, its GPUDeviceLostInfo once lost, and whether a loss is reported. */
let gpu = { device: null, lost: null, report: false };
/** Test hook: destroy the engine's device at the next streamed token or flow step. */
let loseOn = null;

if (typeof GPUAdapter !== 'undefined') {
  const requestDevice = GPUAdapter.prototype.requestDevice;
  GPUAdapter.prototype.requestDevice = async function (descriptor) {
    const d = { ...(descriptor || {}) };
    // Subgroup operations when the adapter offers them (wgpu 30 cannot ask for them here); if
    // asking fails, the device is requested exactly as wgpu asked. The engine reads
    // `self.janusflowSubgroups` right after: its workgroup reductions use subgroups only when the
    // device has them and WGSL has the `subgroup_id` builtin they are written with.
    let device = null;
    self.janusflowSubgroups = false;
    if (this.features && this.features.has('subgroups') && !(d.requiredFeatures || []).includes('subgroups')) {
      device = await requestDevice.call(this, { ...d, requiredFeatures: [...(d.requiredFeatures || []), 'subgroups'] }).catch(() => null);
    }
    device = device || (await requestDevice.call(this, descriptor));
    self.janusflowSubgroups = !!(device.features.has('subgroups') && navigator.gpu.wgslLanguageFeatures?.has('subgroup_id'));
    lastDevice = device;
    return device;
  };
}

function watchDevice(device) {
  const mine = { device, lost: null, report: true };
  gpu = mine;
  if (!device) return;
  device.lost.then((info) => {
    mine.lost = info;
    // Only the engine's own device: one dropped on purpose (unload, reload) is not a loss.
    if (mine.report) post(null, MSG.lost, { message: lostMessage(info) });
  });
}

function lostMessage(info) {
  return `the GPU device was lost (${(info && (info.message || info.reason)) || 'no reason given'}); the engine is loaded again on a fresh device`;
}

function loseDevice() {
  const d = gpu.device;
  if (d) d.destroy();
  return !!d;
}

// ---- Crashes: a trapped wasm instance never answers again -------------------------------------

function crash(message) {
  if (crashed) return;
  crashed = true;
  post(null, MSG.crashed, { message: `the engine crashed: ${message}` });
}
// Called by the Rust panic hook before the instance traps.
self.__janusPanic = (message) => crash(String(message));
self.addEventListener('error', (ev) => crash(ev.message || 'uncaught error'));
self.addEventListener('unhandledrejection', (ev) => {
  // A trap inside an async engine call surfaces here (its promise is never settled).
  if (crashed || ev.reason instanceof WebAssembly.RuntimeError) crash((ev.reason && ev.reason.message) || String(ev.reason));
  else console.error('janusflow worker: unhandled rejection', ev.reason);
});

/** What the page is told about a failure: its kind, and 'device-lost' whenever the device is gone. */
async function explain(e) {
  if (crashed || e instanceof WebAssembly.RuntimeError) {
    crash((e && e.message) || String(e));
    return { message: `the engine crashed: ${(e && e.message) || e}`, kind: KIND.crashed };
  }
  const kind = e && e.kind;
  // A loss is reported by `device.lost` a moment after the call that hit it failed: wait briefly
  // before blaming anything else (not for failures that cannot come from the GPU).
  const cannotBeGpu = [KIND.badInput, KIND.cancelled, KIND.badWeights, KIND.network, KIND.quota, KIND.storage, KIND.corrupt, KIND.config].includes(kind);
  let lost = gpu.lost;
  if (gpu.device && !lost && !cannotBeGpu) lost = await Promise.race([gpu.device.lost, sleep(500).then(() => null)]);
  if (lost && !cannotBeGpu) return { message: lostMessage(lost), kind: KIND.deviceLost };
  return { message: (e && e.message) || String(e), kind: kind || KIND.internal };
}

// ---- Weights: manifest, download, storage -------------------------------------------------------

/** A pack manifest checked as far as deciding what to fetch needs (the engine checks the rest). */
function parseManifest(text) {
  const bad = (why) => kindError(`manifest.json is not a usable weight pack manifest: ${why}`, KIND.badWeights);
  let m;
  try {
    m = JSON.parse(text);
  } catch (e) {
    throw bad('not JSON');
  }
  if (!m || m.format !== 'janusflow-pack') throw bad('its format is not janusflow-pack');
  if (!Array.isArray(m.shards) || !m.shards.length) throw bad('it lists no shards');
  const seen = new Set();
  let total = 0;
  for (const s of m.shards) {
    // Shard names become URLs: only content-hash file names, never paths or other hosts.
    if (!s || typeof s.file !== 'string' || !SHARD_NAME.test(s.file)) throw bad(`shard name ${JSON.stringify(s && s.file)} is not <sha256>.bin`);
    if (!Number.isSafeInteger(s.size) || s.size <= 0 || s.size > MAX_SHARD) throw bad(`shard ${s.file} has size ${s.size}`);
    if (seen.has(s.file)) throw bad(`shard ${s.file} is listed twice`);
    seen.add(s.file);
    total += s.size;
  }
  if (total !== m.total_bytes) throw bad(`its shards hold ${total} bytes, total_bytes says ${m.total_bytes}`);
  return m;
}

/**
 * The manifest from the network when it is reachable and usable, else the stored complete copy
 * (an offline start, a server answering garbage, a broken update).
 */
async function manifestFor(base, retries) {
  const stored = await store.getPack(base);
  const usable = stored && stored.complete && stored.manifestText ? stored : null;
  try {
    // With a stored copy, one quick try: starting offline must not wait for retries.
    const r = await fetchRetry(new URL('manifest.json', base), { cache: 'no-cache' }, { retries: usable ? 0 : retries });
    const text = await readText(r, MANIFEST_CAP, 'manifest.json');
    parseManifest(text);
    return { text, stored };
  } catch (e) {
    if (usable) {
      console.warn(`janusflow: using the stored copy of ${base}: ${e.message}`);
      return { text: usable.manifestText, stored, offline: true };
    }
    throw kindError(`cannot use the weight pack manifest from ${base} (${e.message}) and no copy is stored`, e.kind || KIND.network);
  }
}

/** Downloads every missing shard, verifying each before it is committed with `recordFor(committed)`. */
async function download(id, key, base, manifest, retries, recordFor) {
  const have = await store.shardNames();
  const missing = manifest.shards.filter((s) => !have.has(s.file));
  const total = manifest.shards.reduce((a, s) => a + s.size, 0);
  const need = missing.reduce((a, s) => a + s.size, 0);
  let loaded = total - need;
  await store.checkSpace(need);
  const t0 = performance.now();
  let fetched = 0;
  const committed = [];
  for (const s of missing) {
    await withRetry(
      async () => {
        const r = await fetchRetry(new URL(s.file, base), {}, { retries: 0 });
        // Exactly the declared size: more is cut off and refused, less is a dropped connection.
        const buf = await readBody(r, {
          expected: s.size,
          label: s.file,
          onBytes: (n) => {
            const speed = (fetched + n) / Math.max((performance.now() - t0) / 1000, 1e-3);
            post(id, MSG.progress, { phase: 'download', loaded: loaded + n, total, speed, remaining: (need - fetched - n) / Math.max(speed, 1) });
          },
        });
        post(id, MSG.progress, { phase: 'verify', loaded: loaded + buf.byteLength, total, detail: s.file });
        await store.putShard(s.file, buf.buffer, key, recordFor([...committed, s.file]));
      },
      { retries, onRetry: (n, of, e) => post(id, MSG.progress, { phase: 'download', loaded, total, detail: `${e.message}; retrying (${n}/${of})` }) },
    );
    committed.push(s.file);
    fetched += s.size;
    loaded += s.size;
  }
  return fetched;
}

/**
 * Makes sure a pack's shards are all stored (downloading what is missing); the caller holds the
 * exclusive lock. An update (a new manifest while a complete copy is stored) keeps the old
 * record in charge until the new one has loaded: `fallback` is the old manifest.
 */
async function ensurePack(id, source) {
  const base = baseUrl(source.pack);
  const retries = source.retries ?? RETRIES;
  const { text, stored, offline } = await manifestFor(base, retries);
  const manifest = parseManifest(text);
  const total = manifest.shards.reduce((a, s) => a + s.size, 0);
  if (offline) {
    const have = await store.shardNames();
    const gone = manifest.shards.filter((s) => !have.has(s.file)).length;
    if (gone) throw kindError(`${gone} of the stored model's ${manifest.shards.length} shards are missing and ${base} cannot be reached; connect and load again`, KIND.network);
    return { key: base, text, total, downloaded: 0, offline: true, fallback: null };
  }
  const same = !!(stored && stored.complete && stored.manifestText === text);
  const update = !!(stored && stored.complete && stored.manifestText && !same);
  // The stored complete copy, started instead of an update.
  const storedCopy = (offline) => ({ key: base, text: stored.manifestText, total: parseManifest(stored.manifestText).total_bytes, downloaded: 0, offline, fallback: null });
  if (update && stored.rejectedManifest === text) {
    // This update was downloaded before and did not load: not again until the server changes it.
    console.warn(`janusflow: the update of ${base} did not load before; using the stored copy`);
    return storedCopy(false);
  }
  // Each shard is committed with a record that lists it: the complete copy in charge (plus the
  // update's shards as `pending`), or the partial download so far (resumed after a reload).
  const partial = (stored && !stored.complete && stored.shards) || [];
  // An update's shards from an interrupted earlier attempt stay listed (so no clean-up deletes them).
  const pendingBefore = (update && stored.pending) || [];
  const recordFor = (committed) =>
    same ? stored : update ? { ...stored, pending: [...new Set([...pendingBefore, ...committed])] } : { kind: 'pack', complete: false, shards: [...partial, ...committed], bytes: total };
  let downloaded;
  try {
    downloaded = await download(id, base, base, manifest, retries, recordFor);
  } catch (e) {
    // An update that cannot be fetched now (the network drops mid-way, no room for both copies,
    // a bad shard on the server) must not keep the stored copy from starting: start from it, and
    // the update resumes on a later load from the shards it committed.
    if (!update || ![KIND.network, KIND.quota, KIND.corrupt].includes(e.kind)) throw e;
    const have = await store.shardNames();
    if (!parseManifest(stored.manifestText).shards.every((sh) => have.has(sh.file))) throw e;
    console.warn(`janusflow: the update of ${base} could not be downloaded (${e.message}); using the stored copy`);
    return storedCopy(true);
  }
  if (!update && !same) {
    await store.putPack(base, { kind: 'pack', manifestText: text, complete: true, bytes: total, storedAt: Date.now() });
    await store.collectGarbage();
  } else if (same && stored.pending) {
    // An update abandoned on the server (the manifest went back): its partial shards go.
    const { pending, ...rest } = stored;
    await store.putPack(base, rest);
    await store.collectGarbage();
  }
  return { key: base, text, total, downloaded, offline: false, fallback: update ? stored.manifestText : null };
}

/**
 * An update that loaded becomes the stored copy; the shards only the old one used are deleted.
 * One that did not load (`keep` 'old') is remembered, so it is not downloaded again at every
 * start while the server offers it; its shards are deleted.
 */
async function settleUpdate(key, text, total, keep) {
  await store.withLock('exclusive', async () => {
    const rec = await store.getPack(key);
    if (!rec) return; // deleted meanwhile (by another tab): nothing to settle
    const { pending, rejectedManifest, ...rest } = rec;
    if (keep === 'new') await store.putPack(key, { ...rest, manifestText: text, complete: true, bytes: total, storedAt: Date.now() });
    else await store.putPack(key, { ...rest, rejectedManifest: text });
    await store.collectGarbage();
  });
}

/** Converts (or finds) an HF source; the caller holds the exclusive lock. */
async function ensureHf(id, source, quant) {
  quant = quant || DEFAULT_QUANT;
  const key = hfKey(source.hf, quant);
  for (let attempt = 0; ; attempt++) {
    const { text, downloaded } = await importHf(source.hf, quant, (p) => post(id, MSG.progress, p));
    const manifest = JSON.parse(text);
    const have = await store.shardNames();
    if (manifest.shards.every((s) => have.has(s.file)) || attempt > 0) {
      if (downloaded) await store.collectGarbage();
      return { key, text, total: manifest.total_bytes, downloaded, offline: downloaded === 0, fallback: null };
    }
    // A complete record whose shards are gone (a corrupt one was removed): convert again.
    await store.putPack(key, { kind: 'hf', preset: quant, complete: false, shards: [] });
  }
}

/** Shard reads for the engine: one shard (≤ 32 MiB) cached at a time, re-verified once per session. */
function shardReader(id, total, bad) {
  let name = null;
  let bytes = null;
  let read = 0;
  const verified = new Set();
  return async (file, offset, length) => {
    if (file !== name) {
      const buf = await store.getShard(file);
      if (!buf) throw kindError(`shard ${file} is missing from the weight store`, KIND.storage);
      if (!verified.has(file)) {
        if (`${await store.sha256Hex(buf)}.bin` !== file) {
          bad.add(file);
          throw kindError(`stored shard ${file} is corrupt`, KIND.corrupt);
        }
        verified.add(file);
      }
      name = file;
      bytes = new Uint8Array(buf);
    }
    read += length;
    post(id, MSG.progress, { phase: 'upload', loaded: Math.min(read, total), total });
    return bytes.subarray(offset, offset + length);
  };
}

/** The IndexedDB key of a source: a pack's base URL, or the HF model and VAE URLs with the preset. */
function sourceKey(source, quant) {
  if (source && source.pack) return baseUrl(source.pack);
  if (source && source.hf && source.hf.model) return hfKey(source.hf, quant);
  throw kindError('no weight source given ({pack: URL} or {hf: {model: URL, vae: URL}})', KIND.config);
}

/** Frees the engine; its device's loss that follows is not reported. */
function dropEngine() {
  gpu.report = false;
  // wgpu's WebGPU backend frees nothing when its objects drop (the garbage collector would, some
  // time later): destroying the device frees the engine's GPU memory now, before another loads.
  if (gpu.device) gpu.device.destroy();
  gpu = { device: null, lost: null, report: false };
  if (engine) engine.free();
  engine = null;
  canceller = null;
  engineKey = null;
  engineInfo = null;
}

/**
 * Streams a stored pack to the GPU; the caller holds the shared lock, so no tab deletes shards
 * meanwhile. Resolves to null when a shard is missing (deleted between the two locks).
 */
async function upload(id, key, text, quant, bad) {
  const manifest = JSON.parse(text);
  const have = await store.shardNames();
  if (manifest.shards.some((s) => !have.has(s.file))) return null;
  dropEngine();
  const total = manifest.shards.reduce((a, s) => a + s.size, 0);
  const t0 = performance.now();
  lastDevice = null;
  let e;
  try {
    e = await wasm.loadEngine(text, shardReader(id, total, bad), quant || '', (done, all, what) => post(id, MSG.progress, { phase: 'upload', detail: what, step: done, steps: all }));
  } catch (err) {
    // The half-loaded weights' GPU memory goes with their device.
    if (lastDevice) lastDevice.destroy();
    lastDevice = null;
    throw err;
  }
  try {
    watchDevice(lastDevice);
    if (await isCpuAdapter()) e.setGpuTuning(false);
    post(id, MSG.progress, { phase: 'compile', detail: 'compiling shaders' });
    const c0 = performance.now();
    const pipelines = await e.compileKernels();
    const compileSeconds = (performance.now() - c0) / 1000;
    engine = e;
    engineKey = key;
    canceller = e.cancelHandle();
    engineInfo = { ...e.info(), bytes: total, loadSeconds: (performance.now() - t0) / 1000, pipelines, compileSeconds };
    for (const check of [engineInfo.subgroupCheck, engineInfo.shapeCheck]) {
      if (check && !check.passed) console.warn('JanusFlow: kernels disagree with their portable counterparts on this GPU, so those run instead', check);
    }
    return engineInfo;
  } catch (err) {
    if (engine !== e) {
      gpu.report = false; // explain() still sees the device; the page hears of it through this error
      e.free(); // its device goes at the next load's dropEngine, after explain() has looked at it
    }
    throw err;
  }
}

async function load(id, { source, quant }) {
  setStallSeconds(source && source.stallSeconds);
  const exports = await ensureWasm();
  const key = sourceKey(source, quant);
  if (engine && engineKey === key && !gpu.lost) return { ...engineInfo, downloaded: 0, offline: false, wasmHeapBytes: exports.memory.buffer.byteLength };
  if (navigator.storage && navigator.storage.persist) navigator.storage.persist().catch(() => {});
  const waiting = () => post(id, MSG.progress, { phase: 'waiting', detail: 'another tab is downloading or deleting the model' });
  for (let attempt = 1; ; attempt++) {
    // Download or convert what is missing while no other tab writes or deletes...
    const s = await store.withLock('exclusive', () => (source.pack ? ensurePack(id, source) : ensureHf(id, source, quant)), waiting);
    const engineQuant = source.pack ? quant : '';
    const bad = new Set();
    // ...then stream it to the GPU while other tabs may read but not delete.
    let info;
    try {
      info = await store.withLock('shared', async () => {
        try {
          return await upload(id, key, s.text, engineQuant, bad);
        } catch (e) {
          // A broken update: start from the copy that worked before, and keep it.
          if (!s.fallback || e.kind !== KIND.badWeights) throw e;
          console.warn(`janusflow: the updated pack does not load (${e.message}); using the stored copy`);
          const old = await upload(id, key, s.fallback, engineQuant, bad);
          if (old) old.keep = 'old';
          return old;
        }
      }, waiting);
    } catch (e) {
      // A stored shard that no longer matches its hash: remove it, then fetch (or convert) again.
      if (e.kind === KIND.corrupt && bad.size && attempt < 3) {
        await store.withLock('exclusive', () => store.deleteShards([...bad]));
        continue;
      }
      throw e;
    }
    if (!info) {
      if (attempt < 3) continue; // another tab deleted the model between the two steps
      throw kindError('the stored model keeps disappearing (deleted in another tab?); load again', KIND.storage);
    }
    if (s.fallback) await settleUpdate(key, s.text, s.total, info.keep || 'new');
    delete info.keep;
    // The wasm heap only grows, so its size now is the high-water mark of conversion and loading.
    return { ...info, downloaded: s.downloaded, offline: !!s.offline, wasmHeapBytes: exports.memory.buffer.byteLength };
  }
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

function needEngine() {
  if (gpu.lost) throw kindError(lostMessage(gpu.lost), KIND.deviceLost);
  if (!engine) throw kindError('the model is not loaded', KIND.config);
  return engine;
}

const ops = {
  async [OP.adapter]() {
    await ensureWasm();
    return wasm.adapterInfo();
  },
  [OP.load]: load,
  async [OP.chat](id, { messages, options }) {
    return needEngine().chat(messages, options || {}, (text) => {
      post(id, MSG.token, { text });
      if (loseOn === 'token') {
        loseOn = null;
        loseDevice();
      }
    });
  },
  async [OP.generate](id, { prompt, options, noise }) {
    const png = await needEngine().generate(prompt, options || {}, noise || undefined, (step, steps, preview, side) => {
      const payload = { step, steps, side };
      const transfer = [];
      if (preview) {
        payload.preview = preview;
        transfer.push(preview.buffer);
      }
      post(id, MSG.step, payload, transfer);
      if (loseOn === 'step') {
        loseOn = null;
        loseDevice();
      }
    });
    return png ? png : null;
  },
  async [OP.reset]() {
    if (engine && !gpu.lost) engine.reset();
    return true;
  },
  async [OP.unload]() {
    dropEngine();
    return true;
  },
  async [OP.delete](id, { source, quant }) {
    const key = sourceKey(source, quant);
    await store.withLock('exclusive', async () => {
      if (source.hf) await migrateKey(source.hf, quant);
      if (engineKey === key) dropEngine();
      await store.deletePack(key);
    }, () => post(id, MSG.progress, { phase: 'waiting', detail: 'another tab is using the stored model' }));
    return true;
  },
  /**
   * Test hook: {width}: the kernels assume subgroups that wide (null: the device's own width) and
   * the subgroup self-check runs again; resolves to {check, reductions} (its verdict, and the
   * width the reductions now use or null for the tree). Queued, so it never runs beside a chat.
   */
  async [OP.debugSubgroupCheck](id, { width }) {
    if (!engine) throw kindError('no engine is loaded', KIND.config);
    const check = await engine.debugSubgroupCheck(width ?? undefined);
    return { check, reductions: engine.info().subgroupReductions ?? null };
  },
  /** Sizes before downloading: {download, store} bytes (the consent screen shows them). */
  async [OP.describe](id, { source, quant }) {
    if (source.pack) {
      const { text } = await manifestFor(baseUrl(source.pack), source.retries ?? RETRIES);
      const bytes = parseManifest(text).total_bytes;
      return { download: bytes, store: bytes };
    }
    await ensureWasm();
    return describeHf(source.hf, quant);
  },
  async [OP.storage](id, { source, quant }) {
    const est = navigator.storage && navigator.storage.estimate ? await navigator.storage.estimate() : {};
    const persisted = navigator.storage && navigator.storage.persisted ? await navigator.storage.persisted() : false;
    if (source && source.hf) await migrateKey(source.hf, quant);
    const rec = source ? await store.getPack(sourceKey(source, quant)) : null;
    return { usage: est.usage, quota: est.quota, persisted, stored: rec ? { bytes: rec.bytes, complete: !!rec.complete, shards: rec.complete ? undefined : (rec.shards || []).length } : null };
  },
};

/** Handled as soon as they arrive, even while an operation runs. */
const urgent = {
  /** {target}: the request whose signal was aborted (without one: whatever runs). */
  [URGENT.cancel](id, { target } = {}) {
    if (target == null || target === running) {
      if (canceller) canceller.cancel();
    } else if (queued.has(target)) {
      cancelledQueued.add(target);
    }
  },
  /** Test hook: {when: 'now' | 'token' | 'step'}; resolves to whether an engine device exists. */
  [URGENT.debugLoseDevice](id, { when = 'now' }) {
    if (when === 'now') return loseDevice();
    loseOn = when;
    return !!gpu.device;
  },
  /** Test hook: {on}; resolves to the subgroup width the reductions now use (null: the tree). */
  [URGENT.debugSubgroupReductions](id, { on }) {
    if (!engine) throw kindError('no engine is loaded', KIND.config);
    engine.setSubgroupReductions(!!on);
    return engine.info().subgroupReductions ?? null;
  },
  /** Test hook: the loaded engine's facts now (`info` is a snapshot taken at load). */
  [URGENT.debugInfo]() {
    if (!engine) throw kindError('no engine is loaded', KIND.config);
    return engine.info();
  },
  /**
   * Test hook: {gpu, stageX, loads}: the GPU kernel shapes (which a CPU rasteriser never chooses
   * itself) or the CPU ones, staged matrix–vector activations and batched weight loads; resolves
   * to whether GPU shapes are on.
   */
  [URGENT.debugKernelShapes](id, { gpu: onGpu, stageX, loads }) {
    if (!engine) throw kindError('no engine is loaded', KIND.config);
    engine.setGpuTuning(!!onGpu);
    engine.setStagedActivations(!!stageX);
    engine.setMatvecLoads(loads || 1);
    return engine.info().gpuTuning;
  },
  /** Test hook: a Rust panic, which traps the wasm instance. */
  async [URGENT.debugPanic]() {
    await ensureWasm();
    if (!wasm.debugPanic) throw kindError('this engine build has no debugPanic', KIND.internal);
    wasm.debugPanic();
  },
};

self.onmessage = (ev) => {
  const { id, op, ...args } = ev.data;
  if (urgent[op]) {
    Promise.resolve()
      .then(() => urgent[op](id, args))
      .then(
        (value) => id != null && post(id, MSG.result, { value }),
        async (e) => id != null && post(id, MSG.error, await explain(e)),
      );
    return;
  }
  const fn = ops[op];
  if (!fn) return post(id, MSG.error, { message: `unknown operation ${op}`, kind: KIND.internal });
  // One operation at a time: the engine is busy until the previous one finishes.
  queued.add(id);
  queue = queue.then(async () => {
    queued.delete(id);
    if (crashed) return post(id, MSG.error, { message: 'the engine crashed; it is being restarted', kind: KIND.crashed });
    if (cancelledQueued.delete(id)) return post(id, MSG.error, { message: 'cancelled before it started', kind: KIND.cancelled });
    running = id;
    try {
      const value = await fn(id, args);
      post(id, MSG.result, { value });
    } catch (e) {
      post(id, MSG.error, await explain(e));
    } finally {
      running = null;
    }
  });
};
