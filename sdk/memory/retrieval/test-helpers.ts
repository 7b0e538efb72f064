/**
 * Test helpers for retrieval: a deterministic embedder (hashed bag of words, unit length) so that index tests
 * need no model, and a seeded generator.
 */
import { normalize, type Embedder } from "./embedder.js";
import { words } from "./tokenize.js";
export { prng } from "../../../test/helpers/prng.js";
import { prng } from "../../../test/helpers/prng.js";


function hash(word: string): number {
  let h = 2166136261;
  for (let i = 0; i < word.length; i++) h = Math.imul(h ^ word.charCodeAt(i), 16777619);
  return h >>> 0;
}

/** Each word adds a pseudo-random ±1 pattern on the dimensions its hash picks: shared words, closer vectors. */
export function hashEmbedder(id = "test-hash", dimensions = 32): Embedder & { calls: number } {
  const embedder = {
    id,
    dimensions,
    calls: 0,
    embed: async (texts: string[], o: { signal?: AbortSignal } = {}) => {
      o.signal?.throwIfAborted();
      embedder.calls++;
      return texts.map((text) => {
        const v = new Float32Array(dimensions);
        for (const word of words(text)) {
          const rand = prng(hash(word));
          for (let j = 0; j < dimensions; j++) v[j]! += rand() - 0.5;
        }
        return normalize(v);
      });
    },
  };
  return embedder;
}

/**
 * {@link hashEmbedder} with word vectors (each word's hashed pattern), so that query expansion runs; words
 * starting with "z" have none, as words outside a real vocabulary.
 */
export function hashWordEmbedder(id = "test-hash-words", dimensions = 32): Embedder & { calls: number } {
  const wordVector = (word: string): Float32Array | undefined => {
    if (word.startsWith("z")) return undefined;
    const v = new Float32Array(dimensions);
    const rand = prng(hash(word));
    for (let j = 0; j < dimensions; j++) v[j] = rand() - 0.5;
    return normalize(v);
  };
  return Object.assign(hashEmbedder(id, dimensions), { wordVector });
}
