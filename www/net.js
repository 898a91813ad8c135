// All of the front end's networking policy in one place: which failures are retried and how
// long to wait (one backoff for every download), and one streamed read with progress and a size
// cap, so no response can grow without bound in memory. Used by worker.js and hf.js.

import { KIND, kindError } from './protocol.js';

/** Attempts after the first, for a request that makes no progress. */
export const RETRIES = 6;

/** Wait before attempt `n + 1` (n ≥ 0): 250 ms doubling, at most 15 s (≈ 16 s over 6 retries). */
export function backoff(n) {
  return Math.min(250 * 2 ** n, 15000);
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Time without an answer or a byte before a download counts as stalled (retried as a dropped
 * connection): a connection that hangs must not hang the load, nor the lock it holds. */
let stallMs = 30000;

/** Sets the stall time (seconds; the default, 30, for anything else). */
export function setStallSeconds(s) {
  stallMs = Number.isFinite(s) && s > 0 ? s * 1000 : 30000;
}

/**
 * The next chunk of `reader`. A read that fails, or brings nothing for the stall time, rejects
 * as a retryable network error `${what} (why)`, and the reader is cancelled.
 */
export async function readChunk(reader, what) {
  let timer;
  const stalled = new Promise((_, reject) => {
    timer = setTimeout(() => reject(kindError(`${what} (no data for ${stallMs / 1000} s)`, KIND.network, { retry: true })), stallMs);
  });
  const read = reader.read().catch((e) => {
    throw kindError(`${what} (${e.message})`, KIND.network, { retry: true });
  });
  try {
    return await Promise.race([read, stalled]);
  } catch (e) {
    reader.cancel().catch(() => {});
    throw e;
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Runs `attempt()` until it succeeds. Only errors marked `retry: true` (network failures, 5xx,
 * a connection closed early, a body that failed its hash) are tried again; everything else is
 * thrown at once. With `progressed()`, an attempt that moved forward before failing resets the
 * count: a connection that keeps making progress is kept up.
 */
export async function withRetry(attempt, { retries = RETRIES, onRetry, progressed } = {}) {
  for (let failures = 0; ; ) {
    try {
      return await attempt();
    } catch (e) {
      if (!e || !e.retry) throw e;
      failures = progressed && progressed() ? 1 : failures + 1;
      // With no retries here, the error goes up unchanged (still retryable by an outer loop).
      if (failures > retries) throw retries === 0 ? e : kindError(`${e.message} (gave up after ${failures} attempts)`, e.kind || KIND.network);
      if (onRetry) onRetry(failures, retries, e);
      await sleep(backoff(failures - 1));
    }
  }
}

/**
 * `fetch` under the retry policy. Resolves to the response when `accept(status)` (2xx by
 * default); 5xx, 408 and 429 are retried; any other status rejects with kind 'network' and its
 * `status`.
 */
export function fetchRetry(url, init = {}, { retries, onRetry, accept = (s) => s >= 200 && s < 300 } = {}) {
  return withRetry(
    async () => {
      let r;
      // A server that never answers is a stall too (the body's reads have their own watch).
      const ctl = new AbortController();
      const timer = setTimeout(() => ctl.abort(), stallMs);
      try {
        r = await fetch(url, { cache: 'no-store', ...init, signal: ctl.signal });
      } catch (e) {
        const why = ctl.signal.aborted ? `no answer for ${stallMs / 1000} s` : e.message;
        throw kindError(`cannot reach ${url}: ${why}`, KIND.network, { retry: true });
      } finally {
        clearTimeout(timer);
      }
      if (accept(r.status)) return r;
      if (r.body) r.body.cancel().catch(() => {});
      throw kindError(`HTTP ${r.status} for ${url}`, KIND.network, { status: r.status, retry: r.status >= 500 || r.status === 408 || r.status === 429 });
    },
    { retries, onRetry },
  );
}

/**
 * The whole body of `response`, at most `cap` bytes: a body (or a declared Content-Length)
 * larger than that is cut off and rejected (kind 'bad-weights' unless `overKind` says otherwise).
 * With `expected`, a shorter body rejects as a retryable network error (the connection closed
 * early). `onBytes(n)` reports the bytes read so far.
 */
export async function readBody(response, { cap, expected, onBytes, label = response.url, overKind = KIND.badWeights } = {}) {
  const limit = expected ?? cap;
  if (!(limit >= 0)) throw kindError(`reading ${label}: no size limit given`, KIND.internal);
  const declared = Number(response.headers.get('content-length'));
  const over = () => kindError(`${label} is larger than the ${limit} bytes expected; refused`, overKind);
  if (response.headers.has('content-length') && declared > limit && !response.headers.get('content-encoding')) {
    if (response.body) response.body.cancel().catch(() => {});
    throw over();
  }
  let n = 0;
  if (!response.body) {
    const buf = new Uint8Array(await response.arrayBuffer());
    if (buf.byteLength > limit) throw over();
    n = buf.byteLength;
    return check(buf);
  }
  const reader = response.body.getReader();
  // Known size: one buffer, filled in place. Unknown: chunks, joined at the end.
  let out = expected != null ? new Uint8Array(expected) : null;
  const chunks = [];
  try {
    for (;;) {
      const step = await readChunk(reader, `${label}: the connection failed after ${n} bytes`);
      if (step.done) break;
      const v = step.value;
      if (n + v.byteLength > limit) throw over();
      if (out) out.set(v, n);
      else chunks.push(v);
      n += v.byteLength;
      if (onBytes) onBytes(n);
    }
  } finally {
    reader.cancel().catch(() => {});
  }
  if (!out) {
    out = new Uint8Array(n);
    let o = 0;
    for (const c of chunks) {
      out.set(c, o);
      o += c.byteLength;
    }
  }
  return check(out);

  function check(buf) {
    if (expected != null && n !== expected) {
      throw kindError(`${label}: the connection closed after ${n} of ${expected} bytes`, KIND.network, { retry: true });
    }
    return buf;
  }
}

/** A small text file (manifest, config, tokenizer) of at most `cap` bytes. */
export async function readText(response, cap, label) {
  return new TextDecoder().decode(await readBody(response, { cap, label }));
}
