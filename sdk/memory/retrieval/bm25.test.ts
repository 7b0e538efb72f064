import { describe, expect, it } from "vitest";
import { Bm25Index, MinHeap } from "./bm25.js";
import { prng } from "./test-helpers.js";
import { stem, terms, words } from "./tokenize.js";

const all = (n: number): Uint8Array => new Uint8Array(n).fill(1);

describe("tokenizer", () => {
  it("lowercases, splits on Unicode letters, drops stop words and stems", () => {
    expect(words("Hey Mel's DOG, don't! Ünïcode café")).toEqual(["hey", "mel", "dog", "don't", "ünïcode", "café"]);
    expect(terms("Caroline went to the support groups")).toEqual(["carolin", "went", "support", "group"]);
    expect(stem("painting")).toBe(stem("paints"));
    expect(stem("painted")).toBe(stem("paint"));
    expect(stem("stories")).toBe("story");
    expect(stem("running")).toBe("run");
    expect(stem("falling")).toBe("fall");
  });
});

describe("Bm25Index", () => {
  it("ranks exact-term matches first, rarer terms higher", () => {
    const docs = ["the cat sat on the mat", "a dog barked at the mailman", "my dog loves the beach", "pottery class on friday"];
    const index = new Bm25Index();
    docs.forEach((d, i) => index.set(i, terms(d)));
    expect(Array.from(index.search(terms("pottery"), all(4), 10).slots)).toEqual([3]);
    const dog = index.search(terms("dog beach"), all(4), 10);
    expect(Array.from(dog.slots)).toEqual([2, 1]);
    expect(dog.scores[0]).toBeGreaterThan(dog.scores[1]!);
    expect(index.search(terms("unicorn"), all(4), 10).slots.length).toBe(0);
  });

  it("names each document's distinct terms by id, after changes and after a restore", () => {
    const index = new Bm25Index();
    index.set(0, terms("dog walks dog"));
    index.set(1, terms("cat naps"));
    const named = (i: Bm25Index, slot: number): string[] => Array.from(i.documentTerms(slot) ?? [], (id) => i.term(id)).sort();
    expect(named(index, 0)).toEqual(["dog", "walk"]);
    index.set(0, terms("cat walks"));
    index.delete(1);
    expect(named(index, 0)).toEqual(["cat", "walk"]);
    expect(index.documentTerms(1)).toBeUndefined();
    expect(index.termCount).toBe(4);
    const restored = Bm25Index.restore(index.params, index.snapshot(2));
    expect(named(restored, 0)).toEqual(["cat", "walk"]);
    expect(restored.termCount).toBe(4);
  });

  it("reads only allowed slots", () => {
    const index = new Bm25Index();
    index.set(0, terms("secret plan"));
    index.set(1, terms("public plan"));
    const mask = new Uint8Array([0, 1]);
    expect(Array.from(index.search(terms("secret plan"), mask, 10).slots)).toEqual([1]);
  });

  it("scores follow a length change that leaves the totals equal (searches between changes)", () => {
    const index = new Bm25Index();
    index.set(0, ["beach", "dog", "sun", "sand"]);
    index.set(1, ["beach"]);
    index.set(2, ["cat", "tree"]);
    index.search(["beach"], all(3), 3); // caches each slot's length normalisation
    // Same document count and total length as before, but slot 1 is now long and slot 0 short.
    index.set(0, ["beach"]);
    index.set(1, ["beach", "dog", "sun", "sand"]);
    const fresh = new Bm25Index();
    fresh.set(0, ["beach"]);
    fresh.set(1, ["beach", "dog", "sun", "sand"]);
    fresh.set(2, ["cat", "tree"]);
    const a = index.search(["beach"], all(3), 3);
    const b = fresh.search(["beach"], all(3), 3);
    expect(Array.from(a.slots)).toEqual([0, 1]);
    expect(Array.from(a.scores)).toEqual(Array.from(b.scores));
  });

  it("incremental set/delete equals a fresh build of the survivors", () => {
    const rand = prng(7);
    const vocab = Array.from({ length: 60 }, (_, i) => `w${i}`);
    const doc = (): string[] => Array.from({ length: 3 + Math.floor(rand() * 12) }, () => vocab[Math.floor(rand() * (rand() < 0.5 ? 8 : 60))]!);
    const incremental = new Bm25Index();
    const live = new Map<number, string[]>();
    for (let step = 0; step < 3000; step++) {
      const slot = Math.floor(rand() * 300);
      if (rand() < 0.3) {
        incremental.delete(slot);
        live.delete(slot);
      } else {
        const d = doc();
        incremental.set(slot, d);
        live.set(slot, d);
      }
    }
    const fresh = new Bm25Index();
    for (const [slot, d] of live) fresh.set(slot, d);
    expect(incremental.size).toBe(live.size);
    for (let q = 0; q < 50; q++) {
      const query = doc().slice(0, 3);
      const a = incremental.search(query, all(300), 300);
      const b = fresh.search(query, all(300), 300);
      const asMap = (r: { slots: Int32Array; scores: Float64Array }): Map<number, number> =>
        new Map(Array.from(r.slots, (s, i) => [s, Number(r.scores[i]!.toFixed(9))]));
      expect(asMap(a)).toEqual(asMap(b));
      for (const term of query) expect(incremental.documentFrequency(term)).toBe(fresh.documentFrequency(term));
    }
  });

  it("MinHeap keeps the best n, best first, ties to the lower slot", () => {
    const heap = new MinHeap(3);
    [5, 1, 9, 7, 9, 3].forEach((score, slot) => heap.offer(slot, score));
    const { slots, scores } = heap.drain();
    expect(Array.from(slots)).toEqual([2, 4, 3]);
    expect(Array.from(scores)).toEqual([9, 9, 7]);
  });
});
