// Offline app shell. build.sh writes pkg/shell.js: every file of the shell (HTML, JS, CSS, the
// wasm glue and the wasm) with its SHA-256, and a version named after them. This worker caches
// exactly that set, verified, in a cache of that version, and serves it cache-first; entries are
// never refreshed one by one, so new glue JS can never meet an old .wasm.
//
// An update is a new shell.js: the browser notices the changed import, installs a new worker,
// which fills its own cache completely (or fails and leaves the old version in charge); it takes
// over once no tab uses the old one, and only then are old caches deleted. Weights are not here:
// they live in IndexedDB (see store.js).

let SHELL = null;
try {
  importScripts('pkg/shell.js');
  SHELL = self.JANUS_SHELL;
} catch (e) {
  console.warn('janusflow: no pkg/shell.js (run build.sh); the app works online only', e);
}
const PREFIX = 'janusflow-shell-';
const CACHE = SHELL && PREFIX + SHELL.version;

async function sha256Hex(buffer) {
  const digest = await crypto.subtle.digest('SHA-256', buffer);
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, '0')).join('');
}

/** Fetches every file, checks each against its hash, and only then stores them all. */
async function fill() {
  if (!SHELL) throw new Error('no shell manifest');
  const entries = await Promise.all(
    Object.entries(SHELL.files).map(async ([file, sha]) => {
      const r = await fetch(new Request(file, { cache: 'reload' }));
      if (!r.ok) throw new Error(`${file}: HTTP ${r.status}`);
      const body = await r.arrayBuffer();
      // A deployment that changed during the install: give up, the next update check retries.
      if ((await sha256Hex(body)) !== sha) throw new Error(`${file} is not the version ${SHELL.version} lists`);
      const headers = new Headers(r.headers);
      headers.delete('content-encoding'); // the body is stored decoded
      headers.delete('content-length');
      return [file, new Response(body, { status: 200, headers })];
    }),
  );
  const cache = await caches.open(CACHE);
  await Promise.all(entries.map(([file, r]) => cache.put(new URL(file, self.registration.scope).href, r)));
}

self.addEventListener('install', (e) => {
  e.waitUntil(fill().catch(async (err) => {
    if (CACHE) await caches.delete(CACHE);
    throw err;
  }));
});

self.addEventListener('activate', (e) => {
  e.waitUntil(
    caches
      .keys()
      .then((keys) => Promise.all(keys.filter((k) => k.startsWith(PREFIX) && k !== CACHE).map((k) => caches.delete(k))))
      // The shell before versioning (one fixed cache name).
      .then(() => caches.delete('janusflow-shell-v2'))
      .then(() => self.clients.claim()),
  );
});

self.addEventListener('fetch', (e) => {
  if (!SHELL) return;
  const url = new URL(e.request.url);
  if (e.request.method !== 'GET' || url.origin !== self.location.origin) return;
  const scope = new URL(self.registration.scope);
  let rel = url.pathname.slice(scope.pathname.length);
  if (rel === '') rel = 'index.html';
  if (!(rel in SHELL.files)) return; // weights and everything else: straight to the network
  e.respondWith(
    caches.open(CACHE).then(async (cache) => (await cache.match(new URL(rel, scope).href)) || fetch(e.request)),
  );
});
