// Weight storage in IndexedDB: a pack's manifest and its SHA-256-named shards (≤ 32 MiB each).
// Shards are verified before they are committed, one transaction per shard, so a reload or a
// dropped connection resumes at the first missing shard; the manifest is kept so that start-up
// works offline. Used by worker.js.

const DB_NAME = 'janusflow';
const DB_VERSION = 1;

function request(req) {
  return new Promise((resolve, reject) => {
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
}

function done(tx) {
  return new Promise((resolve, reject) => {
    tx.oncomplete = () => resolve();
    tx.onabort = () => reject(tx.error || new Error('IndexedDB transaction aborted'));
    tx.onerror = () => reject(tx.error);
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
      req.onsuccess = () => resolve(req.result);
      req.onerror = () => reject(req.error);
      req.onblocked = () => reject(new Error('the weight store is open in an older version of this app; close its other tabs'));
    });
  }
  return dbPromise;
}

export async function sha256Hex(buffer) {
  const digest = await crypto.subtle.digest('SHA-256', buffer);
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, '0')).join('');
}

/** The stored record of a source: {manifestText, complete, bytes, storedAt} or undefined. */
export async function getPack(key) {
  const db = await openDb();
  return request(db.transaction('packs').objectStore('packs').get(key));
}

export async function putPack(key, record) {
  const db = await openDb();
  const tx = db.transaction('packs', 'readwrite');
  tx.objectStore('packs').put(record, key);
  await done(tx);
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
 * so the record never claims a shard that is not there.
 */
export async function putShard(name, buffer, key, record) {
  const sha = await sha256Hex(buffer);
  if (`${sha}.bin` !== name) {
    throw Object.assign(new Error(`shard ${name} failed verification (its SHA-256 is ${sha})`), { kind: 'corrupt' });
  }
  const db = await openDb();
  const tx = db.transaction(['shards', 'packs'], 'readwrite');
  tx.objectStore('shards').put(buffer, name);
  if (key) tx.objectStore('packs').put(record, key);
  try {
    await done(tx);
  } catch (e) {
    if (e && e.name === 'QuotaExceededError') {
      const est = navigator.storage && navigator.storage.estimate ? await navigator.storage.estimate() : {};
      throw Object.assign(new Error(`the browser refused to store more weights (quota exceeded: ${mib(est.usage)} used of ${mib(est.quota)}); free some space or delete other sites' data`), { kind: 'quota' });
    }
    throw e;
  }
}

/** Deletes a source's record and every shard that no other stored source uses. */
export async function deletePack(key) {
  const db = await openDb();
  const all = await request(db.transaction('packs').objectStore('packs').getAll());
  const keys = await request(db.transaction('packs').objectStore('packs').getAllKeys());
  const keep = new Set();
  keys.forEach((k, i) => {
    if (k === key) return;
    for (const f of shardsOf(all[i])) keep.add(f);
  });
  const tx = db.transaction(['packs', 'shards'], 'readwrite');
  tx.objectStore('packs').delete(key);
  const shards = tx.objectStore('shards');
  for (const name of await shardNamesIn(tx)) if (!keep.has(name)) shards.delete(name);
  await done(tx);
}

/** Shards a record uses: its manifest's, or those a partial conversion has committed. */
function shardsOf(rec) {
  if (rec.manifestText) return JSON.parse(rec.manifestText).shards.map((s) => s.file);
  return rec.shards || [];
}

/** Throws a 'quota' error when the browser's estimate leaves less than `need` bytes. */
export async function checkSpace(need) {
  if (!(need > 0) || !navigator.storage || !navigator.storage.estimate) return;
  const est = await navigator.storage.estimate();
  if (est.quota != null && est.usage != null && est.quota - est.usage < need) {
    throw Object.assign(new Error(`not enough storage for the weights: ${mib(need)} to store, ${mib(est.quota - est.usage)} available (${mib(est.usage)} used of ${mib(est.quota)})`), { kind: 'quota' });
  }
}

function shardNamesIn(tx) {
  return request(tx.objectStore('shards').getAllKeys());
}

export function mib(bytes) {
  return bytes == null ? '?' : `${(bytes / 1048576).toFixed(1)} MiB`;
}
