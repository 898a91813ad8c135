// Types of janus.js, the public module of JanusFlow Web (checked by `./build.sh types`, which
// compiles tests/types/ against this file and compares its exports with the module's).

/** What went wrong, as `error.kind`; what a caller can do about an error depends on this alone. */
export type ErrorKind =
  | 'webgpu'
  | 'device-lost'
  | 'out-of-memory'
  | 'limits'
  | 'bad-weights'
  | 'bad-input'
  | 'cancelled'
  | 'internal'
  | 'network'
  | 'quota'
  | 'storage'
  | 'corrupt'
  | 'crashed'
  | 'config';

/** The error kinds by name (`KIND.deviceLost === 'device-lost'`). */
export declare const KIND: Readonly<{
  webgpu: 'webgpu';
  deviceLost: 'device-lost';
  outOfMemory: 'out-of-memory';
  limits: 'limits';
  badWeights: 'bad-weights';
  badInput: 'bad-input';
  cancelled: 'cancelled';
  internal: 'internal';
  network: 'network';
  quota: 'quota';
  storage: 'storage';
  corrupt: 'corrupt';
  crashed: 'crashed';
  config: 'config';
}>;

/** Every error the API rejects with (engine, network and storage errors alike). */
export declare class JanusError extends Error {
  constructor(message: string, kind?: ErrorKind);
  readonly name: 'JanusError';
  kind: ErrorKind;
}

/** A weight pack made by `janusflow convert`: the folder URL holding its manifest.json. */
export interface PackSource {
  pack: string;
  /** Attempts per download before giving up (default 5). */
  retries?: number;
  /** Seconds without an answer or a byte before a download counts as stalled and is tried again
   * (default 30; the Hugging Face conversion's own downloads always use the default). */
  stallSeconds?: number;
}

/** Checkpoints in the Hugging Face layout, converted in the browser while they download. */
export interface HfSource {
  hf: {
    /** The JanusFlow checkpoint folder (…/resolve/main/). */
    model: string;
    /** The SDXL VAE folder; without it the engine answers chat but cannot draw. */
    vae?: string;
    /** Bytes per stored shard (default 32 MiB). */
    shardSize?: number;
    retries?: number;
    /** Conversion threads on first load (default: one per core but one, at least 2, at most 8);
     * each converts its own ranges of shards with its own download streams. */
    workers?: number;
  };
}

export type WeightSource = PackSource | HfSource;

/** Storage presets: 4-bit asymmetric groups (the default), 4-bit, 8-bit, half and full floats. */
export type Quant = 'q4a' | 'q4' | 'q8' | 'f16' | 'f32';

/** Progress of downloading, converting, verifying, uploading and compiling. */
export interface Progress {
  phase: 'download' | 'convert' | 'verify' | 'upload' | 'compile' | 'waiting' | (string & {});
  /** Bytes done and in all, while bytes are counted. */
  loaded?: number;
  total?: number;
  /** Steps done and in all, while steps are counted (uploading tensors). */
  step?: number;
  steps?: number;
  /** Bytes per second and seconds left, while downloading. */
  speed?: number;
  remaining?: number;
  /** What is being worked on, or the retry under way. */
  detail?: string;
}

export interface CreateOptions {
  /** Where the weights come from; `officialSource` by default. */
  source?: WeightSource;
  quant?: Quant;
  onprogress?: (p: Progress) => void;
}

/** The adapter the engine runs on. */
export interface AdapterSummary {
  name: string;
  backend: string;
  device_type: string;
  driver: string;
  features: { shader_f16: boolean; subgroups: boolean; subgroup_size: number | null };
  max_buffer_size: number;
  max_storage_buffer_binding_size: number;
  max_compute_workgroup_storage_size: number;
  max_compute_invocations_per_workgroup: number;
  max_storage_buffers_per_shader_stage: number;
}

/** What the subgroup self-check found (`EngineInfo.subgroupCheck`). */
export interface SubgroupCheck {
  /** The subgroup width the kernels were built for (null: only the 8-lane tile was checked). */
  width: number | null;
  /** Whether the kernels checked were those shaped for a GPU. */
  gpu_shapes: boolean;
  /** Each kernel with its largest difference from the tree path, relative to the result's size. */
  probes: { kernel: string; diff: number | null }[]; // null: not a finite number
  /** Every kernel agreed (within 1e-4); if not, subgroup operations are now off. */
  passed: boolean;
}

/** What the kernel-shape self-check found (`EngineInfo.shapeCheck`). */
export interface ShapeCheck {
  /** The subgroup width the GPU-shape kernels used (null: the workgroup tree). */
  width: number | null;
  probes: { kernel: string; diff: number | null }[];
  /** Every kernel agreed (within 1e-4); if not, the CPU kernel shapes are now used. */
  passed: boolean;
}

/** Facts about a loaded engine (`engine.info`). */
export interface EngineInfo {
  adapter: AdapterSummary;
  preset: Quant;
  /** Tokens the conversation may hold. */
  context: number;
  imageSize: number;
  latent: number[];
  hasVae: boolean;
  /** Whether kernel shapes were chosen for a GPU (false on a CPU rasteriser such as SwiftShader). */
  gpuTuning: boolean;
  /** The subgroup width the reductions (norms, attention, the GPU matrix–vector rows) use, or
   * null where they go through workgroup memory (no subgroups, subgroups of varying width, or a
   * failed subgroup self-check). */
  subgroupReductions: number | null;
  /** The subgroup self-check run before first use: each kernel that uses subgroup operations,
   * on small random inputs, against the portable workgroup-tree path on this GPU; where any
   * disagrees, subgroups are turned off (null: not run yet). */
  subgroupCheck: SubgroupCheck | null;
  /** On GPU kernel shapes, the self-check of each GPU-shape product and attention kernel against
   * its CPU-rasteriser counterpart on this GPU; where any disagrees, the CPU shapes are taken
   * (null: not run yet, or CPU shapes from the start). */
  shapeCheck: ShapeCheck | null;
  /** Bytes of weights on the GPU. */
  bytes: number;
  loadSeconds: number;
  pipelines: number;
  compileSeconds: number;
  /** Bytes downloaded by this load (0 when everything came from IndexedDB). */
  downloaded: number;
  /** Whether the stored copy was used because the network failed (the manifest could not be
   * fetched, or an update could not be downloaded; it resumes on a later load). */
  offline: boolean;
  wasmHeapBytes: number;
}

export interface ChatMessage {
  role: 'user' | 'assistant';
  content: string;
  /** Images sent with a user message (any format the browser decodes: PNG, JPEG, WebP, …). */
  images?: Blob[];
}

export interface ChatOptions {
  temperature?: number;
  topP?: number;
  topK?: number;
  seed?: number;
  maxTokens?: number;
  /**
   * The opt-in fast setting: the KV cache in f16 (half its memory, and half the bytes each new
   * token's attention reads), at a small measured loss of fidelity. Off by default (f32, exact).
   */
  fast?: boolean;
  /** Called with each piece of text as it is produced. */
  ontoken?: (text: string) => void;
  /** Aborting it stops this reply (the text so far is the result); a reply still waiting behind
   * another request is dropped (rejects with kind 'cancelled'), the other goes on. */
  signal?: AbortSignal;
}

/** The last chat's full result (`engine.lastReply`). */
export interface Reply {
  text: string;
  finish: 'stop' | 'length' | 'context' | 'cancelled';
  promptTokens: number;
  /** Prompt tokens whose state was kept from the previous turn. */
  reusedTokens: number;
  /** GPU memory held by the conversation's KV cache (half as much with `fast`). */
  cacheBytes: number;
}

export interface GenerateStep {
  step: number;
  steps: number;
  /** The picture so far, small, when available. */
  preview?: ImageData;
}

export interface GenerateOptions {
  steps?: number;
  /** Classifier-free guidance weight. */
  cfg?: number;
  seed?: number;
  /** The starting latent noise, [4, latent, latent] (see `engine.info.latent`), instead of the seeded one. */
  noise?: Float32Array;
  /** The opt-in fast setting (f16 KV caches), as for `chat`. */
  fast?: boolean;
  onstep?: (s: GenerateStep) => void;
  /** Aborting it stops this picture (the result is null); one still waiting behind another
   * request is dropped (rejects with kind 'cancelled'), the other goes on. */
  signal?: AbortSignal;
}

export interface BatchStep extends GenerateStep {
  /** Which picture of the batch (0-based). */
  index: number;
  count: number;
}

export interface BatchOptions extends Omit<GenerateOptions, 'noise' | 'onstep'> {
  /** Pictures to draw, 1–8 (default 4); picture i uses seed + i. */
  count?: number;
  onstep?: (s: BatchStep) => void;
  onimage?: (r: { index: number; png: Blob }) => void;
}

export interface StorageFacts {
  usage?: number;
  quota?: number;
  persisted: boolean;
  /** This source and preset in IndexedDB: complete, or the shards a stopped download kept. */
  stored: { bytes?: number; complete: boolean; shards?: number } | null;
}

export interface EngineEventMap {
  /** The worker crashed or the GPU device was lost; the engine is being loaded again. */
  restart: CustomEvent<{ kind: ErrorKind; message: string }>;
  /** An engine is loaded (after a restart too). */
  ready: CustomEvent<EngineInfo>;
}

/** The engine, running in a module worker. Made by `create()`. */
export interface Engine extends EventTarget {
  readonly source: WeightSource;
  readonly quant: Quant | undefined;
  readonly info: EngineInfo;
  /** The last chat's full result. */
  readonly lastReply?: Reply;
  /** Progress of reloading after a crash or a lost device. */
  onprogress: ((p: Progress) => void) | null;
  /**
   * Answers the last user message; resolves to the reply text. After a rejection of kind
   * 'device-lost' or 'crashed' the engine reloads itself and the same call can be made again.
   */
  chat(messages: ChatMessage[], options?: ChatOptions): Promise<string>;
  /** Draws a picture; resolves to a PNG, or null when stopped. */
  generate(prompt: string, options?: GenerateOptions): Promise<Blob | null>;
  /** `count` pictures with seeds seed, seed + 1, …; null for those not drawn when stopped. */
  generateBatch(prompt: string, options?: BatchOptions): Promise<(Blob | null)[]>;
  /** Stops the running chat or generation. */
  cancel(): void;
  /** Forgets the conversation's cached state (the next chat starts from scratch). */
  reset(): Promise<boolean>;
  /** Resolves when the engine is loaded (after a crash: loaded again). */
  whenReady(): Promise<EngineInfo>;
  storage(): Promise<StorageFacts>;
  /** Deletes the stored weights of this source and preset (and unloads the engine). */
  delete(): Promise<true>;
  /** Ends the worker; the engine cannot be used afterwards. */
  terminate(): void;
  addEventListener<K extends keyof EngineEventMap>(type: K, listener: (ev: EngineEventMap[K]) => void, options?: boolean | AddEventListenerOptions): void;
  addEventListener(type: string, listener: EventListenerOrEventListenerObject | null, options?: boolean | AddEventListenerOptions): void;
  removeEventListener<K extends keyof EngineEventMap>(type: K, listener: (ev: EngineEventMap[K]) => void, options?: boolean | EventListenerOptions): void;
  removeEventListener(type: string, listener: EventListenerOrEventListenerObject | null, options?: boolean | EventListenerOptions): void;
}

/** The official checkpoints (JanusFlow-1.3B and the SDXL VAE) on Hugging Face. */
export declare const officialSource: Readonly<{ hf: Readonly<{ model: string; vae: string }> }>;

/** The official checkpoints under another Hugging Face endpoint (a mirror such as https://hf-mirror.com). */
export declare function hfSource(endpoint: string): HfSource & { hf: { model: string; vae: string } };

/** Sampling and drawing defaults (the JanusFlow demo's). */
export declare const defaults: Readonly<{ temperature: number; topP: number; maxTokens: number; seed: number; steps: number; cfg: number; imageSeed: number; imageCount: number }>;

/** Whether this browser has WebGPU at all. */
export declare function hasWebGPU(): boolean;

/**
 * Downloads (or finds in IndexedDB) the weights and loads them onto the GPU. Rejects with kind
 * 'webgpu' where there is no WebGPU.
 */
export declare function create(options?: CreateOptions): Promise<Engine>;

/** Storage facts without loading a model. */
export declare function storageInfo(source?: WeightSource, options?: { quant?: Quant }): Promise<StorageFacts>;

/** What loading `source` would cost before anything is downloaded, in bytes. */
export declare function describe(source?: WeightSource, options?: { quant?: Quant }): Promise<{ download: number; store: number }>;

/** Deletes the stored weights of `source` and preset without loading them. */
export declare function deleteStored(source?: WeightSource, options?: { quant?: Quant }): Promise<true>;

/** Calls `cb` whenever a tab of this site stores or deletes a model; returns a function that stops it. */
export declare function watchStore(cb: (change: { type: 'stored' | 'deleted'; key: string }) => void): () => void;

/** The hosts a source's weights come from. */
export declare function sourceHosts(source?: WeightSource): string[];
