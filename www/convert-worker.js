// A conversion thread of the first load (see hf.js, importHf): it converts the ranges of pack
// shards it is given with its own wasm instance, fetching their bytes itself, and hands each
// sealed shard back to be committed, waiting for that before it goes on (so its heap stays at
// about one shard, one row batch and one tensor's scales).
//
// Messages in: {type: 'run', job} (see hf.js, convertRange), {type: 'ack', id}.
// Messages out: {type: 'progress', done, total, tensor}, {type: 'sealed', id, shard: {file, data,
// checkpoint}} (data transferred), {type: 'done', entries}, {type: 'error', message, kind, retry};
// each with `heap`, the wasm memory's size in bytes.

import init from './pkg/janusflow.js';
import { convertRange } from './hf.js';

let wasm = null;
let nextId = 0;
const waiting = new Map();
const heap = () => (wasm ? wasm.memory.buffer.byteLength : 0);

self.onmessage = async ({ data: m }) => {
  if (m.type === 'ack') {
    const resolve = waiting.get(m.id);
    waiting.delete(m.id);
    if (resolve) resolve();
    return;
  }
  if (m.type !== 'run') return;
  try {
    wasm = wasm || (await init());
    const commit = (s) =>
      new Promise((resolve) => {
        const id = nextId++;
        waiting.set(id, resolve);
        const shard = { file: s.file, data: s.data, checkpoint: s.checkpoint };
        self.postMessage({ type: 'sealed', id, shard, heap: heap() }, [s.data.buffer]);
      });
    const progress = (done, total, tensor) => self.postMessage({ type: 'progress', done, total, tensor, heap: heap() });
    const entries = await convertRange(m.job, commit, progress);
    self.postMessage({ type: 'done', entries, heap: heap() });
  } catch (e) {
    self.postMessage({ type: 'error', message: String((e && e.message) || e), kind: e && e.kind, retry: !!(e && e.retry), heap: heap() });
  }
};
