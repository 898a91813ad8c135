// Types of janus-flow.js: the <janus-flow> element (importing the module defines it).
import type { ChatMessage, Engine, EngineInfo, Quant, Reply } from './janus.js';

/**
 * Attributes (all optional):
 * - `pack`: a weight pack URL; else the Hugging Face layout: `hf-model` and `hf-vae` (checkpoint
 *   folder URLs) or `hf-endpoint` (a Hub mirror); the official checkpoints by default.
 * - `quant`: the storage preset (q4a by default).
 * - `mode`: `chat` (default) or `draw`.
 * - `fast`: present to start with the Settings' fast option on (f16 KV caches: half their memory,
 *   a small measured loss of fidelity); the user can still switch it.
 * - `conversation`: the name the conversation is kept under in IndexedDB (`default`); elements
 *   with different names keep different conversations.
 */
export interface JanusFlowAttributes {
  pack?: string;
  'hf-model'?: string;
  'hf-vae'?: string;
  'hf-endpoint'?: string;
  quant?: Quant;
  mode?: 'chat' | 'draw';
  fast?: '' | 'fast';
  conversation?: string;
}

/** Events of the element; they bubble and cross shadow roots. */
export interface JanusFlowEventMap extends HTMLElementEventMap {
  /** The engine is loaded and the chat is shown. */
  ready: CustomEvent<EngineInfo>;
  /** A reply is complete (or was stopped: `finish` is 'cancelled'). */
  reply: CustomEvent<{ text: string; finish: Reply['finish'] | undefined }>;
  /** A drawing is complete. */
  image: CustomEvent<{ prompt: string; png: Blob }>;
}

export declare class JanusFlowElement extends HTMLElement {
  static readonly observedAttributes: string[];
  /** The conversation shown (and kept in IndexedDB). */
  messages: ChatMessage[];
  /** The running engine, once loaded (null before, and after the model is deleted). */
  engine: Engine | null;
  readonly mode: 'chat' | 'draw';
  readonly quant: Quant | undefined;
  readonly conversationKey: string;
  /** Stops the reply or drawing under way. */
  stop(): void;
  /** Clears the conversation, on screen and in storage. */
  newChat(): Promise<void>;
  addEventListener<K extends keyof JanusFlowEventMap>(type: K, listener: (this: JanusFlowElement, ev: JanusFlowEventMap[K]) => void, options?: boolean | AddEventListenerOptions): void;
  addEventListener(type: string, listener: EventListenerOrEventListenerObject, options?: boolean | AddEventListenerOptions): void;
  removeEventListener<K extends keyof JanusFlowEventMap>(type: K, listener: (this: JanusFlowElement, ev: JanusFlowEventMap[K]) => void, options?: boolean | EventListenerOptions): void;
  removeEventListener(type: string, listener: EventListenerOrEventListenerObject, options?: boolean | EventListenerOptions): void;
}

declare global {
  interface HTMLElementTagNameMap {
    'janus-flow': JanusFlowElement;
  }
}
