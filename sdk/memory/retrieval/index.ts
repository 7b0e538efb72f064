/** Retrieval for an agent's memory: BM25 and embeddings fused by reciprocal rank, privacy-filtered first. */
export { Bm25Index, DEFAULT_BM25, type Bm25Params, type Ranking } from "./bm25.js";
export { dateSpans, type DateSpan } from "./dates.js";
export { cosine, normalize, type Embedder } from "./embedder.js";
export { EmbedderMismatchError, EmbeddingShapeError, InvalidMemoryItemError, MemoryIndexFormatError, WordVectorsError } from "./errors.js";
export { loadLlamaEmbedder, type DisposableEmbedder, type LlamaEmbedderOptions } from "./llama-embedder.js";
export { MemoryIndex, type MemoryIndexOptions, type SearchHit, type SearchOptions } from "./memory-index.js";
export { STOP_WORDS, stem, terms, words } from "./tokenize.js";
export { VectorStore } from "./vector-store.js";
export { DEFAULT_WEIGHTS, memoryBoost, resolveWeights, type RetrievalWeights } from "./weights.js";
export {
  defaultWordVectorCacheDir,
  loadWordVectorEmbedder,
  loadWordVectors,
  type WordVectorOptions,
  type WordVectorProgress,
  type WordVectors,
} from "./word-vectors.js";
