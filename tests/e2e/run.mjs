// End-to-end tests of the browser app in Debian's Chromium (headless, WebGPU on SwiftShader),
// driven by playwright-core against a local server that stands in for the CDN. Run by
// `./build.sh test` after it has built www/pkg and prepared E2E_DIR (a tiny weight pack plus the
// native CLI's answers on the same checkpoint and preset).
import { chromium } from 'playwright-core';
import fs from 'node:fs';
import path from 'node:path';
import assert from 'node:assert/strict';
import { startServer } from './server.mjs';

const root = path.resolve(path.dirname(new URL(import.meta.url).pathname), '../..');
const e2e = path.resolve(process.env.E2E_DIR || path.join(root, 'target/e2e'));
const artifacts = path.join(root, 'artifacts');
fs.mkdirSync(artifacts, { recursive: true });

const expected = JSON.parse(fs.readFileSync(path.join(e2e, 'expected.json'), 'utf8'));
const manifest = JSON.parse(fs.readFileSync(path.join(e2e, 'pack/manifest.json'), 'utf8'));
const shardFiles = manifest.shards.map((s) => s.file);
assert.ok(shardFiles.length >= 3, 'the test pack should have several shards');

const { server, state, url } = await startServer({
  '/pack/': path.join(e2e, 'pack'),
  '/hf/model/': path.join(root, 'tests/fixtures/tiny'),
  '/hf/vae/': path.join(root, 'tests/fixtures/tiny/vae'),
  '/native/': e2e,
  '/fixtures/': path.join(root, 'tests/fixtures'),
  '/e2e/': path.join(root, 'tests/e2e'),
  '/': path.join(root, 'www'),
});
const chromiumPath = process.env.CHROMIUM || '/usr/bin/chromium';
const browser = await chromium.launch({
  executablePath: chromiumPath,
  headless: true,
  args: ['--enable-unsafe-webgpu', '--no-sandbox', '--disable-gpu-sandbox', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run'],
});

const results = [];
async function test(name, fn) {
  const t0 = Date.now();
  try {
    await fn();
    results.push({ name, ok: true, ms: Date.now() - t0 });
    console.log(`ok   ${name} (${((Date.now() - t0) / 1000).toFixed(1)} s)`);
  } catch (e) {
    results.push({ name, ok: false, error: e });
    console.log(`FAIL ${name}\n${e && e.stack ? e.stack : e}`);
    // A test that failed half-way must not leave the network broken for the ones after it.
    Object.assign(state, { offline: false, packOffline: false, shardBudget: Infinity, budget: Infinity, cutOnce: 0 });
  }
}

const context = await browser.newContext({ viewport: { width: 1100, height: 800 } });
const page = await context.newPage();
page.on('console', (m) => process.env.E2E_VERBOSE && console.log(`[page] ${m.text()}`));
page.on('pageerror', (e) => console.log(`[page error] ${e.message}`));
await page.goto(`${url}/e2e/test.html`);

/** Waits for the app's chat interface; the consent screen is accepted only when `consent`. */
async function appReady(app, consent = true) {
  const ready = app.locator('textarea');
  const download = app.locator('button.primary', { hasText: 'Download' });
  try {
    await Promise.race([ready.waitFor({ timeout: 120000 }), download.waitFor({ timeout: 120000 })]);
  } catch (e) {
    const shown = await app.evaluate((el) => el.shadowRoot.querySelector('.wrap')?.innerText).catch(() => '?');
    throw new Error(`the app did not become ready; it shows: ${shown}`);
  }
  if (await download.count()) {
    assert.ok(consent, 'the stored model should load without asking again');
    const text = await app.locator('.screen').innerText();
    assert.match(text, /DeepSeek License/);
    assert.match(text, /MIT/);
    await download.click();
    await ready.waitFor({ timeout: 120000 });
  }
}

/** Sets greedy decoding in the app's settings, sends the chat prompt and checks the native reply. */
async function greedyChatInApp(app) {
  await app.locator('summary', { hasText: 'Settings' }).click();
  await app.locator('input[name=temperature]').fill('0');
  await app.locator('input[name=maxTokens]').fill('24');
  await app.locator('textarea').fill(expected.chat.prompt);
  await app.locator('textarea').press('Enter');
  await page.waitForFunction(() => !document.querySelector('janus-flow').shadowRoot.querySelector('button.primary').disabled, null, { timeout: 120000 });
  assert.equal(await app.locator('.msg.assistant').last().textContent(), expected.chat.reply);
}

const shardCount = () => shardFiles.reduce((a, f) => a + (state.counts.get(`/pack/${f}`) || 0), 0);

/** Runs `body` (a function source) in the page with the janus module as `J`. */
function inPage(body, arg) {
  return page.evaluate(
    async ([src, a]) => {
      const J = await import('/janus.js');
      // eslint-disable-next-line no-new-func
      return new Function('J', 'arg', `return (async () => { ${src} })()`)(J, a);
    },
    [body, arg],
  );
}

const clearStore = () => page.evaluate(() => new Promise((res, rej) => {
  const r = indexedDB.deleteDatabase('janusflow');
  r.onsuccess = () => res();
  r.onerror = () => rej(r.error);
  r.onblocked = () => res();
}));

await test('WebGPU adapter is available in the test browser', async () => {
  const has = await page.evaluate(async () => !!(navigator.gpu && (await navigator.gpu.requestAdapter())));
  assert.ok(has, 'navigator.gpu.requestAdapter() gave no adapter');
});

await test('first load stores every shard in IndexedDB with progress events', async () => {
  await clearStore();
  const before = shardCount();
  const r = await inPage(`
    const phases = new Set(); let last = null;
    const e = await J.create({ source: { pack: '/pack/' }, onprogress: (p) => { phases.add(p.phase); if (p.phase === 'download') last = p; } });
    window.__engine = e;
    const db = await new Promise((res, rej) => { const q = indexedDB.open('janusflow'); q.onsuccess = () => res(q.result); q.onerror = () => rej(q.error); });
    const keys = await new Promise((res) => { const q = db.transaction('shards').objectStore('shards').getAllKeys(); q.onsuccess = () => res(q.result); });
    db.close();
    return { phases: [...phases], last, keys, info: e.info };
  `);
  assert.deepEqual(new Set(r.keys), new Set(shardFiles));
  assert.ok(['download', 'upload', 'compile'].every((p) => r.phases.includes(p)), `phases: ${r.phases}`);
  assert.ok(r.info.pipelines >= 12 && r.info.wasmHeapBytes > 0, JSON.stringify(r.info));
  assert.equal(r.last.loaded, r.last.total);
  assert.equal(shardCount() - before, shardFiles.length, 'each shard fetched once');
});

await test('chat reply equals the native CLI greedy reply', async () => {
  const text = await inPage(`return window.__engine.chat([{ role: 'user', content: arg }], { temperature: 0, maxTokens: 24 });`, expected.chat.prompt);
  assert.equal(text, expected.chat.reply);
});

await test('image question equals the native CLI', async () => {
  const text = await inPage(`
    const blob = await (await fetch('/fixtures/images/square_80.png')).blob();
    await window.__engine.reset();
    return window.__engine.chat([{ role: 'user', content: arg, images: [blob] }], { temperature: 0, maxTokens: 24 });
  `, expected.image.prompt);
  assert.equal(text, expected.image.reply);
});

await test('generated image equals the native one within ±2 levels', async () => {
  const r = await inPage(`
    const buf = await (await fetch('/fixtures/tiny-ref-gen/noise.npy')).arrayBuffer();
    const header = new DataView(buf).getUint16(8, true);
    const noise = new Float32Array(buf.slice(10 + header));
    const steps = [];
    const png = await window.__engine.generate(arg.prompt, { steps: arg.steps, cfg: arg.cfg, noise, onstep: (s) => steps.push(s.step) });
    const pixels = async (blob) => { const bm = await createImageBitmap(blob); const c = new OffscreenCanvas(bm.width, bm.height); const g = c.getContext('2d'); g.drawImage(bm, 0, 0); return [bm.width, g.getImageData(0, 0, bm.width, bm.height).data]; };
    const [w, a] = await pixels(png);
    const [, b] = await pixels(await (await fetch('/native/fox.png')).blob());
    let worst = 0; for (let i = 0; i < a.length; i++) worst = Math.max(worst, Math.abs(a[i] - b[i]));
    const url = URL.createObjectURL(png); const img = document.createElement('img'); img.src = url; img.width = 256; img.style.imageRendering = 'pixelated'; document.body.append(img); await img.decode();
    return { steps, worst, w };
  `, expected.generate);
  assert.deepEqual(r.steps, Array.from({ length: expected.generate.steps }, (_, i) => i + 1));
  assert.ok(r.worst <= 2, `differs by up to ${r.worst} levels`);
  await page.screenshot({ path: path.join(artifacts, 'e2e-generated.png') });
});

await test('Stop ends generation promptly', async () => {
  const r = await inPage(`
    const ctl = new AbortController(); let n = 0; const t0 = performance.now();
    const png = await window.__engine.generate('a slow picture', { steps: 200, onstep: (s) => { n = s.step; if (s.step === 2) ctl.abort(); }, signal: ctl.signal });
    return { png, n, ms: performance.now() - t0 };
  `);
  assert.equal(r.png, null);
  assert.ok(r.n <= 4, `ran ${r.n} steps after Stop`);
});

await test('reload with the network off still loads from IndexedDB', async () => {
  await page.reload();
  state.packOffline = true;
  const before = shardCount();
  try {
    const text = await inPage(`
      const e = await J.create({ source: { pack: '/pack/' } });
      window.__engine = e;
      return e.chat([{ role: 'user', content: arg }], { temperature: 0, maxTokens: 24 });
    `, expected.chat.prompt);
    assert.equal(text, expected.chat.reply);
    assert.equal(shardCount(), before, 'no shard requested');
  } finally {
    state.packOffline = false;
  }
});

await test('a download cut mid-way resumes without re-fetching committed shards', async () => {
  await page.reload();
  await clearStore();
  const counts0 = new Map(shardFiles.map((f) => [f, state.counts.get(`/pack/${f}`) || 0]));
  state.shardBudget = 2;
  const err = await inPage(`try { await J.create({ source: { pack: '/pack/' } }); return null; } catch (e) { return e.message; }`);
  assert.ok(err, 'the interrupted load must fail');
  state.shardBudget = Infinity;
  await inPage(`window.__engine = await J.create({ source: { pack: '/pack/' } });`);
  const fetched = shardFiles.map((f) => (state.counts.get(`/pack/${f}`) || 0) - counts0.get(f));
  // The two shards delivered before the cut were committed and never requested again.
  assert.equal(fetched.filter((n) => n === 1).length, shardFiles.length - 1, `fetch counts ${fetched}`);
});

await test('a corrupted shard is rejected and fetched again', async () => {
  await page.reload();
  await clearStore();
  const victim = shardFiles[1];
  const n0 = state.counts.get(`/pack/${victim}`) || 0;
  state.corruptOnce.add(victim);
  const text = await inPage(`
    const e = await J.create({ source: { pack: '/pack/' } });
    return e.chat([{ role: 'user', content: arg }], { temperature: 0, maxTokens: 24 });
  `, expected.chat.prompt);
  assert.equal(text, expected.chat.reply);
  assert.equal((state.counts.get(`/pack/${victim}`) || 0) - n0, 2, 'fetched twice');
});

await test('the app page: chat and drawing through the interface (screenshots in artifacts/)', async () => {
  await page.goto(`${url}/index.html?pack=/pack/`);
  const app = page.locator('janus-flow');
  await appReady(app);
  await greedyChatInApp(app);
  await page.screenshot({ path: path.join(artifacts, 'app-chat.png') });
  await app.locator('input[value=draw]').check();
  await app.locator('input[name=steps]').fill('4');
  await app.locator('textarea').fill('a red fox in snow');
  await app.locator('button.primary').click();
  await app.locator('.result img').waitFor({ timeout: 120000 });
  assert.ok(await app.locator('a[download]').count(), 'download link');
  await page.screenshot({ path: path.join(artifacts, 'app-generated.png') });
});

await test('offline: after a complete load the app starts and runs with the network off', async () => {
  await page.evaluate(async () => {
    await navigator.serviceWorker.ready;
  });
  await page.reload();
  await page.waitForFunction(() => !!navigator.serviceWorker.controller, null, { timeout: 30000 });
  await context.setOffline(true);
  state.offline = true;
  try {
    await page.reload();
    const app = page.locator('janus-flow');
    await appReady(app, false);
    await greedyChatInApp(app);
    await page.screenshot({ path: path.join(artifacts, 'app-offline.png') });
  } finally {
    state.offline = false;
    await context.setOffline(false);
  }
});

await test('the browser benchmark page reports its figures (artifacts/browser-bench.json)', async () => {
  await page.goto(`${url}/bench.html?pack=/pack/`);
  const f = await page.evaluate(() => window.runBenchmark({ tokens: 16, steps: 3 }));
  fs.writeFileSync(path.join(artifacts, 'browser-bench.json'), JSON.stringify(f, null, 1));
  console.log('     ', JSON.stringify(f));
  assert.equal(f.load_from, 'IndexedDB');
  for (const k of ['load_s', 'chat_first_token_s', 'image_question_first_token_s', 'seconds_per_flow_step']) assert.ok(f[k] > 0, `${k} = ${f[k]}`);
  // SwiftShader is a CPU rasteriser: the worker must have chosen the CPU kernel shapes.
  if (/swiftshader/i.test(f.adapter)) assert.equal(f.gpu_tuning, false);
});

// The Hugging Face layout, converted in the worker while it downloads (the same Rust converter as
// `janusflow convert`, so the stored pack must be byte-identical to the CLI's pack).
const hfSource = { hf: { model: '/hf/model/', vae: '/hf/vae/', shardSize: 262144, retries: 1 } };
const hfRecord = () => page.evaluate(async (key) => {
  const db = await new Promise((res, rej) => { const q = indexedDB.open('janusflow'); q.onsuccess = () => res(q.result); q.onerror = () => rej(q.error); });
  const rec = await new Promise((res) => { const q = db.transaction('packs').objectStore('packs').get(key); q.onsuccess = () => res(q.result); });
  db.close();
  return rec ? { complete: rec.complete, shards: rec.shards, manifest: rec.manifestText ? JSON.parse(rec.manifestText) : null } : null;
}, `hf:${url}/hf/model/|${url}/hf/vae/`);
const hfBytes = ['model.safetensors', 'vae/diffusion_pytorch_model.safetensors'].reduce((a, f) => a + fs.statSync(path.join(root, 'tests/fixtures/tiny', f)).size, 0);
const dataStart = 8 + Number(fs.readFileSync(path.join(root, 'tests/fixtures/tiny/model.safetensors')).readBigUInt64LE(0));
const dataRanges = (file) => state.ranges.filter((r) => r.path === file && r.start >= dataStart);

await test('Hugging Face layout: converted while downloading into the CLI pack, then answers the same', async () => {
  await page.goto(`${url}/e2e/test.html`);
  await clearStore();
  state.ranges = [];
  const r = await inPage(`
    const phases = new Set();
    const sizes = await J.describe(arg.source);
    const e = await J.create({ source: arg.source, onprogress: (p) => phases.add(p.phase) });
    const text = await e.chat([{ role: 'user', content: arg.prompt }], { temperature: 0, maxTokens: 24 });
    e.terminate();
    return { phases: [...phases], text, sizes };
  `, { source: hfSource, prompt: expected.chat.prompt });
  const rec = await hfRecord();
  assert.ok(rec && rec.complete, 'a complete record is stored');
  assert.deepEqual(rec.manifest.shards, manifest.shards, 'same shards as janusflow convert');
  assert.deepEqual(rec.manifest.tensors, manifest.tensors);
  assert.equal(r.text, expected.chat.reply);
  assert.ok(r.phases.includes('convert'), `phases: ${r.phases}`);
  assert.equal(r.sizes.store, manifest.total_bytes);
  assert.ok(state.ranges.some((x) => x.path === '/hf/vae/diffusion_pytorch_model.safetensors'), 'the VAE was read by Range');
});

await test('an interrupted Hugging Face download resumes by Range: at the byte within a load, after the last shard across loads', async () => {
  await clearStore();
  // (a) One connection drops inside the model file: the same load continues from that byte.
  state.ranges = [];
  state.cutOnce = 300000;
  await inPage(`(await J.create({ source: arg })).terminate();`, hfSource);
  const d = dataRanges('/hf/model/model.safetensors');
  assert.ok(d.length === 2 && d[1].start > d[0].start, `ranges: ${JSON.stringify(state.ranges)}`);
  assert.deepEqual((await hfRecord()).manifest.shards, manifest.shards);
  // (b) The network fails for good mid-way: the load fails, keeping the shards committed so far
  // with their checkpoint; the next load (a fresh worker, as after a reload) resumes after them.
  await clearStore();
  state.budget = 700000;
  const err = await inPage(`try { await J.create({ source: arg }); return null; } catch (e) { return e.message; }`, hfSource);
  assert.match(err || '', /keeps failing|cannot reach/);
  const partial = await hfRecord();
  assert.ok(partial && !partial.complete && partial.shards.length >= 1, `partial record: ${JSON.stringify(partial)}`);
  state.budget = Infinity;
  state.ranges = [];
  const served0 = state.served;
  const text = await inPage(`
    const e = await J.create({ source: arg.source });
    const t = await e.chat([{ role: 'user', content: arg.prompt }], { temperature: 0, maxTokens: 24 });
    e.terminate();
    return t;
  `, { source: hfSource, prompt: expected.chat.prompt });
  const first = dataRanges('/hf/model/model.safetensors')[0];
  assert.ok(first && first.start > dataStart, `resumed at ${JSON.stringify(first)} (data starts at ${dataStart})`);
  assert.ok(state.served - served0 < hfBytes - (first.start - dataStart), `read ${state.served - served0} bytes again`);
  assert.deepEqual((await hfRecord()).manifest.shards, manifest.shards);
  assert.equal(text, expected.chat.reply);
});

await test('the app page with the Hugging Face layout: consent shows both sizes, then it converts and chats', async () => {
  await page.goto(`${url}/e2e/test.html`);
  await clearStore();
  await page.goto(`${url}/index.html?model=/hf/model/&vae=/hf/vae/`);
  const app = page.locator('janus-flow');
  const download = app.locator('button.primary', { hasText: 'Download' });
  await download.waitFor({ timeout: 120000 });
  const text = await app.locator('.screen').innerText();
  assert.match(text, /to download, converted to .* as they arrive/);
  await appReady(app);
  await greedyChatInApp(app);
});

await browser.close();
server.close();
const failed = results.filter((r) => !r.ok);
console.log(`${results.length - failed.length} passed, ${failed.length} failed`);
process.exit(failed.length ? 1 : 0);
