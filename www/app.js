// The app page's settings from its URL, applied to <janus-flow> before the element module
// upgrades it (this is a classic script at the end of <body>; modules run after parsing), and
// the offline cache (updateViaCache 'none': a new pkg/shell.js, the shell's version, is noticed
// on the next visit). A file of its own: the Content-Security-Policy allows no inline script.
(() => {
  const app = document.getElementById('app');
  const params = new URLSearchParams(location.search);
  const attrs = { pack: 'pack', hf: 'hf-endpoint', model: 'hf-model', vae: 'hf-vae', quant: 'quant', mode: 'mode' };
  for (const [param, attr] of Object.entries(attrs)) if (params.get(param)) app.setAttribute(attr, params.get(param));
  if (params.get('fast') === '1') app.setAttribute('fast', '');
  if ('serviceWorker' in navigator) navigator.serviceWorker.register('sw.js', { updateViaCache: 'none' }).catch((e) => console.warn('offline cache unavailable:', e));
})();
