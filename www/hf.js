// Importing a checkpoint in the Hugging Face layout (deepseek-ai/JanusFlow-1.3B and
// stabilityai/sdxl-vae, or any mirror) into IndexedDB as a weight pack, converting while it
// downloads. The wasm converter (src/weights/stream.rs, the same code as `janusflow convert`)
// plans from the safetensors headers, asks for byte spans, and seals SHA-256-named shards; each
// shard is committed together with a checkpoint, so a dropped connection resumes at the exact
// byte (HTTP Range) and a reload resumes after the last committed shard. Used by worker.js.

import { HfConverter, sideFiles, safetensorsHeaderLength } from './pkg/janusflow.js';
import * as store from './store.js';

/** Attempts per request without progress (a connection that keeps making progress is kept up). */
const RETRIES = 6;

/** An absolute folder URL (trailing slash), resolved against the worker's location. */
export function baseUrl(url) {
  const u = new URL(url, self.location.href);
  if (!u.pathname.endsWith('/')) u.pathname += '/';
  return u.href;
}

/** The IndexedDB key of an HF source (the preset lives in the record). */
export function hfKey(hf) {
  return `hf:${baseUrl(hf.model)}|${hf.vae ? baseUrl(hf.vae) : ''}`;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** fetch with retries on network errors; HTTP errors are returned to the caller. */
async function fetchRetry(url, init = {}) {
  let last = null;
  for (let i = 0; i <= RETRIES; i++) {
    try {
      return await fetch(url, { cache: 'no-store', ...init });
    } catch (e) {
      last = e;
      await sleep(250 * 2 ** i);
    }
  }
  throw new Error(`cannot reach ${url}: ${last && last.message}`);
}

/** A whole small file (config, tokenizer), or null when the server says 404. */
async function smallFile(url, required) {
  const r = await fetchRetry(url);
  if (r.status === 404 && !required) return null;
  if (!r.ok) throw new Error(`HTTP ${r.status} for ${url}`);
  return new Uint8Array(await r.arrayBuffer());
}

/** Total size from Content-Range (206) or Content-Length (200). */
function totalSize(r) {
  const cr = r.headers.get('content-range');
  const m = cr && /\/(\d+)\s*$/.exec(cr);
  if (m) return Number(m[1]);
  const cl = r.headers.get('content-length');
  return r.status === 200 && cl ? Number(cl) : undefined;
}

/** Starts reading `url` at `start` (Range; a server that ignores it sends the file from 0). */
async function openRange(url, start, end, once = false) {
  const init = { headers: { Range: `bytes=${start}-${end - 1}` } };
  const r = once ? await fetch(url, { cache: 'no-store', ...init }) : await fetchRetry(url, init);
  if (r.status === 206) {
    const m = /bytes (\d+)-/.exec(r.headers.get('content-range') || '');
    return { r, offset: m ? Number(m[1]) : start };
  }
  if (r.status === 200) return { r, offset: 0 };
  if (r.status === 416) throw Object.assign(new Error(`${url} is shorter than its header says (HTTP 416)`), { fatal: true });
  throw Object.assign(new Error(`HTTP ${r.status} for ${url}`), { fatal: r.status >= 400 && r.status < 500 });
}

/** The file's identity when the server exposes it (the Hub's X-Linked-ETag is its SHA-256). */
function etagOf(r) {
  return r.headers.get('x-linked-etag') || r.headers.get('etag') || '';
}

/** Bytes [start, end) of `url`, the file's size and identity when the server tells them. */
async function rangeBytes(url, start, end) {
  const { r, offset } = await openRange(url, start, end);
  const out = new Uint8Array(end - start);
  let got = 0;
  let at = offset;
  const reader = r.body.getReader();
  try {
    while (at < end) {
      const { done, value } = await reader.read();
      if (done) break;
      const from = Math.max(start, at);
      const to = Math.min(end, at + value.byteLength);
      if (to > from) {
        out.set(value.subarray(from - at, to - at), from - start);
        got += to - from;
      }
      at += value.byteLength;
    }
  } finally {
    reader.cancel().catch(() => {});
  }
  if (got !== end - start) throw new Error(`${url}: the connection closed early`);
  return { bytes: out, size: totalSize(r), etag: etagOf(r) };
}

/** The safetensors header of `url`: its first 8 bytes give the JSON length. */
async function header(url, label) {
  const first = await rangeBytes(url, 0, 8);
  const n = safetensorsHeaderLength(label, first.bytes);
  const json = await rangeBytes(url, 8, 8 + n);
  return { label, header: json.bytes, size: first.size ?? json.size, etag: first.etag };
}

/** The safetensors files of `base` (`stem.safetensors`, or the shards of its index). */
async function safetensorsFiles(base, stem) {
  const index = await smallFile(new URL(`${stem}.safetensors.index.json`, base), false);
  if (!index) return [`${stem}.safetensors`];
  let map;
  try {
    map = JSON.parse(new TextDecoder().decode(index)).weight_map;
  } catch (e) {
    throw new Error(`${stem}.safetensors.index.json is not valid JSON`);
  }
  if (!map) throw new Error(`${stem}.safetensors.index.json has no weight_map`);
  return [...new Set(Object.values(map))].sort();
}

/** Everything a conversion starts from: the small files, the headers, the file URLs. */
async function plan(hf) {
  const model = baseUrl(hf.model);
  const vae = hf.vae ? baseUrl(hf.vae) : null;
  const config = await smallFile(new URL('config.json', model), true);
  const files = [];
  for (const name of sideFiles()) {
    if (name === 'vae/config.json') {
      if (vae) files.push([name, await smallFile(new URL('config.json', vae), true)]);
      continue;
    }
    const bytes = await smallFile(new URL(name, model), name === 'tokenizer.json');
    if (bytes) files.push([name, bytes]);
  }
  const urls = (await safetensorsFiles(model, 'model')).map((f) => new URL(f, model).href);
  const headers = [];
  for (const u of urls) headers.push(await header(u, u));
  let vaeHeader = null;
  if (vae) {
    const u = new URL('diffusion_pytorch_model.safetensors', vae).href;
    vaeHeader = await header(u, u);
    urls.push(u);
  }
  return { config, files, model: headers, vae: vaeHeader, urls };
}

function converter(p, quant, shardSize, checkpoint) {
  return new HfConverter({ quant, shardSize, config: p.config, files: p.files, model: p.model, vae: p.vae, checkpoint });
}

/** Sizes before anything is downloaded: `{download, store}` in bytes. */
export async function describe(hf, quant) {
  const p = await plan(hf);
  const c = converter(p, quant || 'q4', undefined, null);
  try {
    const small = p.files.reduce((a, [, b]) => a + b.byteLength, p.config.byteLength);
    return { download: c.inputBytes()[0] + small, store: c.packBytes() };
  } finally {
    c.free();
  }
}

/**
 * Converts `hf` into a stored pack (or finishes a stored partial conversion) and returns the
 * manifest text. `progress(p)` receives {phase, loaded, total, speed, remaining, detail}.
 */
export async function importHf(hf, quant, progress) {
  const key = hfKey(hf);
  quant = quant || 'q4';
  const shardSize = hf.shardSize || undefined;
  let rec = await store.getPack(key);
  if (rec && rec.complete && rec.preset === quant) return { text: rec.manifestText, downloaded: 0 };
  progress({ phase: 'download', loaded: 0, total: 0, detail: 'checkpoint headers' });
  const p = await plan(hf);
  if (rec && rec.preset !== quant) {
    await store.deletePack(key);
    rec = null;
  }
  let conv = null;
  let committed = [];
  if (rec && rec.checkpoint) {
    try {
      conv = converter(p, quant, shardSize, rec.checkpoint);
      committed = rec.shards || [];
    } catch (e) {
      // The files changed upstream (or the settings): start over.
      conv = null;
    }
  }
  if (!conv) conv = converter(p, quant, shardSize, null);
  try {
    const total = conv.packBytes();
    const have = committed.length ? committed.length * (shardSize || 32 << 20) : 0;
    await store.checkSpace(Math.max(0, total - have));
    const record = (extra) => ({ kind: 'hf', preset: quant, bytes: total, source: hf, ...extra });
    const commit = async (s) => {
      committed = [...committed, s.file];
      await store.putShard(s.file, s.data.buffer, key, record({ complete: false, shards: committed, checkpoint: s.checkpoint }));
    };
    for (const s of conv.takeSealed()) await commit(s);
    const [need, done0] = conv.inputBytes();
    const t0 = performance.now();
    const report = () => {
      const [, done] = conv.inputBytes();
      const speed = (done - done0) / Math.max((performance.now() - t0) / 1000, 1e-3);
      progress({ phase: 'convert', loaded: done, total: need, speed, remaining: (need - done) / Math.max(speed, 1), detail: `${quant}: ${conv.currentTensor() || 'finishing'}` });
    };
    let failures = 0;
    const retries = hf.retries ?? RETRIES;
    for (let span = conv.nextSpan(); span; span = conv.nextSpan()) {
      const url = p.urls[span.input];
      let at = span.start;
      try {
        const { r, offset } = await openRange(url, span.start, span.end, true);
        at = offset;
        const reader = r.body.getReader();
        try {
          while (at < span.end) {
            const { done, value } = await reader.read();
            if (done) break;
            try {
              conv.push(span.input, at, value);
            } catch (e) {
              throw Object.assign(new Error(e.message), { fatal: true });
            }
            at += value.byteLength;
            for (const s of conv.takeSealed()) await commit(s);
            report();
          }
        } finally {
          reader.cancel().catch(() => {});
        }
        if (at < span.end) throw new Error(`${url}: the connection closed at byte ${at}`);
        failures = 0;
      } catch (e) {
        // Network trouble: try again from the exact byte the converter needs next.
        if (e.fatal || e.kind === 'quota' || e.kind === 'corrupt') throw e;
        failures = at > span.start ? 1 : failures + 1;
        if (failures > retries) throw new Error(`the download of ${url} keeps failing (${e.message}); loading again resumes where it stopped`);
        progress({ phase: 'convert', detail: `connection lost, retrying (${failures}/${retries})` });
        await sleep(Math.min(500 * 2 ** failures, 15000));
      }
    }
    const text = conv.finish();
    for (const s of conv.takeSealed()) await commit(s);
    await store.putPack(key, record({ manifestText: text, complete: true, storedAt: Date.now() }));
    return { text, downloaded: need - done0 };
  } finally {
    conv.free();
  }
}
