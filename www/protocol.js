// The one definition of the page ↔ worker protocol (janus.js talks, worker.js answers) and of
// the error kinds both sides hand to callers. Requests: {id, op, ...args}; replies and events:
// {id, type, ...payload}. Events without a request ({id: null}) report the worker's own state.

/** Operations the worker runs, one at a time, in the order they arrive. */
export const OP = Object.freeze({
  adapter: 'adapter',
  load: 'load',
  chat: 'chat',
  generate: 'generate',
  reset: 'reset',
  unload: 'unload',
  delete: 'delete',
  describe: 'describe',
  storage: 'storage',
  /** Test hook (queued like the work it checks): see janus.js debugSubgroupCheck. */
  debugSubgroupCheck: 'debugSubgroupCheck',
});

/**
 * Operations handled at once, even while another one runs: Stop, and the test hooks that break
 * the engine on purpose or switch its kernels (named debug* so nobody mistakes them for API).
 */
export const URGENT = Object.freeze({
  cancel: 'cancel',
  debugLoseDevice: 'debugLoseDevice',
  debugPanic: 'debugPanic',
  debugSubgroupReductions: 'debugSubgroupReductions',
  debugInfo: 'debugInfo',
  debugKernelShapes: 'debugKernelShapes',
});

/** Message types from the worker. */
export const MSG = Object.freeze({
  progress: 'progress',
  token: 'token',
  step: 'step',
  result: 'result',
  error: 'error',
  /** The wasm instance trapped (a Rust panic): the worker is unusable and must be replaced. */
  crashed: 'crashed',
  /** The engine's GPU device was lost: the engine must be loaded again on a fresh device. */
  lost: 'lost',
});

/**
 * Error kinds (`error.kind`). The engine's own (from Rust): webgpu, device-lost, out-of-memory,
 * limits, bad-weights, bad-input, cancelled, internal. From the JS side: network, quota, storage
 * (IndexedDB failed otherwise), corrupt (a stored shard no longer matches its hash), crashed
 * (the worker died; it is replaced), config (a bad argument to this API).
 */
export const KIND = Object.freeze({
  webgpu: 'webgpu',
  deviceLost: 'device-lost',
  outOfMemory: 'out-of-memory',
  limits: 'limits',
  badWeights: 'bad-weights',
  badInput: 'bad-input',
  cancelled: 'cancelled',
  internal: 'internal',
  network: 'network',
  quota: 'quota',
  storage: 'storage',
  corrupt: 'corrupt',
  crashed: 'crashed',
  config: 'config',
});

/** An Error with a kind (what the caller can do about it depends on the kind, never on the text). */
export function kindError(message, kind, extra) {
  return Object.assign(new Error(message), { kind }, extra);
}
