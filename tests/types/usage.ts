// A typed use of every export of www/janus.js and of the <janus-flow> element: `./build.sh types`
// compiles it (tsc --noEmit), so a declaration that does not fit the documented use fails there.
// Lines marked @ts-expect-error must fail to compile (the types are not `any`).
import { KIND, JanusError, create, defaults, deleteStored, describe, hasWebGPU, hfSource, officialSource, sourceHosts, storageInfo, watchStore } from '../../www/janus.js';
import type { ChatMessage, Engine, EngineInfo, ErrorKind, Progress, Reply, WeightSource } from '../../www/janus.js';
import { JanusFlowElement } from '../../www/janus-flow.js';

export async function use(image: Blob): Promise<void> {
  if (!hasWebGPU()) return;
  const source: WeightSource = { pack: 'https://cdn.example/janusflow-q4/' };
  const sizes: { download: number; store: number } = await describe(officialSource);
  const hosts: string[] = sourceHosts(hfSource('https://hf-mirror.com'));
  const facts = await storageInfo(source, { quant: 'q4a' });
  const complete: boolean | undefined = facts.stored?.complete;
  const stop = watchStore((c) => console.log(c.type === 'stored' || c.type === 'deleted', c.key));
  stop();
  let engine: Engine;
  try {
    engine = await create({ source, quant: 'q8', onprogress: (p: Progress) => console.log(p.phase, p.loaded, p.total, p.detail) });
  } catch (e) {
    if (e instanceof JanusError && e.kind === KIND.webgpu) return;
    throw e;
  }
  const info: EngineInfo = engine.info;
  console.log(info.adapter.name, info.preset, info.latent.length, sizes.download, hosts, complete);
  engine.addEventListener('restart', (ev) => console.log(ev.detail.kind satisfies ErrorKind, ev.detail.message));
  engine.addEventListener('ready', (ev) => console.log(ev.detail.loadSeconds));
  const controller = new AbortController();
  const messages: ChatMessage[] = [{ role: 'user', content: 'What is in this picture?', images: [image] }];
  const text: string = await engine.chat(messages, { temperature: defaults.temperature, topP: 0.95, seed: 1, maxTokens: 64, ontoken: (t: string) => console.log(t), signal: controller.signal });
  const last: Reply | undefined = engine.lastReply;
  console.log(text, last?.finish, last?.reusedTokens);
  const png: Blob | null = await engine.generate('a red fox in snow', { steps: defaults.steps, cfg: 2, seed: 3, onstep: ({ step, steps, preview }) => console.log(step, steps, preview?.width) });
  const batch: (Blob | null)[] = await engine.generateBatch('a red fox in snow', { count: defaults.imageCount, seed: 3, onstep: ({ index, count, step }) => console.log(index, count, step), onimage: ({ index, png }) => console.log(index, png.size) });
  // @ts-expect-error a batch draws from seeds, never from given noise
  await engine.generateBatch('x', { noise: new Float32Array(4) });
  console.log(png?.size, batch.length);
  engine.cancel();
  await engine.reset();
  await engine.storage();
  await engine.delete();
  engine.terminate();
  await deleteStored(source);
  // @ts-expect-error: not a preset
  await create({ quant: 'q3' });
  // @ts-expect-error: a source is {pack} or {hf}
  await create({ source: { url: 'https://cdn.example/' } });
  // @ts-expect-error: roles are user and assistant
  await engine.chat([{ role: 'system', content: 'x' }]);
}

export function element(): void {
  const app = document.createElement('janus-flow');
  app.setAttribute('pack', 'https://cdn.example/janusflow-q4/');
  const same: JanusFlowElement = app;
  same.addEventListener('reply', (ev) => console.log(ev.detail.text, ev.detail.finish));
  same.addEventListener('image', (ev) => console.log(ev.detail.prompt, ev.detail.png.size));
  same.addEventListener('ready', (ev) => console.log(ev.detail.adapter.name));
  console.log(same.messages.length, same.mode, same.engine?.info.preset);
  void same.newChat();
  document.body.append(app);
}
