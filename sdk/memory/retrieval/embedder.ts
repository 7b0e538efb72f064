/** What turns texts into vectors for semantic search. */
export interface Embedder {
  /**
   * Names the vector space (model and weighting, with a version): an index saved with one embedder is refused
   * by another, since their vectors are not comparable.
   */
  readonly id: string;
  readonly dimensions: number;
  /** One unit-length (or zero, for a text with no known word) vector per text, in order. */
  embed(texts: string[], options?: { signal?: AbortSignal }): Promise<Float32Array[]>;
  /**
   * One word's own unit vector, for embedders made of word vectors (undefined for an unknown word). When
   * present, MemoryIndex expands a query's words with their nearest indexed words at a low BM25 weight.
   */
  wordVector?(word: string): Float32Array | undefined;
}

/**
 * Scales `vector` to unit length in place (a zero vector stays zero) and returns it.
 *
 * @example
 * normalize(new Float32Array([3, 4])) // [0.6, 0.8]
 */
export function normalize(vector: Float32Array): Float32Array {
  let sum = 0;
  for (let i = 0; i < vector.length; i++) sum += vector[i]! * vector[i]!;
  if (sum === 0) return vector;
  const inv = 1 / Math.sqrt(sum);
  for (let i = 0; i < vector.length; i++) vector[i]! *= inv;
  return vector;
}

/**
 * Cosine similarity of two vectors (0 when either is zero).
 *
 * @example
 * cosine(new Float32Array([1, 0]), new Float32Array([1, 1])) // ≈ 0.707
 */
export function cosine(a: Float32Array, b: Float32Array): number {
  let dot = 0;
  let na = 0;
  let nb = 0;
  for (let i = 0; i < a.length; i++) {
    dot += a[i]! * b[i]!;
    na += a[i]! * a[i]!;
    nb += b[i]! * b[i]!;
  }
  return na === 0 || nb === 0 ? 0 : dot / Math.sqrt(na * nb);
}
