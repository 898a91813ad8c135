// Weight storage in IndexedDB: each source's record (its manifest, or a conversion's checkpoint)
// and SHA-256-named shards (≤ 32 MiB each), shared between sources that hold the same bytes.
// Shards are verified before they are committed, each together with its source's record, so a
// reload or a dropped connection resumes at the first missing shard and no record ever lists a
// shard that is not there; the manifest is kept so that start-up works offline.
//
// Several tabs share one store: writers (download, conversion, delete, clean-up) hold one
// exclusive Web Lock, readers (streaming shards to the GPU) a shared one, and every change is
// announced on a BroadcastChannel. Used by worker.js and hf.js.

import { KIND, kindError } from './protocol.js';

const DB_NAME = 'janusflow';
const DB_VERSION = 1;
const LOCK = 'janusflow-weights';
const CHANNEL = 'janusflow-weights';

/** An IndexedDB failure as an Error with a kind (Firefox reports quota on the request itself). */
function idbError(e, what) {
  if (e && e.kind) return e;
  const name = e && e.name;
  if (name === 'QuotaExceededError') return kindError(`the browser refused to store more weights (quota exceeded while ${what}); free some space or delete other sites' data`, KIND.quota);
  return kindError(`the weight store failed while ${what}: ${(e && e.message) || name || 'unknown error'}`, KIND.storage);
}

function request(req, what = 'reading') {
  return new Promise((resolve, reject) => {
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(idbError(req.error, what));
  });
}

function done(tx, what = 'writing') {
  return new Promise((resolve, reject) => {
    let failed = null;
    tx.oncomplete = () => resolve();
    // The failing request's error: `tx.error` is still null while its error event runs.
    tx.onerror = (ev) => {
      failed = failed || (ev.target && ev.target.error);
    };
    tx.onabort = () => reject(idbError(tx.error || failed || new Error('transaction aborted'), what));
  });
}

let dbPromise = null;
export function openDb() {
  if (!dbPromise) {
    dbPromise = new Promise((resolve, reject) => {
      const req = indexedDB.open(DB_NAME, DB_VERSION);
      req.onupgradeneeded = () => {
        const db = req.result;
        if (!db.objectStoreNames.contains('packs')) db.createObjectStore('packs');
        if (!db.objectStoreNames.contains('shards')) db.createObjectStore('shards');
      };
      req.onsuccess = () => {
        const db = req.result;
        // Another tab upgrades or deletes the database: let it, and reopen on the next use.
        db.onversionchange = () => {
          db.close();
          dbPromise = null;
        };
        db.onclose = () => {
          dbPromise = null;
        };
        resolve(db);
      };
      req.onerror = () => {
        dbPromise = null;
        reject(idbError(req.error, 'opening'));
      };
      // Blocked until an older connection closes (which ours do on versionchange): keep waiting.
      req.onblocked = () => console.warn('janusflow: the weight store waits for another tab to close it');
    });
  }
  return dbPromise;
}

/** Runs `fn` holding the store's Web Lock: 'exclusive' to write, 'shared' to read shards.
 * `onWait()` is called when another tab holds it (so the caller can say why nothing moves). */
export async function withLock(mode, fn, onWait) {
  const locks = typeof navigator !== 'undefined' && navigator.locks;
  if (!locks) return fn(); // Browsers without Web Locks (old Safari): one tab at a time is up to the user.
  const busy = Symbol('busy');
  const first = await locks.request(LOCK, { mode, ifAvailable: true }, (lock) => (lock ? fn() : busy));
  if (first !== busy) return first;
  if (onWait) onWait();
  return locks.request(LOCK, { mode }, () => fn());
}

/** Changes are announced to the other tabs: {type: 'stored' | 'deleted', key}. */
function announce(type, key) {
  if (typeof BroadcastChannel === 'undefined') return;
  const ch = new BroadcastChannel(CHANNEL);
  ch.postMessage({ type, key });
  ch.close();
}

/** Calls `cb({type, key})` for every change another tab (or worker) makes; returns an unsubscribe. */
export function watch(cb) {
  if (typeof BroadcastChannel === 'undefined') return () => {};
  const ch = new BroadcastChannel(CHANNEL);
  ch.onmessage = (ev) => cb(ev.data);
  return () => ch.close();
}

export async function sha256Hex(buffer) {
  const digest = await crypto.subtle.digest('SHA-256', buffer);
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, '0')).join('');
}

/** The stored record of a source: {manifestText, complete, bytes, storedAt, shards?, pending?} or undefined. */
export async function getPack(key) {
  const db = await openDb();
  return request(db.transaction('packs').objectStore('packs').get(key));
}

export async function putPack(key, record) {
  const db = await openDb();
  const tx = db.transaction('packs', 'readwrite');
  tx.objectStore('packs').put(record, key);
  await done(tx, 'saving the model record');
  if (record.complete) announce('stored', key);
}

/**
 * Moves a record to a new key (a stored source whose key format changed), unless the new key
 * already holds one. One transaction: the record is never lost or doubled.
 */
export async function renamePack(from, to) {
  const db = await openDb();
  const tx = db.transaction('packs', 'readwrite');
  const packs = tx.objectStore('packs');
  const [old, cur] = await Promise.all([request(packs.get(from)), request(packs.get(to))]);
  if (old && !cur) {
    packs.put(old, to);
    packs.delete(from);
  }
  await done(tx, 'renaming a model record');
}

/** Names of the shards present. */
export async function shardNames() {
  const db = await openDb();
  return new Set(await request(db.transaction('shards').objectStore('shards').getAllKeys()));
}

export async function getShard(name) {
  const db = await openDb();
  return request(db.transaction('shards').objectStore('shards').get(name));
}

/**
 * Verifies and commits one shard; a shard is stored only if its bytes hash to its name. With
 * `key`, the source's record (e.g. a conversion checkpoint) is written in the same transaction,
 * so the record never claims a shard that is not there. A mismatch rejects with kind 'corrupt'
 * and `retry` (the download is tried again).
 */
export async function putShard(name, buffer, key, record) {
  const sha = await sha256Hex(buffer);
  if (`${sha}.bin` !== name) {
    throw kindError(`shard ${name} failed verification (its SHA-256 is ${sha})`, KIND.corrupt, { retry: true });
  }
  const db = await openDb();
  try {
    const tx = db.transaction(['shards', 'packs'], 'readwrite');
    tx.objectStore('shards').put(buffer, name);
    if (key) tx.objectStore('packs').put(record, key);
    await done(tx, `storing shard ${name}`);
  } catch (e) {
    e = idbError(e, `storing shard ${name}`);
    if (e.kind === KIND.quota) {
      const est = navigator.storage && navigator.storage.estimate ? await navigator.storage.estimate().catch(() => ({})) : {};
      throw kindError(`the browser refused to store more weights (quota exceeded: ${mib(est.usage)} used of ${mib(est.quota)}); free some space or delete other sites' data`, KIND.quota);
    }
    throw e;
  }
}

/**
 * Deletes a source's record and every shard no other record uses, in one transaction: a shard
 * another tab commits meanwhile waits for it (and the lock keeps writers apart anyway).
 */
export async function deletePack(key) {
  await sweep(key);
  announce('deleted', key);
}

/** Deletes the named shards (found corrupt), in one transaction. */
export async function deleteShards(names) {
  const db = await openDb();
  const tx = db.transaction('shards', 'readwrite');
  for (const n of names) tx.objectStore('shards').delete(n);
  await done(tx, 'removing corrupt shards');
}

/** Deletes the shards no stored record refers to (superseded by an update, or orphaned). */
export function collectGarbage() {
  return sweep(null);
}

async function sweep(dropKey) {
  const db = await openDb();
  const tx = db.transaction(['packs', 'shards'], 'readwrite');
  const packs = tx.objectStore('packs');
  const shards = tx.objectStore('shards');
  const [records, keys, names] = await Promise.all([request(packs.getAll()), request(packs.getAllKeys()), request(shards.getAllKeys())]);
  const keep = new Set();
  keys.forEach((k, i) => {
    if (k !== dropKey) for (const f of shardsOf(records[i])) keep.add(f);
  });
  if (dropKey != null) packs.delete(dropKey);
  let freed = 0;
  for (const name of names) {
    if (!keep.has(name)) {
      shards.delete(name);
      freed++;
    }
  }
  await done(tx, dropKey != null ? 'deleting the model' : 'removing unused shards');
  return freed;
}

/** Shards a record uses: its manifest's, those a partial download or conversion has committed,
 * and those of an update in progress. */
export function shardsOf(rec) {
  const out = new Set([...(rec.shards || []), ...(rec.pending || [])]);
  if (rec.manifestText) {
    try {
      for (const s of JSON.parse(rec.manifestText).shards || []) out.add(s.file);
    } catch {
      // An unreadable manifest keeps nothing alive; the record is replaced on the next load.
    }
  }
  return out;
}

/** Throws a 'quota' error when the browser's estimate leaves less than `need` bytes. */
export async function checkSpace(need) {
  if (!(need > 0) || !navigator.storage || !navigator.storage.estimate) return;
  const est = await navigator.storage.estimate();
  if (est.quota != null && est.usage != null && est.quota - est.usage < need) {
    throw kindError(`not enough storage for the weights: ${mib(need)} to store, ${mib(est.quota - est.usage)} available (${mib(est.usage)} used of ${mib(est.quota)})`, KIND.quota);
  }
}

export function mib(bytes) {
  return bytes == null ? '?' : `${(bytes / 1048576).toFixed(1)} MiB`;
}
