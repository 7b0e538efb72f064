import { afterAll, describe, expect, it } from "vitest";
import { removeTinyFixtures, tinyFixtures } from "../../../test/fixtures/gguf/llama.js";
import { loadLlamaEmbedder } from "./llama-embedder.js";
import { MemoryIndex } from "./memory-index.js";

afterAll(async () => {
  await removeTinyFixtures();
});

// The tiny fixture is a random llama: its vectors mean nothing, so this checks shape and determinism only.
describe("loadLlamaEmbedder", () => {
  it("embeds through node-llama-cpp: one unit vector per text, of the model's size, the same every time", async () => {
    const { base } = await tinyFixtures();
    const embedder = await loadLlamaEmbedder({ modelPath: base.path, threads: 1 });
    try {
      expect(embedder.dimensions).toBe(64);
      expect(embedder.id).toMatch(/^llama:tiny\.gguf:\d+:64$/);
      const [a, b, a2] = await embedder.embed(["the river and the sea", "a little ship", "the river and the sea"]);
      expect(a!.length).toBe(64);
      expect(Math.hypot(...a!)).toBeCloseTo(1, 4);
      expect(Array.from(a2!)).toEqual(Array.from(a!));
      expect(Array.from(b!)).not.toEqual(Array.from(a!));
      const index = MemoryIndex.create({ embedder });
      await index.upsert([{ id: "x", kind: "turn", text: "the river and the sea", speaker: "u", audience: "everyone", time: 0 }]);
      expect((await index.searchVector("the river and the sea", { k: 1, listener: { userId: "u", isOwner: false } }))[0]?.item.id).toBe("x");
    } finally {
      await embedder.dispose();
    }
  });
});
