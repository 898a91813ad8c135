// The browser benchmark page (bench.html): loads a weight pack and times chat, an image
// question and flow steps. window.runBenchmark is what the e2e test calls.
import { create } from './janus.js';

const params = new URLSearchParams(location.search);
const pack = params.get('pack') || 'weights/';
const status = document.getElementById('status');
const out = document.getElementById('out');
const row = (k, v) => {
  const tr = document.createElement('tr');
  for (const t of [k, v]) tr.append(Object.assign(document.createElement('td'), { textContent: t }));
  out.tBodies[0].append(tr);
  out.hidden = false;
};

/** A synthetic 640×480 photo-like picture as a PNG blob. */
async function picture() {
  const c = new OffscreenCanvas(640, 480);
  const g = c.getContext('2d');
  const grad = g.createLinearGradient(0, 0, 640, 480);
  grad.addColorStop(0, '#2b6cb0');
  grad.addColorStop(1, '#f6ad55');
  g.fillStyle = grad;
  g.fillRect(0, 0, 640, 480);
  g.fillStyle = '#fff';
  g.beginPath();
  g.arc(320, 240, 120, 0, 7);
  g.fill();
  return c.convertToBlob({ type: 'image/png' });
}

export async function run({ tokens = 32, steps = 3 } = {}) {
  const figures = {};
  status.textContent = 'loading…';
  let t = performance.now();
  let downloaded = 0;
  const engine = await create({ source: { pack }, onprogress: (p) => { if (p.phase === 'download') downloaded = p.loaded; status.textContent = `${p.phase} ${p.loaded ?? ''}`; } });
  // wgpu cannot see the browser's adapter description; ask WebGPU directly.
  const a = await navigator.gpu.requestAdapter();
  const i = (a && a.info) || {};
  figures.adapter = [i.vendor, i.architecture, i.device, i.description].filter(Boolean).join(' / ') || engine.info.adapter.name || '(not disclosed)';
  figures.load_s = (performance.now() - t) / 1000;
  // Part of the load: compiling the chat and image-question shaders ahead of first use.
  figures.compile_s = engine.info.compileSeconds;
  figures.pipelines = engine.info.pipelines;
  figures.gpu_tuning = engine.info.gpuTuning;
  figures.subgroup_reductions = engine.info.subgroupReductions ?? 'none';
  figures.load_from = downloaded ? 'network' : 'IndexedDB';
  status.textContent = 'chat…';
  // Tokens are counted, not text callbacks: random or unusual weights emit partial UTF-8, so text
  // arrives in bursts. Each timed reply starts from an empty cache (reset) and must end with
  // finish = 'length', so it holds exactly maxTokens tokens. One token = prefill + the first
  // sample; N tokens − 1 token = N − 1 decode steps.
  const messages = [{ role: 'user', content: 'Tell me a long story about a fox.' }];
  const timed = async (n) => {
    await engine.reset();
    const t0 = performance.now();
    await engine.chat(messages, { temperature: 0, maxTokens: n });
    const r = engine.lastReply;
    if (r.finish !== 'length') throw new Error(`the reply ended (${r.finish}) before ${n} tokens; the model is too small for this many`);
    return { ms: performance.now() - t0, promptTokens: r.promptTokens };
  };
  await timed(2); // compiles the decode shaders and warms the caches
  const one = await timed(1);
  const n = Math.max(4, tokens);
  const many = await timed(n);
  figures.prompt_tokens = one.promptTokens;
  figures.chat_first_token_s = one.ms / 1000;
  figures.prefill_tokens_per_s = one.promptTokens / (one.ms / 1000);
  figures.decode_tokens = n - 1;
  figures.decode_tokens_per_s = figures.decode_tokens / ((many.ms - one.ms) / 1000);
  await engine.reset();
  status.textContent = 'image question…';
  const img = await picture();
  let first = 0;
  t = performance.now();
  await engine.chat([{ role: 'user', content: 'What is in this picture?', images: [img] }], { temperature: 0, maxTokens: 2, ontoken: () => { if (!first) first = performance.now(); } });
  figures.image_question_first_token_s = ((first || performance.now()) - t) / 1000;
  status.textContent = 'flow steps…';
  const stepTimes = [];
  t = performance.now();
  await engine.generate('a red fox in snow', { steps, onstep: () => stepTimes.push(performance.now()) });
  const per = stepTimes.slice(1).map((s, i) => (s - stepTimes[i]) / 1000);
  figures.seconds_per_flow_step = per.length ? per.reduce((a, b) => a + b) / per.length : (stepTimes[0] - t) / 1000;
  figures.generate_total_s = (performance.now() - t) / 1000;
  engine.terminate();
  status.textContent = 'done';
  return figures;
}
window.runBenchmark = run;

document.getElementById('run').onclick = async () => {
  out.tBodies[0].replaceChildren();
  try {
    const f = await run({ tokens: +document.getElementById('tokens').value, steps: +document.getElementById('steps').value });
    for (const [k, v] of Object.entries(f)) row(k.replaceAll('_', ' '), typeof v === 'number' ? v.toFixed(3) : v);
  } catch (e) {
    status.textContent = `failed: ${e.message}`;
    status.className = 'error';
  }
};
