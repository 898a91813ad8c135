// The element's conversation in IndexedDB, so that a reload shows it again: a small database of
// its own (the weight store's locks, versions and clean-up have nothing to do with it). One record
// per conversation name: {messages: [{role, content, images: [{type, bytes}]}], savedAt}. Images
// are kept as bytes and their MIME type (Blobs in IndexedDB are not stored reliably everywhere,
// e.g. in private windows) and come back as Blobs.

const DB_NAME = 'janusflow-chat';
const DB_VERSION = 1;
const STORE = 'conversations';

let dbPromise = null;
function openDb() {
  if (!dbPromise) {
    dbPromise = new Promise((resolve, reject) => {
      const req = indexedDB.open(DB_NAME, DB_VERSION);
      req.onupgradeneeded = () => {
        const db = req.result;
        if (!db.objectStoreNames.contains(STORE)) db.createObjectStore(STORE);
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
        reject(req.error);
      };
    });
  }
  return dbPromise;
}

function run(mode, fn) {
  return openDb().then(
    (db) =>
      new Promise((resolve, reject) => {
        const tx = db.transaction(STORE, mode);
        const req = fn(tx.objectStore(STORE));
        tx.oncomplete = () => resolve(req.result);
        tx.onabort = tx.onerror = () => reject(tx.error || req.error);
      }),
  );
}

/** Bytes already read from a Blob: saving after every reply does not read its images again. */
const bytesOf = new WeakMap();
async function imageRecord(blob) {
  let bytes = bytesOf.get(blob);
  if (!bytes) {
    bytes = await blob.arrayBuffer();
    bytesOf.set(blob, bytes);
  }
  return { type: blob.type || 'application/octet-stream', bytes };
}

/** Saves `messages` ([{role, content, images?: Blob[]}]) under `name`, replacing what was there. */
export async function saveConversation(name, messages) {
  const record = {
    savedAt: Date.now(),
    messages: await Promise.all(messages.map(async (m) => ({ role: m.role, content: m.content, images: await Promise.all((m.images || []).map(imageRecord)) }))),
  };
  await run('readwrite', (s) => s.put(record, name));
}

/** The messages saved under `name` (images as Blobs), or [] when there are none. */
export async function loadConversation(name) {
  const record = await run('readonly', (s) => s.get(name));
  if (!record || !Array.isArray(record.messages)) return [];
  return record.messages.map((m) => ({
    role: m.role,
    content: String(m.content ?? ''),
    images: (m.images || []).map((i) => {
      const blob = new Blob([i.bytes], { type: i.type });
      bytesOf.set(blob, i.bytes);
      return blob;
    }),
  }));
}

/** Forgets the conversation saved under `name`. */
export async function clearConversation(name) {
  await run('readwrite', (s) => s.delete(name));
}
