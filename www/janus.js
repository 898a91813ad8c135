// JanusFlow Web: the public module. Any page can import it:
//
//   import { create } from './janus.js';
//   const engine = await create({ source: { pack: 'https://cdn.example/janusflow-q4/' }, onprogress });
//   const text = await engine.chat([{ role: 'user', content: 'Hi!' }], { ontoken: (t) => … });
//   const png = await engine.generate('a red fox in snow', { steps: 30, cfg: 2, onstep });
//
// or use the <janus-flow> element defined in janus-flow.js. The engine runs in a module worker
// (worker.js); every call here is a message to it.

import { OP, URGENT, MSG, KIND } from './protocol.js';
import { watch } from './store.js';

const here = new URL('.', import.meta.url);

export { KIND };

/**
 * The default weight source: the official checkpoints in their Hugging Face layout, converted in
 * the browser while they download (about 4.4 GB read, 1.4 GB stored for q4).
 */
export const officialSource = Object.freeze({
  hf: Object.freeze({ model: 'https://huggingface.co/deepseek-ai/JanusFlow-1.3B/resolve/main/', vae: 'https://huggingface.co/stabilityai/sdxl-vae/resolve/main/' }),
});

/** The same checkpoints under another Hugging Face endpoint (a mirror such as https://hf-mirror.com). */
export function hfSource(endpoint) {
  const base = endpoint.replace(/\/+$/, '');
  return { hf: { model: `${base}/deepseek-ai/JanusFlow-1.3B/resolve/main/`, vae: `${base}/stabilityai/sdxl-vae/resolve/main/` } };
}

/** Absolute URLs (the worker resolves against its own location otherwise). */
function normalize(source) {
  const abs = (u) => (u ? new URL(u, globalThis.location ? globalThis.location.href : here).href : u);
  if (!source) return officialSource;
  if (source.pack) return { ...source, pack: abs(source.pack) };
  if (source.hf) return { ...source, hf: { ...source.hf, model: abs(source.hf.model), vae: abs(source.hf.vae) } };
  throw new JanusError('the weight source must be {pack: URL} or {hf: {model: URL, vae: URL}}', KIND.config);
}

/** Spec defaults (JanusFlow demo): chat temperature 0.1, top-p 0.95, 512 tokens; 30 steps, cfg 2; the app draws 4 pictures per prompt. */
export const defaults = Object.freeze({ temperature: 0.1, topP: 0.95, maxTokens: 512, seed: 42, steps: 30, cfg: 2.0, imageSeed: 12345, imageCount: 4 });

export class JanusError extends Error {
  constructor(message, kind) {
    super(message);
    this.name = 'JanusError';
    this.kind = kind || KIND.internal;
  }
}

/** Whether this browser can run the engine at all (WebGPU present). */
export function hasWebGPU() {
  return typeof navigator !== 'undefined' && 'gpu' in navigator;
}

function spawnWorker() {
  return new Worker(new URL('worker.js', here), { type: 'module', name: 'janusflow-engine' });
}

/**
 * The engine in its worker. The worker can die (a trap in the wasm engine) and the GPU device can
 * be lost: either way every waiting call rejects at once (kind 'crashed' or 'device-lost'), the
 * worker is replaced, and the engine is loaded again from IndexedDB; later calls wait for that
 * and then run. Events: 'restart' ({detail: {kind, message}}) when that begins, 'ready'
 * ({detail: info}) when an engine is loaded.
 */
class Engine extends EventTarget {
  #worker = null;
  #ready = null;
  #loaded = false;
  #closed = false;

  constructor(source, quant, onprogress) {
    super();
    this.source = source;
    this.quant = quant;
    /** Progress of (re)loading: {phase, loaded, total, speed, remaining, detail}. */
    this.onprogress = onprogress || null;
    this.nextId = 1;
    this.pending = new Map();
    this.info = null;
  }

  #spawn() {
    const w = spawnWorker();
    w.onmessage = (ev) => this.#receive(w, ev.data);
    w.onerror = (ev) => {
      ev.preventDefault();
      this.#die(w, KIND.crashed, `the engine worker failed: ${ev.message || 'unknown error'}`);
    };
    w.onmessageerror = () => this.#die(w, KIND.crashed, 'the engine worker sent a message that cannot be read');
    this.#worker = w;
    return w;
  }

  #receive(w, msg) {
    if (w !== this.#worker) return; // the last words of a replaced worker
    if (msg.id == null) {
      if (msg.type === MSG.crashed) this.#die(w, KIND.crashed, msg.message);
      else if (msg.type === MSG.lost) this.#die(w, KIND.deviceLost, msg.message);
      return;
    }
    // A lost device or a crash ends this worker's engine, whichever message says so first.
    if (msg.type === MSG.error && (msg.kind === KIND.deviceLost || msg.kind === KIND.crashed)) return this.#die(w, msg.kind, msg.message);
    const p = this.pending.get(msg.id);
    if (!p) return;
    if (msg.type === MSG.result) {
      this.pending.delete(msg.id);
      p.resolve(msg.value);
    } else if (msg.type === MSG.error) {
      this.pending.delete(msg.id);
      p.reject(new JanusError(msg.message, msg.kind));
    } else if (p.on[msg.type]) {
      p.on[msg.type](msg);
    }
  }

  /**
   * The worker (or its engine) is gone: fail every waiting call now, never leave one hanging, and
   * replace the worker. An engine that was up is loaded again at once; one that died while
   * loading is loaded again by the next call (so a load that always crashes cannot loop).
   */
  #die(w, kind, message) {
    if (w !== this.#worker) return;
    w.terminate();
    this.#worker = null;
    this.#ready = null;
    const err = new JanusError(message, kind);
    for (const p of this.pending.values()) p.reject(err);
    this.pending.clear();
    const wasUp = this.#loaded;
    this.#loaded = false;
    if (this.#closed) return;
    this.dispatchEvent(new CustomEvent('restart', { detail: { kind, message } }));
    if (wasUp) this.#load().catch(() => {});
  }

  /** Loads the engine in the current worker (a new one if needed); the next calls wait for it. */
  #load() {
    const p = this.#post(OP.load, { source: this.source, quant: this.quant }, { progress: (m) => this.onprogress && this.onprogress(m) }).then((info) => {
      this.info = info;
      this.#loaded = true;
      this.dispatchEvent(new CustomEvent('ready', { detail: info }));
      return info;
    });
    this.#ready = p;
    p.catch(() => {
      if (this.#ready === p) this.#ready = null; // the next call tries again
    });
    return p;
  }

  /** Resolves when the engine is loaded (after a crash or a lost device: loaded again). */
  whenReady() {
    if (this.#closed) return Promise.reject(new JanusError('the engine was terminated', KIND.config));
    return this.#ready || this.#load();
  }

  /** A request to the worker, with no engine needed (storage, delete, describe). */
  #post(op, args = {}, on = {}, signal) {
    if (this.#closed) return Promise.reject(new JanusError('the engine was terminated', KIND.config));
    const w = this.#worker || this.#spawn();
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      if (signal && signal.aborted) return reject(new DOMException('Aborted', 'AbortError'));
      // The cancel names this request: a queued one is dropped, a running one stopped, others go on.
      const onAbort = () => this.#worker && this.#worker.postMessage({ op: URGENT.cancel, target: id });
      if (signal) signal.addEventListener('abort', onAbort, { once: true });
      const cleanup = () => signal && signal.removeEventListener('abort', onAbort);
      this.pending.set(id, {
        resolve: (v) => (cleanup(), resolve(v)),
        reject: (e) => (cleanup(), reject(e)),
        on,
      });
      try {
        w.postMessage({ id, op, ...args });
      } catch (e) {
        // Arguments that cannot be cloned (a function in the options, say): nothing was sent.
        this.pending.get(id).reject(e);
        this.pending.delete(id);
      }
    });
  }

  /** A request that needs the loaded engine: waits for it (a reload after a crash included). */
  async call(op, args = {}, on = {}, signal) {
    await this.whenReady();
    return this.#post(op, args, on, signal);
  }

  /**
   * Answers the last user message. `messages`: [{role: 'user'|'assistant', content, images?: Blob[]}].
   * Options: temperature, topP, topK, seed, maxTokens, ontoken(text), signal. Resolves to the reply text
   * (the full result with finish reason is in `engine.lastReply`). After a rejection of kind
   * 'device-lost' or 'crashed' the engine reloads itself; sending the same messages again works.
   */
  async chat(messages, options = {}) {
    const { ontoken, signal, ...rest } = options;
    const msgs = await Promise.all(
      messages.map(async (m) => ({
        role: m.role,
        content: m.content,
        images: m.images ? await Promise.all(m.images.map(async (b) => new Uint8Array(await b.arrayBuffer()))) : [],
      })),
    );
    const reply = await this.call(OP.chat, { messages: msgs, options: rest }, { [MSG.token]: (m) => ontoken && ontoken(m.text) }, signal);
    this.lastReply = reply;
    return reply.text;
  }

  /**
   * Draws a picture. Options: steps, cfg, seed, noise (Float32Array [4, latent, latent]),
   * onstep({step, steps, preview: ImageData|undefined}), signal. Resolves to a PNG Blob, or null
   * when stopped.
   */
  async generate(prompt, options = {}) {
    const { onstep, signal, noise, ...rest } = options;
    const png = await this.call(
      OP.generate,
      { prompt, options: { ...rest, preview: !!onstep }, noise: noise || null },
      {
        [MSG.step]: (m) => {
          if (!onstep) return;
          const preview = m.preview && typeof ImageData !== 'undefined' ? new ImageData(m.preview, m.side, m.side) : undefined;
          onstep({ step: m.step, steps: m.steps, preview });
        },
      },
      signal,
    );
    return png ? new Blob([png], { type: 'image/png' }) : null;
  }

  /**
   * Draws `count` pictures (1–8, default 4) of one prompt, with seeds seed, seed + 1, … (seed
   * defaults to `defaults.imageSeed`), one after another: picture i equals
   * `generate(prompt, { ...options, seed: seed + i })`. Options as `generate` (no `noise`), plus
   * onimage({index, png}) as each finishes; onstep also receives `index` and `count`. Resolves to
   * the PNG Blobs in order; when stopped, the ones not drawn are null.
   */
  async generateBatch(prompt, options = {}) {
    const { count = 4, seed = defaults.imageSeed, onstep, onimage, signal, noise, ...rest } = options;
    if (!Number.isInteger(count) || count < 1 || count > 8) throw new JanusError(`count must be a whole number from 1 to 8 (got ${count})`, KIND.badInput);
    if (noise) throw new JanusError('a batch draws from seeds; pass noise to generate() instead', KIND.badInput);
    const out = new Array(count).fill(null);
    for (let index = 0; index < count && !(signal && signal.aborted); index++) {
      const png = await this.generate(prompt, { ...rest, seed: seed + index, signal, onstep: onstep && ((s) => onstep({ ...s, index, count })) });
      if (!png) break;
      out[index] = png;
      if (onimage) onimage({ index, png });
    }
    return out;
  }

  /** Stops the running chat or generation. */
  cancel() {
    if (this.#worker) this.#worker.postMessage({ op: URGENT.cancel });
  }

  /** Forgets the conversation's cached state (the next chat prefills from scratch). */
  reset() {
    return this.#loaded ? this.#post(OP.reset) : Promise.resolve(true);
  }

  /** {usage, quota, persisted, stored} of the browser storage. */
  storage() {
    return this.#post(OP.storage, { source: this.source, quant: this.quant });
  }

  /** Removes the stored weights of this source and preset (and unloads the engine). */
  async delete() {
    await this.#post(OP.delete, { source: this.source, quant: this.quant });
    this.#loaded = false;
    this.#ready = null;
    return true;
  }

  /** Ends the worker; the engine cannot be used afterwards. */
  terminate() {
    this.#closed = true;
    const err = new JanusError('the engine was terminated', KIND.config);
    for (const p of this.pending.values()) p.reject(err);
    this.pending.clear();
    if (this.#worker) this.#worker.terminate();
    this.#worker = null;
  }

  /** Test hook: destroys the engine's GPU device now, or at the next token / flow step. */
  debugLoseDevice(when = 'now') {
    return this.#post(URGENT.debugLoseDevice, { when });
  }

  /**
   * Test hook: allows (the default) or forbids subgroup operations in the loaded engine's workgroup
   * reductions; resolves to the subgroup width they now use, or null for the workgroup tree.
   */
  debugSubgroupReductions(on) {
    return this.#post(URGENT.debugSubgroupReductions, { on });
  }

  /** Test hook: the loaded engine's facts as they are now (`info` is a snapshot taken at load). */
  debugInfo() {
    return this.#post(URGENT.debugInfo);
  }

  /**
   * Test hook: the loaded engine's kernels assume subgroups `width` lanes wide (null: the device's
   * own width), as a driver that misreports it would, and its subgroup self-check runs again;
   * resolves to {check, reductions}: the verdict (as `info.subgroupCheck`) and the width the
   * reductions now use, or null for the workgroup tree. Queued after the engine's other work.
   */
  debugSubgroupCheck(width = null) {
    return this.#post(OP.debugSubgroupCheck, { width });
  }

  /**
   * Test hook: the loaded engine's kernels shaped for a real GPU (`gpu: true`) or for a CPU
   * rasteriser, and its GPU-shape matrix–vector products with staged activations (`stageX`) and
   * weight loads batched over `loads` passes; resolves to whether GPU shapes are now on.
   */
  debugKernelShapes({ gpu = false, stageX = false, loads = 1 } = {}) {
    return this.#post(URGENT.debugKernelShapes, { gpu, stageX, loads });
  }

  /** Test hook: makes the wasm engine panic (trap); rejects with kind 'crashed'. */
  debugPanic() {
    return this.#post(URGENT.debugPanic);
  }

  /** Used by create() and the one-shot helpers. */
  static async open(source, quant, onprogress, load) {
    const e = new Engine(source, quant, onprogress);
    if (!load) return e;
    try {
      await e.whenReady();
    } catch (err) {
      e.terminate();
      throw err;
    }
    return e;
  }

  /** A request without loading anything (the one-shot helpers). */
  request(op, args) {
    return this.#post(op, args);
  }
}

/**
 * Starts the engine: downloads (or finds in IndexedDB) the weights of `source` and loads them
 * onto the GPU. `source`: {pack: URL} (a weight pack) or {hf: {model: URL, vae: URL}} (the
 * Hugging Face layout, converted while downloading; the default is `officialSource`).
 * `onprogress({phase, loaded, total, speed, remaining, detail})`, phase ∈ download | convert |
 * verify | upload | compile.
 */
export async function create({ source, quant, onprogress } = {}) {
  if (!hasWebGPU()) throw new JanusError('this browser has no WebGPU (use Chrome or Edge 113+, Safari 26, or Firefox 141+ on Windows)', KIND.webgpu);
  source = normalize(source);
  // Ask the browser to keep the weights (only a page can ask; best-effort, no prompt in most browsers).
  if (typeof navigator !== 'undefined' && navigator.storage && navigator.storage.persist) navigator.storage.persist().catch(() => {});
  return Engine.open(source, quant, onprogress, true);
}

/** Runs one worker operation in a short-lived worker (no model loaded). */
async function oneShot(op, args) {
  const e = await Engine.open(args.source, args.quant, null, false);
  try {
    return await e.request(op, args);
  } finally {
    e.terminate();
  }
}

/** Storage facts without loading a model. */
export function storageInfo(source, { quant } = {}) {
  return oneShot(OP.storage, { source: normalize(source), quant });
}

/** What loading `source` would cost before anything is downloaded: {download, store} bytes. */
export function describe(source, { quant } = {}) {
  return oneShot(OP.describe, { source: normalize(source), quant });
}

/** Deletes the stored weights of `source` (and preset) without loading them: "start over". */
export function deleteStored(source, { quant } = {}) {
  return oneShot(OP.delete, { source: normalize(source), quant });
}

/**
 * Calls `cb({type: 'stored' | 'deleted', key})` whenever a tab (or worker) of this site stores or
 * deletes a model; returns a function that stops it.
 */
export function watchStore(cb) {
  return watch(cb);
}

/** The hosts a source's weights come from (the consent screen names them). */
export function sourceHosts(source) {
  const s = normalize(source);
  const urls = s.pack ? [s.pack] : [s.hf.model, s.hf.vae].filter(Boolean);
  return [...new Set(urls.map((u) => new URL(u).host))];
}
