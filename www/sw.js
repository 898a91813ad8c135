// Offline app shell: the HTML, JS, CSS and wasm are cached on install and served cache-first
// (refreshed in the background), so after the first complete load the app starts with the
// network off. Weights are not here: they live in IndexedDB (see store.js).
const CACHE = 'janusflow-shell-v2';
const SHELL = ['./', 'index.html', 'style.css', 'janus-flow.js', 'janus.js', 'store.js', 'hf.js', 'worker.js', 'pkg/janusflow.js', 'pkg/janusflow_bg.wasm', 'embed-example.html', 'bench.html'];

self.addEventListener('install', (e) => {
  e.waitUntil(caches.open(CACHE).then((c) => c.addAll(SHELL)).then(() => self.skipWaiting()));
});

self.addEventListener('activate', (e) => {
  e.waitUntil(
    caches.keys().then((keys) => Promise.all(keys.filter((k) => k !== CACHE).map((k) => caches.delete(k)))).then(() => self.clients.claim()),
  );
});

self.addEventListener('fetch', (e) => {
  const url = new URL(e.request.url);
  if (e.request.method !== 'GET' || url.origin !== self.location.origin) return;
  const scope = new URL(self.registration.scope);
  const rel = url.pathname.slice(scope.pathname.length) || './';
  if (!SHELL.includes(rel) && rel !== '') return; // weights and everything else: straight to the network
  e.respondWith(
    caches.open(CACHE).then(async (cache) => {
      const hit = await cache.match(e.request, { ignoreSearch: true });
      const refresh = fetch(e.request)
        .then((r) => {
          if (r.ok) cache.put(e.request, r.clone());
          return r;
        })
        .catch(() => null);
      if (hit) {
        e.waitUntil(refresh);
        return hit;
      }
      return (await refresh) || new Response('offline and not cached', { status: 503 });
    }),
  );
});
