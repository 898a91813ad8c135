// JanusFlow Web: the public module. Any page can import it:
//
//   import { create } from './janus.js';
//   const engine = await create({ source: { pack: 'https://cdn.example/janusflow-q4/' }, onprogress });
//   const text = await engine.chat([{ role: 'user', content: 'Hi!' }], { ontoken: (t) => … });
//   const png = await engine.generate('a red fox in snow', { steps: 30, cfg: 2, onstep });
//
// or use the <janus-flow> element defined in janus-flow.js. The engine runs in a module worker
// (worker.js); every call here is a message to it.

const here = new URL('.', import.meta.url);

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
  throw new JanusError('the weight source must be {pack: URL} or {hf: {model: URL, vae: URL}}', 'config');
}

/** Spec defaults (JanusFlow demo): chat temperature 0.1, top-p 0.95, 512 tokens; 30 steps, cfg 2. */
export const defaults = Object.freeze({ temperature: 0.1, topP: 0.95, maxTokens: 512, seed: 42, steps: 30, cfg: 2.0, imageSeed: 12345 });

export class JanusError extends Error {
  constructor(message, kind) {
    super(message);
    this.name = 'JanusError';
    this.kind = kind || 'error';
  }
}

/** Whether this browser can run the engine at all (WebGPU present). */
export function hasWebGPU() {
  return typeof navigator !== 'undefined' && 'gpu' in navigator;
}

class Engine {
  constructor(worker, source) {
    this.worker = worker;
    this.source = source;
    this.nextId = 1;
    this.pending = new Map();
    this.info = null;
    worker.onmessage = (ev) => this.#receive(ev.data);
    worker.onerror = (ev) => {
      const err = new JanusError(`the engine worker failed: ${ev.message || 'unknown error'}`, 'worker');
      for (const p of this.pending.values()) p.reject(err);
      this.pending.clear();
    };
  }

  #receive(msg) {
    const p = this.pending.get(msg.id);
    if (!p) return;
    if (msg.type === 'result') {
      this.pending.delete(msg.id);
      p.resolve(msg.value);
    } else if (msg.type === 'error') {
      this.pending.delete(msg.id);
      p.reject(new JanusError(msg.message, msg.kind));
    } else if (p.on[msg.type]) {
      p.on[msg.type](msg);
    }
  }

  call(op, args = {}, on = {}, signal) {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      if (signal && signal.aborted) return reject(new DOMException('Aborted', 'AbortError'));
      const onAbort = () => this.worker.postMessage({ op: 'cancel' });
      if (signal) signal.addEventListener('abort', onAbort, { once: true });
      const cleanup = () => signal && signal.removeEventListener('abort', onAbort);
      this.pending.set(id, {
        resolve: (v) => (cleanup(), resolve(v)),
        reject: (e) => (cleanup(), reject(e)),
        on,
      });
      this.worker.postMessage({ id, op, ...args });
    });
  }

  /**
   * Answers the last user message. `messages`: [{role: 'user'|'assistant', content, images?: Blob[]}].
   * Options: temperature, topP, topK, seed, maxTokens, ontoken(text), signal. Resolves to the reply text
   * (the full result with finish reason is in `engine.lastReply`).
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
    const reply = await this.call('chat', { messages: msgs, options: rest }, { token: (m) => ontoken && ontoken(m.text) }, signal);
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
      'generate',
      { prompt, options: { ...rest, preview: !!onstep }, noise: noise || null },
      {
        step: (m) => {
          if (!onstep) return;
          const preview = m.preview && typeof ImageData !== 'undefined' ? new ImageData(m.preview, m.side, m.side) : undefined;
          onstep({ step: m.step, steps: m.steps, preview });
        },
      },
      signal,
    );
    return png ? new Blob([png], { type: 'image/png' }) : null;
  }

  /** Stops the running chat or generation. */
  cancel() {
    this.worker.postMessage({ op: 'cancel' });
  }

  /** Forgets the conversation's cached state (the next chat prefills from scratch). */
  reset() {
    return this.call('reset');
  }

  /** {usage, quota, persisted, stored} of the browser storage. */
  storage() {
    return this.call('storage', { source: this.source });
  }

  /** Removes the stored weights of this source (and unloads the engine). */
  delete() {
    return this.call('delete', { source: this.source });
  }

  /** Ends the worker; the engine cannot be used afterwards. */
  terminate() {
    this.worker.terminate();
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
  if (!hasWebGPU()) throw new JanusError('this browser has no WebGPU (use Chrome or Edge 113+, Safari 26, or Firefox 141+ on Windows)', 'webgpu');
  source = normalize(source);
  // Ask the browser to keep the weights (only a page can ask; best-effort, no prompt in most browsers).
  if (typeof navigator !== 'undefined' && navigator.storage && navigator.storage.persist) navigator.storage.persist().catch(() => {});
  const worker = new Worker(new URL('worker.js', here), { type: 'module', name: 'janusflow-engine' });
  const engine = new Engine(worker, source);
  try {
    engine.info = await engine.call('load', { source, quant }, { progress: (m) => onprogress && onprogress(m) });
  } catch (e) {
    worker.terminate();
    throw e;
  }
  return engine;
}

/** Runs one worker operation in a short-lived worker (no model loaded). */
async function oneShot(op, args) {
  const worker = new Worker(new URL('worker.js', here), { type: 'module' });
  const e = new Engine(worker, args.source);
  try {
    return await e.call(op, args);
  } finally {
    worker.terminate();
  }
}

/** Storage facts without loading a model. */
export function storageInfo(source) {
  return oneShot('storage', { source: normalize(source) });
}

/** What loading `source` would cost before anything is downloaded: {download, store} bytes. */
export function describe(source, { quant } = {}) {
  return oneShot('describe', { source: normalize(source), quant });
}
