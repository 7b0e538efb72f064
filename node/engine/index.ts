// The provider's inference engine: base models, persona LoRA adapters, the context pool, persistent
// sessions with encrypted KV states, generation and admission control.
export * from "./errors.js";
export { defaultThreads } from "./threads.js";
export { AdmissionQueue, type AdmissionOptions } from "./admission.js";
export { FileHashCache, sha256File, normalizeSha256 } from "./file-hash.js";
export {
  loadBaseModel,
  resolveModelFile,
  readBaseModelInfo,
  type LoadedModel,
  type BaseModelInfo,
  type LoadBaseModelOptions,
  type ModelLoadProgress,
} from "./models.js";
export {
  AdapterStore,
  folderAdapterSource,
  type AdapterSource,
  type AdapterStream,
  type AdapterLease,
  type AdapterRequest,
  type AdapterStoreOptions,
} from "./adapters.js";
export { ipfsAdapterSource, DEFAULT_IPFS_ADAPTER_TIMEOUT_MS, type IpfsAdapterSourceOptions } from "./ipfs-adapter-source.js";
export { SessionStateStore, bindingId, type StateBinding, type SessionStateStoreInit } from "./state-store.js";
export { ContextPool, type ContextAdapter, type ContextPoolOptions, type SequenceHolder } from "./context-pool.js";
export {
  generate,
  checkRequest,
  tokenizePrompt,
  type ChatMessage,
  type GenerateOptions,
  type GenerateResult,
  type GenerationChunk,
  type Prompt,
  type SamplingOptions,
  type StopReason,
  type Usage,
} from "./generate.js";
export {
  createEngine,
  InferenceEngine,
  type AdapterRef,
  type AdapterResolver,
  type EngineEvents,
  type EngineOptions,
  type OpenSessionOptions,
  type SessionInfo,
  type TurnResult,
} from "./engine.js";
