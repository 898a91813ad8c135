// Importing a checkpoint in the Hugging Face layout (deepseek-ai/JanusFlow-1.3B and
// stabilityai/sdxl-vae, or any mirror) into IndexedDB as a weight pack, converting while it
// downloads. The wasm converter (src/weights/stream.rs, the same code as `janusflow convert`)
// plans from the safetensors headers, asks for byte spans, and seals SHA-256-named shards; each
// shard is committed together with a checkpoint, so a dropped connection resumes at the exact
// byte (HTTP Range) and a reload resumes after the last committed shard. Used by worker.js.

import { HfConverter, sideFiles, safetensorsHeaderLength } from './pkg/janusflow.js';
import * as store from './store.js';
import { fetchRetry, readBody, readChunk, withRetry, RETRIES } from './net.js';
import { KIND, kindError } from './protocol.js';

/** The largest side file (config, tokenizer, index) read whole: the real tokenizer.json is ≈ 5 MB. */
const SMALL_FILE_CAP = 64 << 20;

/** An absolute folder URL (trailing slash), resolved against the worker's location. */
export function baseUrl(url) {
  const u = new URL(url, self.location.href);
  if (!u.pathname.endsWith('/')) u.pathname += '/';
  return u.href;
}

/** The IndexedDB key of an HF source and preset: each preset is its own stored pack, so two
 * presets live side by side instead of one deleting the other's download. */
/** The preset converted when none is asked for (the same as `janusflow convert`'s default). */
export const DEFAULT_QUANT = 'q4a';

export function hfKey(hf, quant) {
  return `hf:${baseUrl(hf.model)}|${hf.vae ? baseUrl(hf.vae) : ''}|${quant || DEFAULT_QUANT}`;
}

/** The key used before presets were kept apart (one record per source, its preset inside). */
function legacyKey(hf) {
  return `hf:${baseUrl(hf.model)}|${hf.vae ? baseUrl(hf.vae) : ''}`;
}

/** A stored record under the old key moves to its preset's key (once, in one transaction). */
export async function migrateKey(hf, quant) {
  const old = await store.getPack(legacyKey(hf));
  if (old && (old.preset || 'q4') === (quant || DEFAULT_QUANT)) await store.renamePack(legacyKey(hf), hfKey(hf, quant));
}

/** A whole small file (config, tokenizer), or null when the server says 404 and it is optional. */
async function smallFile(url, required, retries) {
  const r = await fetchRetry(url, {}, { retries, accept: (s) => (s >= 200 && s < 300) || (s === 404 && !required) });
  if (r.status === 404) return null;
  return readBody(r, { cap: SMALL_FILE_CAP, label: String(url) });
}

/** Total size from Content-Range (206) or Content-Length (200). */
function totalSize(r) {
  const cr = r.headers.get('content-range');
  const m = cr && /\/(\d+)\s*$/.exec(cr);
  if (m) return Number(m[1]);
  const cl = r.headers.get('content-length');
  return r.status === 200 && cl ? Number(cl) : undefined;
}

/** Starts reading `url` at `start` (Range; a server that ignores it sends the file from 0).
 * One request: the callers retry under net.js's policy. */
async function openRange(url, start, end) {
  const r = await fetchRetry(url, { headers: { Range: `bytes=${start}-${end - 1}` } }, { retries: 0, accept: (s) => s === 200 || s === 206 || s === 416 });
  if (r.status === 206) {
    const m = /bytes (\d+)-/.exec(r.headers.get('content-range') || '');
    return { r, offset: m ? Number(m[1]) : start };
  }
  if (r.status === 200) return { r, offset: 0 };
  throw kindError(`${url} is shorter than its header says (HTTP 416)`, KIND.badWeights);
}

/** The file's identity when the server exposes it (the Hub's X-Linked-ETag is its SHA-256). */
function etagOf(r) {
  return r.headers.get('x-linked-etag') || r.headers.get('etag') || '';
}

/** Bytes [start, end) of `url`, the file's size and identity when the server tells them. */
function rangeBytes(url, start, end, retries) {
  return withRetry(async () => {
    const { r, offset } = await openRange(url, start, end);
    const out = new Uint8Array(end - start);
    let got = 0;
    await eachChunk(r, url, offset, end, (at, value) => {
      const from = Math.max(start, at);
      const to = Math.min(end, at + value.byteLength);
      if (to > from) {
        out.set(value.subarray(from - at, to - at), from - start);
        got += to - from;
      }
    });
    if (got !== end - start) throw kindError(`${url}: the connection closed early`, KIND.network, { retry: true });
    return { bytes: out, size: totalSize(r), etag: etagOf(r) };
  }, { retries });
}

/**
 * Streams `r` (whose first byte is at file offset `at`) to `fn(at, chunk)` until `end`, then
 * stops reading: nothing past the span is downloaded or kept. A failed read is retryable.
 */
async function eachChunk(r, url, at, end, fn) {
  const reader = r.body.getReader();
  try {
    while (at < end) {
      const step = await readChunk(reader, `${url}: the connection failed at byte ${at}`);
      if (step.done) break;
      await fn(at, step.value);
      at += step.value.byteLength;
    }
  } finally {
    reader.cancel().catch(() => {});
  }
  return at;
}

/** The safetensors header of `url`: its first 8 bytes give the JSON length. */
async function header(url, label, retries) {
  const first = await rangeBytes(url, 0, 8, retries);
  const n = safetensorsHeaderLength(label, first.bytes);
  const json = await rangeBytes(url, 8, 8 + n, retries);
  return { label, header: json.bytes, size: first.size ?? json.size, etag: first.etag };
}

/** The safetensors files of `base` (`stem.safetensors`, or the shards of its index). Names in
 * the index must be plain file names in the same folder: nothing else is ever fetched. */
async function safetensorsFiles(base, stem, retries) {
  const index = await smallFile(new URL(`${stem}.safetensors.index.json`, base), false, retries);
  if (!index) return [`${stem}.safetensors`];
  let map;
  try {
    map = JSON.parse(new TextDecoder().decode(index)).weight_map;
  } catch (e) {
    throw kindError(`${stem}.safetensors.index.json is not valid JSON`, KIND.badWeights);
  }
  if (!map || typeof map !== 'object') throw kindError(`${stem}.safetensors.index.json has no weight_map`, KIND.badWeights);
  const files = [...new Set(Object.values(map))].sort();
  for (const f of files) {
    if (typeof f !== 'string' || !/^[A-Za-z0-9][A-Za-z0-9._-]*\.safetensors$/.test(f)) {
      throw kindError(`${stem}.safetensors.index.json names ${JSON.stringify(f)}, not a .safetensors file in the same folder`, KIND.badWeights);
    }
  }
  if (!files.length) throw kindError(`${stem}.safetensors.index.json lists no files`, KIND.badWeights);
  return files;
}

/** Everything a conversion starts from: the small files, the headers, the file URLs. */
async function plan(hf) {
  const retries = hf.retries ?? RETRIES;
  const model = baseUrl(hf.model);
  const vae = hf.vae ? baseUrl(hf.vae) : null;
  const config = await smallFile(new URL('config.json', model), true, retries);
  const files = [];
  for (const name of sideFiles()) {
    if (name === 'vae/config.json') {
      if (vae) files.push([name, await smallFile(new URL('config.json', vae), true, retries)]);
      continue;
    }
    const bytes = await smallFile(new URL(name, model), name === 'tokenizer.json', retries);
    if (bytes) files.push([name, bytes]);
  }
  const urls = (await safetensorsFiles(model, 'model', retries)).map((f) => new URL(f, model).href);
  const headers = [];
  for (const u of urls) headers.push(await header(u, u, retries));
  let vaeHeader = null;
  if (vae) {
    const u = new URL('diffusion_pytorch_model.safetensors', vae).href;
    vaeHeader = await header(u, u, retries);
    urls.push(u);
  }
  return { config, files, model: headers, vae: vaeHeader, urls };
}

function converter(p, quant, shardSize, checkpoint, range) {
  return new HfConverter({ quant, shardSize, config: p.config, files: p.files, model: p.model, vae: p.vae, checkpoint, range });
}

/** Sizes before anything is downloaded: `{download, store}` in bytes. */
export async function describe(hf, quant) {
  const p = await plan(hf);
  const c = converter(p, quant || DEFAULT_QUANT, undefined, null);
  try {
    const small = p.files.reduce((a, [, b]) => a + b.byteLength, p.config.byteLength);
    return { download: c.inputBytes()[0] + small, store: c.packBytes() };
  } finally {
    c.free();
  }
}

/** Conversion threads on first load: one per core, leaving one for the page, but at least 2 (on
 * a 2-core machine the page is idle while it waits) and at most 8. */
export function defaultWorkers() {
  const cores = (typeof navigator !== 'undefined' && navigator.hardwareConcurrency) || 2;
  return Math.min(8, Math.max(2, cores - 1));
}

/**
 * Converts one range of the pack's shards (job: `{p, quant, shardSize, range, checkpoint,
 * retries}`; `range` null with a checkpoint, which carries its own): fetches the spans the range
 * needs, hands each sealed shard to `commit(s)` and waits for it (so at most one shard waits per
 * converter), reports `progress(done, total, tensor)` in input bytes, and returns the range's
 * shard entries (JSON text, for HfConverter.manifest). Runs in a conversion worker
 * (convert-worker.js) or, with one thread, in the caller's.
 */
export async function convertRange(job, commit, progress) {
  const { p, quant, shardSize, range, checkpoint } = job;
  const retries = job.retries ?? RETRIES;
  const conv = converter(p, quant, shardSize, checkpoint || null, checkpoint ? null : range);
  try {
    for (const s of conv.takeSealed()) await commit(s);
    const report = () => {
      const [total, done] = conv.inputBytes();
      progress(done, total, conv.currentTensor() || 'finishing');
    };
    report();
    // One span after another; a dropped connection resumes at the exact byte the converter needs
    // next (the next span starts there), under net.js's retry policy.
    for (let more = true; more; ) {
      let before = 0;
      let url = '';
      more = await withRetry(
        async () => {
          const span = conv.nextSpan();
          if (!span) return false;
          url = p.urls[span.input];
          before = conv.inputBytes()[1];
          const { r, offset } = await openRange(url, span.start, span.end);
          const at = await eachChunk(r, url, offset, span.end, async (pos, value) => {
            conv.push(span.input, pos, value);
            for (const s of conv.takeSealed()) await commit(s);
            report();
          });
          if (at < span.end) throw kindError(`${url}: the connection closed at byte ${at}`, KIND.network, { retry: true });
          return true;
        },
        {
          retries,
          progressed: () => conv.inputBytes()[1] > before,
          onRetry: (n, of) => progress(null, null, `connection lost, retrying (${n}/${of})`),
        },
      ).catch((e) => {
        if (e.kind === KIND.network) throw kindError(`the download of ${url} keeps failing (${e.message}); loading again resumes where it stopped`, KIND.network);
        throw e;
      });
    }
    const entries = conv.finishRange();
    for (const s of conv.takeSealed()) await commit(s);
    return entries;
  } finally {
    conv.free();
  }
}

/**
 * One conversion worker (convert-worker.js, its own wasm instance): `run(job, commit, progress)`
 * converts a range there, as `convertRange` does here; `close()` ends it. The worker's wasm heap
 * (`heap`, bytes) is its high-water mark so far.
 */
function convertWorker() {
  const w = new Worker(new URL('./convert-worker.js', import.meta.url), { type: 'module', name: 'janusflow-convert' });
  let pending = null;
  let started = false;
  const out = { heap: 0 };
  const fail = (e) => {
    if (!pending) return;
    const { reject } = pending;
    pending = null;
    reject(e);
  };
  w.onerror = (e) => {
    e.preventDefault?.();
    // Not the engine's crash: the engine worker is fine. One that never started (a policy or a
    // browser without nested module workers) is marked so the import goes on in one thread.
    const err = kindError(`a conversion worker failed (${e.message || 'it could not start'})`, KIND.internal);
    err.startup = !started;
    fail(err);
  };
  w.onmessage = ({ data: m }) => {
    started = true;
    if (!pending) return;
    if (m.heap) out.heap = Math.max(out.heap, m.heap);
    if (m.type === 'progress') pending.progress(m.done, m.total, m.tensor);
    else if (m.type === 'sealed') {
      // The shard is committed before the worker goes on; a failed commit ends its range.
      pending.commit(m.shard).then(
        () => w.postMessage({ type: 'ack', id: m.id }),
        (e) => fail(e),
      );
    } else if (m.type === 'done') {
      const { resolve } = pending;
      pending = null;
      resolve(m.entries);
    } else if (m.type === 'error') fail(kindError(m.message, m.kind || KIND.internal, { retry: m.retry }));
  };
  out.run = (job, commit, progress) =>
    new Promise((resolve, reject) => {
      pending = { resolve, reject, commit, progress };
      w.postMessage({ type: 'run', job });
    });
  out.close = () => {
    fail(kindError('the conversion was stopped', KIND.cancelled));
    w.terminate();
  };
  return out;
}

/** The ranges of a stored partial conversion (each with its last checkpoint; records from before
 * ranges hold one checkpoint for the whole pack), or null when nothing was stored. */
function storedRanges(rec, shards) {
  if (!rec || rec.complete) return null;
  if (rec.ranges) return rec.ranges.map((r) => ({ ...r, files: [...r.files] }));
  if (rec.checkpoint) return [{ first: 0, end: shards, files: [...(rec.shards || [])], checkpoint: rec.checkpoint, entries: null }];
  return null;
}

/** Opens each range's converter once: every stored checkpoint (finished ranges' too) must belong
 * to today's files and settings and to its range; unfinished ranges get their input sizes
 * (`total`, `done`) for progress. False when a checkpoint does not fit (start over). */
function measureRanges(ranges, p, quant, shardSize) {
  for (const r of ranges) {
    let c;
    try {
      c = converter(p, quant, shardSize, r.checkpoint || null, r.checkpoint ? null : [r.first, r.end]);
    } catch {
      return false;
    }
    try {
      const [first, end] = c.shardRange();
      if (first !== r.first || end !== r.end) return false;
      if (!r.entries) [r.total, r.done] = c.inputBytes();
    } finally {
      c.free();
    }
  }
  return true;
}

/**
 * Converts `hf` into a stored pack (or finishes a stored partial conversion) and returns the
 * manifest text. The pack's shards are split into ranges of about equal work, converted by
 * several workers at once (`hf.workers`, default `defaultWorkers()`), each reading only its
 * ranges' bytes with its own HTTP Range requests; every shard is committed with its range's
 * checkpoint, so a reload resumes each range after its last committed shard. The pack is the
 * same, byte for byte, however many workers made it. `progress(p)` receives {phase, loaded,
 * total, speed, remaining, detail}. The caller holds the store's exclusive lock.
 */
export async function importHf(hf, quant, progress) {
  quant = quant || DEFAULT_QUANT;
  const key = hfKey(hf, quant);
  await migrateKey(hf, quant);
  const shardSize = hf.shardSize || undefined;
  const rec = await store.getPack(key);
  if (rec && rec.complete) return { text: rec.manifestText, downloaded: 0 };
  progress({ phase: 'download', loaded: 0, total: 0, detail: 'checkpoint headers' });
  const p = await plan(hf);
  const retries = hf.retries ?? RETRIES;
  const base = converter(p, quant, shardSize, null, null);
  const threads = [];
  try {
    const total = base.packBytes();
    const shards = base.packShards();
    const wanted = Math.max(1, Math.floor(hf.workers ?? defaultWorkers()));
    // Twice as many ranges as workers: one that finishes early takes another.
    const planned = () => Array.from(base.planRanges(wanted > 1 && typeof Worker === 'function' ? 2 * wanted : 1), ([first, end]) => ({ first, end, files: [], checkpoint: null, entries: null }));
    let ranges = storedRanges(rec, shards);
    // The files or the settings changed upstream: start over.
    if (!ranges || !measureRanges(ranges, p, quant, shardSize)) {
      ranges = planned();
      measureRanges(ranges, p, quant, shardSize);
    }
    const committedBytes = ranges.reduce((a, r) => a + r.files.length, 0) * (shardSize || 32 << 20);
    await store.checkSpace(Math.max(0, total - committedBytes));
    const record = (extra) => ({ kind: 'hf', preset: quant, bytes: total, source: { model: hf.model, vae: hf.vae }, ...extra });
    const snapshot = () =>
      record({
        complete: false,
        shards: ranges.flatMap((r) => r.files),
        ranges: ranges.map(({ first, end, files, checkpoint, entries }) => ({ first, end, files, checkpoint, entries })),
      });
    // Commits one after another, each shard with the record that names it (one transaction).
    let chain = Promise.resolve();
    const serial = (fn) => (chain = chain.then(fn));
    const commit = (r) => (s) =>
      serial(async () => {
        r.files.push(s.file);
        r.checkpoint = s.checkpoint;
        // A shard the converter sealed must hash to its name; if not, retrying cannot help.
        await store.putShard(s.file, s.data.buffer, key, snapshot()).catch((e) => {
          throw kindError(e.message, e.kind);
        });
      });
    const queue = ranges.filter((r) => !r.entries);
    const workers = typeof Worker === 'function' ? Math.min(wanted, queue.length) : 1;
    const done0 = queue.reduce((a, r) => a + r.done, 0);
    const t0 = performance.now();
    const report = (detail) => {
      const done = ranges.reduce((a, r) => a + (r.done || 0), 0);
      const need = ranges.reduce((a, r) => a + (r.total || 0), 0);
      const speed = (done - done0) / Math.max((performance.now() - t0) / 1000, 1e-3);
      progress({ phase: 'convert', loaded: done, total: need, speed, remaining: (need - done) / Math.max(speed, 1), detail });
    };
    const track = (r) => (done, total, tensor) => {
      if (done == null) return progress({ phase: 'convert', detail: tensor });
      [r.done, r.total, r.tensor] = [done, total, tensor];
      const running = ranges.filter((x) => x.running).map((x) => x.tensor);
      report(`${quant}${workers > 1 ? ` on ${workers} threads` : ''}: ${running[0] || tensor}${running.length > 1 ? ` (+${running.length - 1})` : ''}`);
    };
    let failed = null;
    const runner = async (thread) => {
      while (!failed && queue.length) {
        const r = queue.shift();
        r.running = true;
        const job = { p, quant, shardSize, range: [r.first, r.end], checkpoint: r.checkpoint || null, retries };
        let entries;
        try {
          entries = thread ? await thread.run(job, commit(r), track(r)) : await convertRange(job, commit(r), track(r));
        } catch (e) {
          if (!(thread && e.startup)) throw e;
          // This worker could not start: its ranges are converted here instead.
          thread.close();
          thread = null;
          r.running = false;
          queue.unshift(r);
          continue;
        }
        r.running = false;
        r.entries = JSON.parse(entries);
        await serial(() => store.putPack(key, snapshot()));
      }
    };
    let pool = [null];
    if (workers > 1) {
      try {
        for (let i = 0; i < workers; i++) threads.push(convertWorker());
        pool = threads;
      } catch {
        pool = [null]; // no nested workers here: one thread (those made are closed below)
      }
    }
    await Promise.all(
      pool.map((t) =>
        runner(t).catch((e) => {
          failed = failed || e;
          for (const x of threads) x.close();
        }),
      ),
    );
    // Commits already queued finish before the caller's lock is released, failure or not.
    await chain.catch(() => {});
    if (failed) throw failed;
    await chain;
    const text = base.manifest(JSON.stringify(ranges.flatMap((r) => r.entries)));
    await store.putPack(key, record({ manifestText: text, complete: true, storedAt: Date.now() }));
    return { text, downloaded: ranges.reduce((a, r) => a + (r.total || 0), 0) - done0, workers: pool.length, workerHeap: Math.max(0, ...threads.map((t) => t.heap)) };
  } finally {
    for (const t of threads) t.close();
    base.free();
  }
}
