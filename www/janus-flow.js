// <janus-flow>: the whole app as one embeddable element (the app page is just this element).
//   <script type="module" src="https://host/janus-flow.js"></script>
//   <janus-flow pack="https://cdn.example/janusflow-q4/" mode="chat"></janus-flow>
// Attributes: pack (weight-pack URL), quant, mode (chat | draw), conversation (the name the
// conversation is kept under in IndexedDB, "default" unless set). Events (bubbling, composed):
// ready ({detail: engine info}), reply ({detail: {text, finish}}), image ({detail: {prompt, png}}).
// Replies are rendered as a Markdown subset built from DOM nodes (markdown.js): model output never
// becomes HTML. Styles are a constructed style sheet, so a page's strict Content-Security-Policy
// (no inline styles or scripts) does not get in the way. janus-flow.d.ts has the typed API.
import { KIND, create, defaults, deleteStored, describe, hasWebGPU, hfSource, officialSource, sourceHosts, storageInfo, watchStore } from './janus.js';
import { mib } from './store.js';
import { renderInto } from './markdown.js';
import { clearConversation, loadConversation, saveConversation } from './conversation.js';

const CSS = `
:host { display: block; font: 15px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1d1d1f; background: #fff; border: 1px solid #d8d8de; border-radius: 12px; overflow: hidden; min-height: 420px; }
* { box-sizing: border-box; }
[hidden] { display: none !important; }
.wrap { display: flex; flex-direction: column; height: 100%; min-height: inherit; }
header { display: flex; gap: .75rem; align-items: center; padding: .6rem 1rem; border-bottom: 1px solid #ececf0; flex-wrap: wrap; }
header h2 { font-size: 1rem; margin: 0; flex: 1; }
.status { font-size: .85rem; color: #555; }
.screen { padding: 1.25rem; }
.error { color: #b00020; }
.log { flex: 1; overflow-y: auto; padding: 1rem; display: flex; flex-direction: column; gap: .75rem; min-height: 200px; }
.msg { max-width: 85%; min-width: 0; padding: .55rem .8rem; border-radius: 10px; white-space: pre-wrap; word-wrap: break-word; }
.msg.user { align-self: flex-end; background: #0a66c2; color: #fff; }
.msg.assistant { align-self: flex-start; background: #f1f1f4; }
.md > :first-child { margin-top: 0; }
.md > :last-child { margin-bottom: 0; }
.md p, .md ul, .md ol, .md pre, .md blockquote, .md h3, .md h4, .md h5, .md h6 { margin: .45rem 0; }
.md h3 { font-size: 1.1rem; } .md h4 { font-size: 1rem; } .md h5, .md h6 { font-size: .95rem; }
.md ul, .md ol { padding-left: 1.4rem; }
.md code { font: .9em ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; background: #e2e2e8; padding: .05rem .25rem; border-radius: 4px; }
.md pre { background: #1d1d1f; color: #f4f4f6; padding: .6rem .75rem; border-radius: 8px; overflow-x: auto; white-space: pre; max-width: 100%; }
.md pre code { background: none; padding: 0; color: inherit; }
.md blockquote { border-left: 3px solid #c9c9d1; padding-left: .7rem; color: #444; }
.md a { color: #0a57a8; }
.md hr { border: 0; border-top: 1px solid #d0d0d8; }
.actions { display: flex; gap: .3rem; margin-top: .35rem; white-space: normal; }
.actions button { font-size: .8rem; padding: .1rem .55rem; }
.msg.user .actions { justify-content: flex-end; }
.msg.user .actions button { background: transparent; color: #fff; border-color: #ffffffa0; }
.msg.user textarea { width: 100%; color: #1d1d1f; background: #fff; }
.msg img { max-width: 160px; max-height: 160px; border-radius: 6px; display: block; margin-bottom: .4rem; }
.result img, .result canvas { width: min(384px, 100%); image-rendering: auto; border-radius: 8px; display: block; }
.steps { font-size: .85rem; color: #555; margin: .3rem 0; }
.msg.batch { width: min(95%, 820px); max-width: none; white-space: normal; }
.grid { display: grid; gap: .6rem; grid-template-columns: repeat(auto-fill, minmax(min(100%, 180px), 1fr)); }
.grid.single { grid-template-columns: min(384px, 100%); }
.grid .result img, .grid .result canvas { width: 100%; max-width: none; max-height: none; height: auto; aspect-ratio: 1; }
.composer { border-top: 1px solid #ececf0; padding: .6rem; display: flex; flex-direction: column; gap: .5rem; }
.row { display: flex; gap: .5rem; align-items: center; flex-wrap: wrap; }
textarea { flex: 1; min-height: 2.6rem; max-height: 10rem; resize: vertical; font: inherit; padding: .45rem .6rem; border: 1px solid #c9c9d1; border-radius: 8px; min-width: 0; }
button, .btn { font: inherit; padding: .45rem .9rem; border-radius: 8px; border: 1px solid #c9c9d1; background: #fafafa; cursor: pointer; color: inherit; text-decoration: none; }
button.primary { background: #0a66c2; color: #fff; border-color: #0a66c2; }
button:disabled { opacity: .5; cursor: default; }
button:focus-visible, textarea:focus-visible, input:focus-visible, .btn:focus-visible { outline: 3px solid #7ab3ef; outline-offset: 1px; }
.thumbs { display: flex; gap: .4rem; flex-wrap: wrap; }
.thumbs figure { margin: 0; position: relative; }
.thumbs img { width: 56px; height: 56px; object-fit: cover; border-radius: 6px; }
.thumbs button { position: absolute; top: -6px; right: -6px; padding: 0 .35rem; border-radius: 50%; font-size: .8rem; }
progress { width: 100%; height: .8rem; }
details { font-size: .9rem; }
details label { display: inline-flex; gap: .3rem; align-items: center; margin: .2rem .8rem .2rem 0; }
details input { width: 5.5rem; font: inherit; }
details input[type=checkbox] { width: auto; margin: 0; }
fieldset { border: 0; padding: 0; margin: 0; display: flex; gap: .6rem; }
.drop { outline: 3px dashed #0a66c2; outline-offset: -6px; }
.sr { position: absolute; width: 1px; height: 1px; overflow: hidden; clip: rect(0 0 0 0); }
@media (max-width: 560px) { .msg { max-width: 95%; } header h2 { flex-basis: 100%; } }
`;

const LICENCES = `<ul>
<li>JanusFlow-1.3B weights: <a href="https://github.com/deepseek-ai/DeepSeek-LLM/blob/HEAD/LICENSE-MODEL" target="_blank" rel="noopener">DeepSeek License Agreement</a> (use-based restrictions apply)</li>
<li>SDXL VAE weights: <a href="https://huggingface.co/stabilityai/sdxl-vae" target="_blank" rel="noopener">MIT</a></li></ul>`;

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else if (v === true) e.setAttribute(k, '');
    else if (v !== false && v != null) e.setAttribute(k, v);
  }
  for (const c of children) e.append(c);
  return e;
}

class JanusFlowElement extends HTMLElement {
  static get observedAttributes() {
    return ['mode'];
  }

  constructor() {
    super();
    this.root = this.attachShadow({ mode: 'open' });
    /** The conversation: [{role: 'user' | 'assistant', content, images?: Blob[]}]. */
    this.messages = [];
    /** Drawn pictures kept with the conversation: [{prompt, after, steps, seconds, images}]. */
    this.drawings = [];
    /** drawing → its two log entries (prompt, grid), to remove it when an edit drops it. */
    this.drawingNodes = new WeakMap();
    /** Counts "New conversation"s: a drawing that finishes after one is not kept. */
    this.generation = 0;
    /** message → its bubble in the log. */
    this.bubbles = new Map();
    this.pending = [];
    this.engine = null;
    this.busy = null;
    /** Object URLs of the log's images, revoked when it is cleared. */
    this.urls = [];
    /** Regenerations of the last reply (each samples with the next seed). */
    this.regens = 0;
    this.saving = Promise.resolve();
  }

  /** The name the conversation is kept under in IndexedDB. */
  get conversationKey() {
    return this.getAttribute('conversation') || 'default';
  }

  get quant() {
    return this.getAttribute('quant') || undefined;
  }

  /** Where the weights come from, as a person reads it: the host names. */
  get hosts() {
    return sourceHosts(this.source).join(' and ');
  }

  /**
   * Attributes: `pack` (a weight pack URL), else the Hugging Face layout: `hf-model` / `hf-vae`
   * (checkpoint folder URLs) or `hf-endpoint` (a Hub mirror); the official checkpoints by default.
   */
  get source() {
    const abs = (u) => new URL(u, document.baseURI).href;
    const pack = this.getAttribute('pack');
    if (pack) return { pack: abs(pack) };
    const hub = this.getAttribute('hf-endpoint');
    const base = hub ? hfSource(hub) : officialSource;
    const model = this.getAttribute('hf-model');
    const vae = this.getAttribute('hf-vae');
    return { hf: { model: model ? abs(model) : base.hf.model, vae: vae ? abs(vae) : base.hf.vae } };
  }

  get sourceLabel() {
    const s = this.source;
    return s.pack || `${s.hf.model} + ${s.hf.vae}`;
  }

  get mode() {
    return this.getAttribute('mode') === 'draw' ? 'draw' : 'chat';
  }

  attributeChangedCallback() {
    if (this.modeInputs) for (const r of this.modeInputs) r.checked = r.value === this.mode;
    if (this.input) this.input.placeholder = this.mode === 'draw' ? 'Describe the picture to draw…' : 'Ask anything, or attach an image…';
  }

  connectedCallback() {
    if (this.started) return;
    this.started = true;
    this.root.replaceChildren();
    const sheet = new CSSStyleSheet();
    sheet.replaceSync(CSS);
    this.root.adoptedStyleSheets = [sheet];
    this.wrap = el('div', { class: 'wrap' });
    this.statusEl = el('span', { class: 'status', role: 'status', 'aria-live': 'polite' });
    this.wrap.append(el('header', {}, el('h2', {}, 'JanusFlow'), this.statusEl));
    this.body = el('div', { class: 'screen' });
    this.wrap.append(this.body);
    this.root.append(this.wrap);
    // Another tab stored or deleted a model: a screen waiting for one looks again; a running
    // engine keeps going (its weights are on the GPU) and says so.
    this.unwatch = watchStore((m) => {
      if (m.type === 'stored' && !this.engine && !this.loading) this.start();
      if (m.type === 'deleted' && this.engine) this.setStatus('the stored model was deleted in another tab; it is downloaded again on the next start');
    });
    this.start();
  }

  disconnectedCallback() {
    if (this.unwatch) this.unwatch();
    this.unwatch = null;
    this.started = false;
    this.loads = (this.loads || 0) + 1; // an engine still loading is terminated when it arrives
    this.loading = false;
    if (this.engine) this.engine.terminate();
    this.engine = null;
  }

  setStatus(text) {
    this.statusEl.textContent = text;
  }

  screen(...children) {
    const s = el('div', { class: 'screen' }, ...children);
    this.body.replaceWith(s);
    this.body = s;
    return s;
  }

  async start() {
    if (!hasWebGPU()) {
      this.screen(el('h3', {}, 'WebGPU is not available'), el('p', {}, 'JanusFlow runs on your GPU through WebGPU. Use Chrome or Edge 113+, Safari 26, or Firefox 141+ on Windows, with hardware acceleration on.'));
      this.setStatus('no WebGPU');
      return;
    }
    let stored = null;
    try {
      stored = (await storageInfo(this.source, { quant: this.quant })).stored;
    } catch {
      stored = null;
    }
    if (stored && stored.complete) return this.load();
    let sizes;
    try {
      sizes = await describe(this.source, { quant: this.quant });
    } catch (e) {
      this.failure(`Cannot reach the weights at ${this.sourceLabel}: ${e.message}`, () => this.start());
      return;
    }
    const size = mib(sizes.download);
    const what = sizes.store === sizes.download ? `The weights (${size})` : `The weights (${size} to download, converted to ${mib(sizes.store)} as they arrive)`;
    // The link that opened this page chose the source: say where the download comes from.
    const s = this.screen(
      el('h3', {}, 'Download the model once'),
      el('p', {}, 'From ', el('strong', { class: 'host' }, this.hosts), ` (${this.sourceLabel}).`),
      el('p', {}, `${what} are stored in this browser and used offline from then on. Their licences:`),
    );
    s.insertAdjacentHTML('beforeend', LICENCES);
    // A conversion stopped earlier (closed tab, lost network) resumes after its last stored shard.
    const resume = stored && !stored.complete && stored.shards > 0;
    if (resume) s.append(el('p', {}, `${stored.shards} parts (up to ${mib(stored.shards * 32 * 1048576)}) are already stored; the download resumes from there.`));
    s.append(el('button', { class: 'primary', onclick: () => this.load() }, resume ? 'Resume the download' : `Download ${size} and start`));
    this.setStatus('not downloaded');
  }

  /** An error screen: what happened, "Try again", and "Delete and start over" (a stored copy that
   * is damaged or half-written never leaves the user stuck). */
  failure(message, retry) {
    const startOver = async () => {
      if (!confirm('Delete the stored copy of the model from this browser and download it again?')) return;
      this.setStatus('deleting the stored model…');
      try {
        if (this.engine) this.engine.terminate();
        this.engine = null;
        await deleteStored(this.source, { quant: this.quant });
      } catch (e) {
        this.failure(`Could not delete the stored model: ${e.message}`, retry);
        return;
      }
      this.start();
    };
    this.screen(el('p', { class: 'error', role: 'alert' }, message), el('div', { class: 'row' }, el('button', { class: 'retry', onclick: retry }, 'Try again'), el('button', { class: 'start-over', onclick: startOver }, 'Delete and start over')));
    this.setStatus('error');
  }

  async load() {
    const bar = el('progress', { max: 1, value: 0, 'aria-label': 'loading progress' });
    const line = el('p', {});
    this.screen(el('h3', {}, 'Loading JanusFlow'), bar, line);
    const t0 = performance.now();
    this.loading = true;
    const mine = (this.loads = (this.loads || 0) + 1);
    let engine;
    try {
      engine = await create({
        source: this.source,
        quant: this.quant,
        onprogress: (p) => {
          if (p.total) {
            bar.max = p.total;
            bar.value = p.loaded;
          } else if (p.steps) {
            bar.max = p.steps;
            bar.value = p.step;
          }
          const pct = p.total ? ` ${((100 * p.loaded) / p.total).toFixed(1)} %` : '';
          const speed = p.speed ? `, ${mib(p.speed)}/s, ${Math.ceil(p.remaining)} s left` : '';
          line.textContent = `${p.phase}${pct}${p.total ? ` (${mib(p.loaded)} of ${mib(p.total)}${speed})` : ''}${p.detail ? ` — ${p.detail}` : ''}`;
          this.setStatus(p.phase);
        },
      });
    } catch (e) {
      if (mine === this.loads) this.failure(`Could not start: ${e.message}`, () => this.load());
      return;
    } finally {
      if (mine === this.loads) this.loading = false;
    }
    if (mine !== this.loads) {
      // Removed from the page (or loading again) meanwhile: this engine has no element to serve.
      engine.terminate();
      return;
    }
    this.engine = engine;
    const info = this.engine.info;
    // Kernels that disagreed with their portable counterparts on this GPU are off (slower, still exact).
    const failed = [info.subgroupCheck, info.shapeCheck].some((c) => c && !c.passed);
    const portable = failed ? '; some of its fast kernels failed a self-check, so portable ones run' : '';
    this.setStatus(`ready on ${info.adapter.name || 'WebGPU'} (${((performance.now() - t0) / 1000).toFixed(1)} s)${portable}`);
    // A crash or a lost GPU device: the engine reloads itself from storage; say what happens.
    this.engine.onprogress = (p) => this.setStatus(`reloading the engine: ${p.phase}${p.total ? ` ${((100 * p.loaded) / p.total).toFixed(0)} %` : ''}`);
    this.engine.addEventListener('restart', (ev) => this.setStatus(ev.detail.kind === KIND.deviceLost ? 'GPU device lost — reloading the engine from storage…' : 'the engine crashed — restarting it…'));
    this.engine.addEventListener('ready', () => this.setStatus('engine reloaded; the conversation is kept'));
    this.buildUi();
    this.emit('ready', this.engine.info);
  }

  emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail, bubbles: true, composed: true }));
  }

  buildUi() {
    // Focusable, so that the keyboard scrolls it.
    const log = el('div', { class: 'log', role: 'log', 'aria-live': 'polite', 'aria-label': 'conversation', tabindex: 0 });
    this.log = log;
    // The log follows new output (replies, progress, images as they load) unless the reader has
    // scrolled up; scrolling back to the end follows again. Only a scroll the reader makes stops
    // it: one the browser makes (content shrinking under the end) must not, even when it is
    // reported after more content arrived.
    this.follow = true;
    let intent = -Infinity;
    const mark = () => (intent = performance.now());
    for (const t of ['wheel', 'touchmove', 'keydown', 'pointerdown']) log.addEventListener(t, mark, { passive: true });
    log.addEventListener('scroll', () => {
      if (log.scrollHeight - log.scrollTop - log.clientHeight < 40) this.follow = true;
      else if (performance.now() - intent < 1000) this.follow = false;
    });
    // Every entry's size is watched: text streaming in, a preview growing, an image decoding.
    const sizes = new ResizeObserver(() => this.stick());
    new MutationObserver((changes) => {
      for (const c of changes) {
        for (const n of c.addedNodes) if (n.nodeType === Node.ELEMENT_NODE) sizes.observe(n);
        for (const n of c.removedNodes) if (n.nodeType === Node.ELEMENT_NODE) sizes.unobserve(n);
      }
      this.stick();
    }).observe(log, { childList: true });
    this.input = el('textarea', { 'aria-label': 'message', rows: 2 });
    this.input.addEventListener('keydown', (e) => {
      if (e.key === 'Enter' && !e.shiftKey) {
        e.preventDefault();
        this.send();
      }
    });
    this.input.addEventListener('paste', (e) => {
      const files = [...(e.clipboardData?.files || [])].filter((f) => f.type.startsWith('image/'));
      if (files.length) this.attach(files);
    });
    const file = el('input', { type: 'file', accept: 'image/*', multiple: true, class: 'sr', 'aria-label': 'attach images' });
    file.addEventListener('change', () => {
      this.attach([...file.files]);
      file.value = '';
    });
    this.thumbs = el('div', { class: 'thumbs', 'aria-label': 'attached images' });
    this.sendBtn = el('button', { class: 'primary', onclick: () => this.send() }, 'Send');
    this.stopBtn = el('button', { onclick: () => this.stop(), disabled: true }, 'Stop');
    this.modeInputs = ['chat', 'draw'].map((m) => el('input', { type: 'radio', name: 'mode', value: m, checked: this.mode === m, onchange: () => this.setAttribute('mode', m) }));
    const modes = el('fieldset', { 'aria-label': 'mode' }, el('label', {}, this.modeInputs[0], ' Chat'), el('label', {}, this.modeInputs[1], ' Draw'));
    const num = (name, label, value, step) => {
      const i = el('input', { type: 'number', name, value, step, 'aria-label': label });
      return [el('label', {}, label, i), i];
    };
    const s = {};
    const fields = [
      ['temperature', 'Temperature', defaults.temperature, 0.05],
      ['topP', 'Top-p', defaults.topP, 0.05],
      ['maxTokens', 'Max tokens', defaults.maxTokens, 1],
      ['seed', 'Chat seed', defaults.seed, 1],
      ['steps', 'Steps', defaults.steps, 1],
      ['cfg', 'CFG weight', defaults.cfg, 0.5],
      ['imageSeed', 'Image seed', defaults.imageSeed, 1],
      ['count', 'Pictures', defaults.imageCount, 1],
    ].map(([n, l, v, st]) => {
      const [lab, inp] = num(n, l, v, st);
      s[n] = inp;
      return lab;
    });
    // The opt-in fast setting goes with every request (a reloaded worker needs no state).
    s.fast = el('input', { type: 'checkbox', name: 'fast', checked: this.hasAttribute('fast') });
    fields.push(el('label', { title: 'Keeps the model\'s attention memory in 16-bit floats: half the GPU memory per token of context, slightly faster replies on long chats; results differ very slightly from the exact mode.' }, s.fast, ' Fast (16-bit attention memory)'));
    this.settings = s;
    const storageLine = el('p', {});
    const storage = el('details', {}, el('summary', {}, 'Storage'), storageLine, el('button', { onclick: () => this.deleteModel() }, 'Delete the stored model'));
    storage.addEventListener('toggle', async () => {
      if (!storage.open) return;
      const st = await this.engine.storage();
      storageLine.textContent = `${mib(st.usage)} used of ${mib(st.quota)} available to this site; storage is ${st.persisted ? 'persistent' : 'best-effort (the browser may evict it)'}.`;
    });
    const composer = el(
      'div',
      { class: 'composer' },
      this.thumbs,
      el('div', { class: 'row' }, this.input),
      el('div', { class: 'row' }, modes, el('label', { class: 'btn', tabindex: 0, role: 'button', onkeydown: (e) => (e.key === 'Enter' || e.key === ' ') && file.click() }, 'Attach image', file), this.sendBtn, this.stopBtn),
      el('details', {}, el('summary', {}, 'Settings'), ...fields, el('button', { onclick: () => this.newChat() }, 'New conversation')),
      storage,
    );
    const ui = el('div', { class: 'wrap' }, log, composer);
    this.body.replaceWith(ui);
    this.body = ui;
    this.attributeChangedCallback();
    ui.addEventListener('dragover', (e) => {
      e.preventDefault();
      ui.classList.add('drop');
    });
    ui.addEventListener('dragleave', () => ui.classList.remove('drop'));
    ui.addEventListener('drop', (e) => {
      e.preventDefault();
      ui.classList.remove('drop');
      this.attach([...e.dataTransfer.files].filter((f) => f.type.startsWith('image/')));
    });
    this.restoring = this.restore();
    this.input.focus();
  }

  /** Shows the conversation: the one in memory (the UI was rebuilt) or the one stored. */
  async restore() {
    if (!this.messages.length && !this.drawings.length) {
      try {
        await this.saving;
        ({ messages: this.messages, drawings: this.drawings } = await loadConversation(this.conversationKey));
      } catch (e) {
        console.warn('janusflow: the stored conversation could not be read', e);
      }
    }
    // Drawings in their place among the messages.
    const drawn = (i) => this.drawings.filter((d) => d.after === i).forEach((d) => this.addDrawing(d));
    this.messages.forEach((m, i) => {
      drawn(i);
      this.addBubble(m);
    });
    drawn(this.messages.length);
    this.refreshActions();
    this.follow = true;
    this.stick();
  }

  /** Keeps the end of the log in view while following. */
  stick() {
    if (this.follow && this.log) this.log.scrollTop = this.log.scrollHeight;
  }

  /** Saves the conversation as it is now (saves run in order; a failure only loses persistence). */
  save() {
    const key = this.conversationKey;
    const snapshot = this.messages.map((m) => ({ ...m }));
    const drawings = this.drawings.map((d) => ({ ...d, images: [...d.images] }));
    this.saving = this.saving.then(() => saveConversation(key, snapshot, drawings)).catch((e) => console.warn('janusflow: the conversation could not be saved', e));
    return this.saving;
  }

  url(blob) {
    const u = URL.createObjectURL(blob);
    this.urls.push(u);
    return u;
  }

  attach(files) {
    for (const f of files) {
      this.pending.push(f);
      const url = this.url(f); // revoked with the others when the conversation is cleared
      const fig = el('figure', {}, el('img', { src: url, alt: `attached image ${f.name || ''}` }));
      fig.append(
        el('button', {
          'aria-label': 'remove image',
          onclick: () => {
            this.pending.splice(this.pending.indexOf(f), 1);
            fig.remove();
          },
        }, '×'),
      );
      this.thumbs.append(fig);
    }
    if (files.length && this.mode === 'draw') this.setAttribute('mode', 'chat');
  }

  /** A bubble that is not part of the conversation (a drawing's prompt). */
  bubble(role, text) {
    const b = el('div', { class: `msg ${role}` }, el('span', { class: 'text' }, text));
    this.log.append(b);
    return b;
  }

  /**
   * The bubble of a conversation message: a user's text and images with "Edit" (shown on the last
   * one), or a reply rendered as Markdown with "Copy" and "Regenerate" (on the last reply).
   */
  addBubble(m) {
    const b = el('div', { class: `msg ${m.role}` });
    for (const img of m.images || []) b.append(el('img', { src: this.url(img), alt: 'image sent with the message' }));
    if (m.role === 'assistant') {
      const md = el('div', { class: 'text md' });
      renderInto(md, m.content);
      const copy = el('button', { class: 'copy', 'aria-label': 'copy this reply', onclick: () => this.copy(b.message ? b.message.content : '', copy) }, 'Copy');
      b.append(md, el('div', { class: 'actions' }, copy, el('button', { class: 'regenerate', 'aria-label': 'regenerate this reply', onclick: () => this.regenerate() }, 'Regenerate')));
    } else {
      b.append(el('span', { class: 'text' }, m.content), el('div', { class: 'actions' }, el('button', { class: 'edit', 'aria-label': 'edit and resend this message', onclick: () => this.edit(b.message) }, 'Edit')));
    }
    this.bind(m, b);
    this.log.append(b);
    return b;
  }

  bind(m, b) {
    b.message = m;
    this.bubbles.set(m, b);
  }

  /** "Regenerate" only on the last reply, "Edit" only on the last user message; none while busy. */
  refreshActions() {
    const last = this.messages[this.messages.length - 1];
    const lastUser = this.messages.findLast((m) => m.role === 'user');
    for (const [m, b] of this.bubbles) {
      const regen = b.querySelector('.regenerate');
      if (regen) regen.hidden = m !== last || !!this.busy;
      const edit = b.querySelector('button.edit');
      if (edit) edit.hidden = m !== lastUser || !!this.busy;
    }
  }

  /** Copies a reply's Markdown text: the Clipboard API, else a selected textarea and execCommand. */
  async copy(text, button) {
    let ok = false;
    try {
      await navigator.clipboard.writeText(text);
      ok = true;
    } catch {
      const t = el('textarea', { class: 'sr', readonly: true, tabindex: -1, 'aria-hidden': 'true' });
      t.value = text;
      this.root.append(t);
      t.select();
      try {
        ok = document.execCommand('copy');
      } catch {
        ok = false;
      }
      t.remove();
      button.focus();
    }
    button.textContent = ok ? 'Copied' : 'Copy failed';
    this.setStatus(ok ? 'reply copied to the clipboard' : 'the browser did not allow copying');
    setTimeout(() => (button.textContent = 'Copy'), 1500);
  }

  setBusy(on) {
    this.sendBtn.disabled = on;
    this.stopBtn.disabled = !on;
    this.refreshActions();
  }

  num(name) {
    // An emptied field means the default (Number('') would be 0: greedy, or a refused request).
    const raw = this.settings[name].value.trim();
    const v = Number(raw);
    return raw !== '' && Number.isFinite(v) ? v : defaults[name];
  }

  async send() {
    await this.restoring;
    const text = this.input.value.trim();
    if (this.busy || (!text && !this.pending.length)) return;
    this.input.value = '';
    this.follow = true;
    if (this.mode === 'draw') return this.draw(text);
    const images = this.pending.splice(0);
    this.thumbs.replaceChildren();
    const m = { role: 'user', content: text, images };
    this.messages.push(m);
    this.addBubble(m);
    this.regens = 0;
    return this.reply();
  }

  /**
   * Answers the conversation's last user message into `bubble` (a new one by default), rendering
   * the Markdown as it streams (at most once a frame). A failed turn leaves the conversation
   * without its user message, as if it had not been sent, and shows the error in its place.
   */
  async reply(bubble = null) {
    const conv = this.messages;
    const m = { role: 'assistant', content: '' };
    const b = bubble || this.addBubble(m);
    const md = b.querySelector('.md');
    b.classList.remove('error');
    this.bind(m, b);
    let text = '';
    let frame = 0;
    const paint = () => {
      frame = 0;
      renderInto(md, text);
    };
    this.busy = new AbortController();
    this.setBusy(true);
    try {
      const reply = await this.withRecovery(() => {
        // A retry after a recovery answers from the start again.
        text = '';
        renderInto(md, '');
        return this.engine.chat(conv, {
          temperature: this.num('temperature'),
          topP: this.num('topP'),
          maxTokens: this.num('maxTokens'),
          seed: this.num('seed') + this.regens,
          fast: this.settings.fast.checked,
          signal: this.busy.signal,
          ontoken: (t) => {
            text += t;
            if (!frame) frame = requestAnimationFrame(paint);
          },
        });
      }, '');
      cancelAnimationFrame(frame);
      if (conv !== this.messages) return; // "New conversation" while it ran
      m.content = reply;
      renderInto(md, reply);
      conv.push(m);
      this.emit('reply', { text: reply, finish: this.engine.lastReply && this.engine.lastReply.finish });
    } catch (e) {
      cancelAnimationFrame(frame);
      if (conv !== this.messages) return;
      this.bubbles.delete(m);
      const user = conv.pop();
      if (user) this.bubbles.delete(user);
      md.replaceChildren(`⚠ ${e.message}`);
      b.classList.add('error');
      b.querySelector('.actions').remove();
    } finally {
      this.busy = null;
      this.setBusy(false);
    }
    this.save();
  }

  /** Answers the last user message again (with the next seed), in place of the last reply. */
  async regenerate() {
    const last = this.messages[this.messages.length - 1];
    if (this.busy || !last || last.role !== 'assistant') return;
    this.messages.pop();
    const b = this.bubbles.get(last);
    this.bubbles.delete(last);
    this.regens++;
    return this.reply(b);
  }

  /** Edits the last user message in its bubble; "Send" drops the replies after it and answers again. */
  edit(m) {
    const b = this.bubbles.get(m);
    if (this.busy || !b || b.querySelector('textarea')) return;
    const text = b.querySelector('.text');
    const actions = b.querySelector('.actions');
    const area = el('textarea', { 'aria-label': 'edit the message', rows: 3 });
    area.value = m.content;
    const close = () => {
      form.remove();
      text.hidden = actions.hidden = false;
    };
    const submit = async () => {
      const value = area.value.trim();
      const i = this.messages.indexOf(m);
      if (this.busy || i === -1 || (!value && !(m.images || []).length)) return;
      close();
      for (const later of this.messages.splice(i + 1)) {
        const lb = this.bubbles.get(later);
        if (lb) lb.remove();
        this.bubbles.delete(later);
      }
      // Drawings made after the edited message go with the replies they followed.
      for (const d of this.drawings.filter((x) => x.after > i + 1)) for (const n of this.drawingNodes.get(d) || []) n.remove();
      this.drawings = this.drawings.filter((x) => x.after <= i + 1);
      m.content = value;
      text.textContent = value;
      this.regens = 0;
      this.follow = true;
      await this.reply();
    };
    area.addEventListener('keydown', (e) => {
      if (e.key === 'Enter' && !e.shiftKey) {
        e.preventDefault();
        submit();
      } else if (e.key === 'Escape') {
        close();
      }
    });
    const form = el('div', { class: 'editing' }, area, el('div', { class: 'row actions' }, el('button', { class: 'send-edit', onclick: submit }, 'Send'), el('button', { class: 'cancel-edit', onclick: close }, 'Cancel')));
    text.hidden = actions.hidden = true;
    b.append(form);
    area.focus();
  }

  /** A picture's cell once drawn: the picture, its time, Download and "Ask about this image". */
  pictureCell(box, prompt, png, caption) {
    const url = this.url(png);
    box.replaceChildren(
      el('img', { src: url, alt: `generated image: ${prompt}` }),
      el('div', { class: 'steps' }, caption),
      el('div', { class: 'row' },
        el('a', { class: 'btn', href: url, download: 'janusflow.png' }, 'Download PNG'),
        el('button', { onclick: () => this.attach([new File([png], 'generated.png', { type: 'image/png' })]) }, 'Ask about this image')),
    );
  }

  /** A stored drawing, shown again after a reload: its prompt and its grid of pictures. */
  addDrawing(d) {
    const prompt = this.bubble('user', `Draw: ${d.prompt}`);
    const cells = d.images.map((png, i) => {
      const box = el('div', { class: 'result' });
      const s = d.seconds[i];
      this.pictureCell(box, d.prompt, png, Number.isFinite(s) ? `${d.steps} steps in ${s.toFixed(1)} s` : `${d.steps} steps`);
      return box;
    });
    const grid = el('div', { class: 'msg assistant batch' }, el('div', { class: `grid${cells.length === 1 ? ' single' : ''}` }, ...cells));
    this.log.append(grid);
    this.drawingNodes.set(d, [prompt, grid]);
  }

  async draw(prompt) {
    if (!prompt) return;
    const promptBubble = this.bubble('user', `Draw: ${prompt}`);
    const steps = this.num('steps');
    // Kept with the conversation (in its place in the log), saved as each picture finishes.
    const drawing = { prompt, after: this.messages.length, steps, seconds: [], images: [] };
    const generation = this.generation; // "New conversation" while it draws: not kept
    const count = Math.min(8, Math.max(1, Math.round(this.num('count')) || 1));
    const seed = this.num('imageSeed');
    // One cell per picture: progress, a step counter with the time left, the preview scaled up
    // smoothly to the final size, then the picture with its actions.
    const cells = Array.from({ length: count }, () => {
      const bar = el('progress', { max: steps, value: 0, 'aria-label': 'drawing progress' });
      const counter = el('div', { class: 'steps', 'aria-live': 'polite' }, 'waiting…');
      const canvas = el('canvas', { width: 48, height: 48, 'aria-label': 'preview of the picture forming' });
      return { box: el('div', { class: 'result' }, bar, counter, canvas), bar, counter, canvas, started: 0, firstDone: 0 };
    });
    const grid = el('div', { class: `grid${count === 1 ? ' single' : ''}` }, ...cells.map((c) => c.box));
    const msg = el('div', { class: 'msg assistant batch' }, grid);
    this.log.append(msg);
    this.drawingNodes.set(drawing, [promptBubble, msg]);
    const step = (c, { step, preview }) => {
      const now = performance.now();
      if (!c.started) c.started = now;
      c.bar.value = step;
      if (step === 1) c.firstDone = now;
      // Time left from the steps after the first (which also compiles the GPU pipelines).
      const per = step > 1 ? (now - c.firstDone) / (step - 1) : 0;
      const left = per ? ` · about ${Math.max(1, Math.round((per * (steps - step)) / 1000))} s left` : '';
      c.counter.textContent = `step ${step} of ${steps}${step < steps ? left : ' · decoding the picture…'}`;
      if (preview) {
        c.canvas.width = preview.width;
        c.canvas.height = preview.height;
        c.canvas.getContext('2d').putImageData(preview, 0, 0);
      }
    };
    const done = (c, png) => {
      this.emit('image', { prompt, png });
      const seconds = (performance.now() - c.started) / 1000;
      this.pictureCell(c.box, prompt, png, `${steps} steps in ${seconds.toFixed(1)} s`);
      // Pictures finish in order, so the kept ones are the first of the batch.
      drawing.images.push(png);
      drawing.seconds.push(seconds);
      if (generation !== this.generation) return;
      if (!this.drawings.includes(drawing)) this.drawings.push(drawing);
      this.save();
    };
    this.busy = new AbortController();
    this.setBusy(true);
    let next = 0; // pictures finished; after a lost device the batch goes on from there
    try {
      await this.withRecovery(() => {
        const base = next;
        return this.engine.generateBatch(prompt, {
          count: count - base,
          seed: seed + base,
          steps,
          cfg: this.num('cfg'),
          fast: this.settings.fast.checked,
          signal: this.busy.signal,
          onstep: (s) => step(cells[base + s.index], s),
          onimage: ({ index, png }) => {
            done(cells[base + index], png);
            next = base + index + 1;
          },
        });
      });
      for (const c of cells.slice(next)) c.box.replaceChildren('Stopped.');
    } catch (e) {
      for (const c of cells.slice(next)) c.box.replaceChildren();
      const c = cells[Math.min(next, count - 1)];
      c.box.textContent = `⚠ ${e.message}`;
      c.box.classList.add('error');
    } finally {
      this.busy = null;
      this.setBusy(false);
    }
  }

  /**
   * Runs `fn`; if the GPU device was lost or the engine crashed (every loss, whenever it
   * happens), waits for the engine to reload itself from IndexedDB and runs `fn` once more. The
   * conversation lives here, in `this.messages`, so nothing of it is lost. `stopped` is the
   * result when Stop is pressed while the engine reloads.
   */
  async withRecovery(fn, stopped) {
    try {
      return await fn();
    } catch (e) {
      if (e.kind !== KIND.deviceLost && e.kind !== KIND.crashed) throw e;
      if (this.busy && this.busy.signal.aborted) throw e;
      await this.engine.whenReady();
      // Stop pressed while the engine reloaded: a stop before the first token, not an error.
      if (this.busy && this.busy.signal.aborted) return stopped;
      return fn();
    }
  }

  stop() {
    if (this.busy) this.busy.abort();
  }

  /** Clears the conversation, on screen and in storage. */
  async newChat() {
    this.stop();
    this.messages = [];
    this.drawings = [];
    this.generation++;
    this.bubbles.clear();
    this.log.replaceChildren();
    for (const u of this.urls.splice(0)) URL.revokeObjectURL(u);
    this.regens = 0;
    this.follow = true;
    const key = this.conversationKey;
    this.saving = this.saving.then(() => clearConversation(key)).catch((e) => console.warn('janusflow: the stored conversation could not be cleared', e));
    await Promise.all([this.engine.reset(), this.saving]);
  }

  async deleteModel() {
    if (!confirm('Delete the stored model from this browser? It will be downloaded again next time.')) return;
    try {
      await this.engine.delete();
    } catch (e) {
      this.setStatus(`could not delete the stored model: ${e.message}`);
      return;
    }
    this.engine.terminate();
    this.engine = null;
    this.start();
  }
}

if (!customElements.get('janus-flow')) customElements.define('janus-flow', JanusFlowElement);
export { JanusFlowElement };
