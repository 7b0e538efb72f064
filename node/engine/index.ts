// The provider's inference engine: base models (with the download host's reachability check and the generated
// tiny model), persona LoRA adapters, the context pool, persistent sessions with encrypted KV states, generation
// and admission control.
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
  type ResolveModelOptions,
} from "./models.js";
export {
  probeModelHost,
  modelProbeUrl,
  huggingFaceEndpoint,
  describeNetworkFailure,
  DEFAULT_PROBE_TIMEOUT_MS,
  ModelHostUnreachableError,
  ModelDownloadError,
  type ModelProbe,
  type ModelProbeOptions,
} from "./model-probe.js";
export { writeGguf, type GgufMetadata, type GgufTensor, type GgufWriteResult } from "./gguf-writer.js";
export {
  writeTinyLlama,
  writeLoraAdapter,
  TINY,
  WRITER_VERSION,
  type TinyLlamaSpec,
  type LoraAdapterSpec,
  type GgufFile,
} from "./tiny-llama.js";
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
