// The element's conversation in IndexedDB, so that a reload shows it again: a small database of
// its own (the weight store's locks, versions and clean-up have nothing to do with it). One record
// per conversation name: {messages: [{role, content, images: [{type, bytes}]}], drawings: [{prompt,
// after, steps, seconds, images: [{type, bytes}]}], savedAt}; a drawing is shown after the first
// `after` messages (drawings are not part of what the model reads). Images
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

function imageBlob(i) {
  const blob = new Blob([i.bytes], { type: i.type });
  bytesOf.set(blob, i.bytes);
  return blob;
}

/**
 * Saves `messages` ([{role, content, images?: Blob[]}]) and `drawings` ([{prompt, after, steps,
 * seconds, images: Blob[]}]) under `name`, replacing what was there.
 */
export async function saveConversation(name, messages, drawings = []) {
  const images = (list) => Promise.all((list || []).filter(Boolean).map(imageRecord));
  const record = {
    savedAt: Date.now(),
    messages: await Promise.all(messages.map(async (m) => ({ role: m.role, content: m.content, images: await images(m.images) }))),
    drawings: await Promise.all(drawings.map(async (d) => ({ prompt: d.prompt, after: d.after, steps: d.steps, seconds: d.seconds, images: await images(d.images) }))),
  };
  await run('readwrite', (s) => s.put(record, name));
}

/** What was saved under `name` (images as Blobs): `{messages, drawings}`, empty when nothing was. */
export async function loadConversation(name) {
  const record = await run('readonly', (s) => s.get(name));
  if (!record || !Array.isArray(record.messages)) return { messages: [], drawings: [] };
  const messages = record.messages.map((m) => ({ role: m.role, content: String(m.content ?? ''), images: (m.images || []).map(imageBlob) }));
  const drawings = (Array.isArray(record.drawings) ? record.drawings : []).map((d) => ({
    prompt: String(d.prompt ?? ''),
    after: Math.min(messages.length, Math.max(0, Number(d.after) || 0)),
    steps: Number(d.steps) || 0,
    seconds: (Array.isArray(d.seconds) ? d.seconds : []).map(Number),
    images: (Array.isArray(d.images) ? d.images : []).map(imageBlob),
  }));
  return { messages, drawings };
}

/** Forgets the conversation saved under `name`. */
export async function clearConversation(name) {
  await run('readwrite', (s) => s.delete(name));
}
