import type { Embedder } from "../../sdk/memory/retrieval/embedder.js";

/**
 * Deterministic 16-dimension vectors from hashed words: enough for a memory index in tests that are about
 * something else; the real embedders are tested in sdk/memory/retrieval.
 *
 * @example
 * const memory = await AgentMemory.open({ vault, embedder: hashEmbedder, owner })
 */
export const hashEmbedder: Embedder = {
  id: "test-hash-v1",
  dimensions: 16,
  async embed(texts) {
    return texts.map((t) => {
      const v = new Float32Array(16);
      for (const w of t.toLowerCase().split(/\W+/)) if (w) v[[...w].reduce((h, c) => (h * 31 + c.charCodeAt(0)) % 16, 7)]! += 1;
      const norm = Math.hypot(...v) || 1;
      return v.map((x) => x / norm);
    });
  },
};
