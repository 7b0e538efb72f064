import { describe, expect, it } from "vitest";
import { MEMORY_KINDS, mayHear, type Audience, type Listener, type MemoryItem } from "../types.js";
import { normalize, type Embedder } from "./embedder.js";
import { EmbedderMismatchError, InvalidMemoryItemError, MemoryIndexFormatError } from "./errors.js";
import { MemoryIndex, type SearchHit } from "./memory-index.js";
import { hashEmbedder, hashWordEmbedder, prng } from "./test-helpers.js";
import type { RetrievalWeights } from "./weights.js";
import { terms } from "./tokenize.js";

const DAY = 86_400_000;
const NOW = Date.UTC(2025, 5, 1);
const owner: Listener = { userId: "owner", isOwner: true };

function item(id: string, text: string, extra: Partial<MemoryItem> = {}): MemoryItem {
  return { id, kind: "turn", text, speaker: "alice", audience: "everyone", time: NOW - DAY, ...extra };
}

const ids = (hits: SearchHit[]): string[] => hits.map((h) => h.item.id);

describe("MemoryIndex", () => {
  it("finds memories by words and by meaning, and keeps size, get and items in step", async () => {
    const index = MemoryIndex.create({ embedder: hashEmbedder() });
    await index.upsert([
      item("a", "I signed up for a pottery class yesterday"),
      item("b", "We went camping at the beach with the kids"),
      item("c", "My sister is visiting from Sweden next week"),
    ]);
    expect(index.size).toBe(3);
    expect(index.get("b")?.text).toContain("camping");
    expect([...index.items()].map((i) => i.id).sort()).toEqual(["a", "b", "c"]);
    expect(ids(await index.search("pottery class", { k: 1, listener: owner, now: NOW }))).toEqual(["a"]);
    expect(ids(await index.searchBm25("camping beach", { k: 3, listener: owner }))[0]).toBe("b");
    expect(ids(await index.searchVector("sister visiting Sweden", { k: 1, listener: owner }))).toEqual(["c"]);
  });

  it("finds a memory by its context below its own text, and keeps, replaces and forgets the context with it", async () => {
    const index = MemoryIndex.create({ embedder: hashEmbedder() });
    await index.upsert([
      item("reply", "Yes, last Tuesday, it was great!", { context: "Did you finish the pottery class?" }),
      item("own", "The pottery class starts soon"),
      item("other", "Nothing much happened today"),
    ]);
    expect(ids(await index.searchBm25("pottery", { k: 3, listener: owner }))).toEqual(["own", "reply"]);
    const reloaded = MemoryIndex.deserialize(index.serialize(), { embedder: hashEmbedder() });
    expect(reloaded.get("reply")?.context).toBe("Did you finish the pottery class?");
    expect(ids(await reloaded.searchBm25("pottery", { k: 3, listener: owner }))).toEqual(["own", "reply"]);
    await index.upsert([item("reply", "Yes, last Tuesday, it was great!")]);
    expect(ids(await index.searchBm25("pottery", { k: 3, listener: owner }))).toEqual(["own"]);
    await index.upsert([item("reply", "Yes!", { context: "Did you go camping?" })]);
    index.remove(["reply"]);
    expect(ids(await index.searchBm25("camping", { k: 3, listener: owner }))).toEqual([]);
  });

  it("updates a context without embedding: setContext, and upsert of an unchanged text keeps its vector", async () => {
    const embedder = hashEmbedder();
    const index = MemoryIndex.create({ embedder });
    await index.upsert([item("q", "Did you finish the pottery class?"), item("a", "Yes, last Tuesday!"), item("x", "Nothing much")]);
    expect(embedder.calls).toBe(1);
    const vectorBefore = ids(await index.searchVector("pottery class", { k: 3, listener: owner }));
    const calls = embedder.calls; // searches embed their query
    expect(index.setContext("a", "Did you finish the pottery class?")).toBe(true);
    expect(index.setContext("missing", "anything")).toBe(false);
    await index.upsert([item("q", "Did you finish the pottery class?", { context: "Yes, last Tuesday!" })]);
    expect(embedder.calls).toBe(calls);
    expect(index.get("a")?.context).toBe("Did you finish the pottery class?");
    expect(ids(await index.searchBm25("pottery", { k: 3, listener: owner }))).toEqual(["q", "a"]);
    expect(ids(await index.searchBm25("tuesday", { k: 3, listener: owner }))).toEqual(["a", "q"]);
    expect(ids(await index.searchVector("pottery class", { k: 3, listener: owner }))).toEqual(vectorBefore);
    const reloaded = MemoryIndex.deserialize(index.serialize(), { embedder });
    expect(ids(await reloaded.searchBm25("pottery", { k: 3, listener: owner }))).toEqual(["q", "a"]);
    index.setContext("a", undefined);
    expect(index.get("a")?.context).toBeUndefined();
    expect(ids(await index.searchBm25("pottery", { k: 3, listener: owner }))).toEqual(["q"]);
    // A changed text is embedded again.
    const before = embedder.calls;
    await index.upsert([item("a", "Yes, on Tuesday")]);
    expect(embedder.calls).toBe(before + 1);
  });

  it("expands a query word with its nearest indexed word, below the asked words, only with word vectors", async () => {
    // Word vectors where "job" and "career" are close and everything else is far apart.
    const near: Record<string, number[]> = { job: [1, 0.2, 0, 0], career: [1, 0, 0, 0], garden: [0, 0, 1, 0] };
    const base = hashEmbedder("test-words", 4);
    const withWords = {
      ...base,
      wordVector: (word: string) => (near[word] === undefined ? undefined : normalize(new Float32Array(near[word]))),
    };
    const memories = [item("career", "Her career in nursing took off"), item("garden", "The garden is blooming"), item("job", "A job well done")];
    const index = MemoryIndex.create({ embedder: withWords });
    await index.upsert(memories);
    expect(ids(await index.searchBm25("job", { k: 3, listener: owner }))).toEqual(["job", "career"]);
    const plain = MemoryIndex.create({ embedder: base });
    await plain.upsert(memories);
    expect(ids(await plain.searchBm25("job", { k: 3, listener: owner }))).toEqual(["job"]);
    const off = MemoryIndex.create({ embedder: withWords, weights: { expansion: 0 } });
    await off.upsert(memories);
    expect(ids(await off.searchBm25("job", { k: 3, listener: owner }))).toEqual(["job"]);
    // Expansion reads the privacy mask like every ranking: a private memory is not reached through a neighbour.
    await index.upsert([item("career", "Her career in nursing took off", { audience: "speaker", speaker: "carol" })]);
    expect(ids(await index.searchBm25("job", { k: 3, listener: { userId: "bob", isOwner: false } }))).toEqual(["job"]);
  });

  it("ranks memories whose words (text or context) mean the query's words above equal keyword matches: the soft match", async () => {
    // "family" and "kids" are close; "outing" is its own word; others have no vector. Every text embeds the
    // same and expansion is off, so BM25 and the vector ranking tie everything and the soft match decides.
    const near: Record<string, number[]> = { family: [1, 0, 0, 0], kids: [0.95, 0.3, 0, 0], outing: [0, 0, 1, 0], downtown: [0, 0, 0, 1] };
    const embedder: Embedder = {
      id: "test-soft",
      dimensions: 4,
      embed: async (texts) => texts.map(() => normalize(new Float32Array([1, 1, 1, 1]))),
      wordVector: (word) => (near[word] === undefined ? undefined : normalize(new Float32Array(near[word]))),
    };
    const memories = [
      item("a-downtown", "outing downtown today"),
      item("b-kids", "outing kids today"),
      item("c-context", "outing tonight today", { context: "the kids came" }),
      item("d-private", "outing kids today", { audience: "speaker", speaker: "carol" }),
    ];
    const search = async (weights: Partial<RetrievalWeights>, listener: Listener = owner): Promise<string[]> => {
      const index = MemoryIndex.create({ embedder, weights: { expansion: 0, ...weights } });
      await index.upsert(memories.slice(0, 3));
      await index.upsert(memories.slice(3));
      return ids(await index.search("family outing", { k: 4, listener, now: NOW }));
    };
    const bob: Listener = { userId: "bob", isOwner: false };
    expect(await search({}, bob)).toEqual(["b-kids", "c-context", "a-downtown"]);
    // Off, the tie goes to the id order.
    expect(await search({ softMatch: 0 }, bob)).toEqual(["a-downtown", "b-kids", "c-context"]);
    // It only reorders what the listener may hear.
    expect((await search({}, { userId: "carol", isOwner: false })).slice(0, 2).sort()).toEqual(["b-kids", "d-private"]);
  });

  it("replaces a memory with the same id and forgets removed ones", async () => {
    const index = MemoryIndex.create({ embedder: hashEmbedder() });
    await index.upsert([item("a", "my favourite colour is blue"), item("b", "the weather is nice")]);
    await index.upsert([item("a", "my favourite colour is green")]);
    expect(index.size).toBe(2);
    expect(ids(await index.searchBm25("blue", { k: 5, listener: owner }))).toEqual([]);
    expect(ids(await index.search("green colour", { k: 1, listener: owner, now: NOW }))).toEqual(["a"]);
    index.remove(["a", "missing"]);
    expect(index.size).toBe(1);
    expect(index.get("a")).toBeUndefined();
    expect(ids(await index.search("green colour", { k: 5, listener: owner, now: NOW }))).not.toContain("a");
    expect(ids(await index.searchVector("favourite colour green", { k: 5, listener: owner }))).not.toContain("a");
  });

  // Ties at a ranking's cut-off go to the lower slot, which depends on history: k and depth here cover everything.
  it("incremental upserts and removes answer like a fresh build of the survivors", async () => {
    const rand = prng(21);
    const vocab = "dog cat beach pottery sister sweden camping book painting music coffee garden hiking adoption".split(" ");
    const text = (): string => Array.from({ length: 4 + Math.floor(rand() * 6) }, () => vocab[Math.floor(rand() * vocab.length)]).join(" ");
    const embedder = hashEmbedder();
    const weights = { candidates: 500 };
    const incremental = MemoryIndex.create({ embedder, weights });
    const live = new Map<string, MemoryItem>();
    for (let round = 0; round < 40; round++) {
      const batch = Array.from({ length: 10 }, () => item(`m${Math.floor(rand() * 120)}`, text(), { time: NOW - Math.floor(rand() * 90) * DAY }));
      await incremental.upsert(batch);
      for (const m of batch) live.set(m.id, m);
      const gone = Array.from({ length: 4 }, () => `m${Math.floor(rand() * 120)}`);
      incremental.remove(gone);
      for (const id of gone) live.delete(id);
    }
    const fresh = MemoryIndex.create({ embedder, weights });
    await fresh.upsert([...live.values()]);
    expect(incremental.size).toBe(live.size);
    for (let q = 0; q < 20; q++) {
      const query = text();
      const o = { k: 500, listener: owner, now: NOW };
      const round6 = (hits: SearchHit[]) => hits.map((h) => [h.item.id, Number(h.score.toFixed(6))]);
      expect(round6(await incremental.search(query, o))).toEqual(round6(await fresh.search(query, o)));
      expect(round6(await incremental.searchBm25(query, o))).toEqual(round6(await fresh.searchBm25(query, o)));
      expect(round6(await incremental.searchVector(query, o))).toEqual(round6(await fresh.searchVector(query, o)));
    }
  });

  it("ranks a topic summary above a segment summary that matched equally, and distilled kinds above turns", async () => {
    const index = MemoryIndex.create({ embedder: hashEmbedder() });
    const text = "alice adopted a cat named Miso";
    await index.upsert([
      item("seg", text, { kind: "segment-summary" }),
      item("topic", text, { kind: "topic-summary" }),
      item("turn", text, { kind: "turn" }),
    ]);
    expect(ids(await index.search("cat Miso", { k: 3, listener: owner, now: NOW }))).toEqual(["topic", "seg", "turn"]);
    expect(ids(await index.search("cat Miso", { k: 3, listener: owner, now: NOW, kinds: ["turn", "segment-summary"] }))).toEqual(["seg", "turn"]);
  });

  it("prefers recent memories on a tie, relative to `now`", async () => {
    const index = MemoryIndex.create({ embedder: hashEmbedder() });
    await index.upsert([item("old", "we talked about the garden", { time: NOW - 300 * DAY }), item("new", "we talked about the garden", { time: NOW - DAY })]);
    expect(ids(await index.search("garden", { k: 2, listener: owner, now: NOW }))).toEqual(["new", "old"]);
    // Seen from a year before, both are in the future and count as new; then the id order breaks the tie.
    const hits = await index.search("garden", { k: 2, listener: owner, now: NOW - 400 * DAY });
    expect(hits[0]!.score).toBeCloseTo(hits[1]!.score, 12);
  });

  it("puts the listener's own memories first on a tie, then those of a speaker the query names", async () => {
    const index = MemoryIndex.create({ embedder: hashEmbedder() });
    await index.upsert([
      item("bob", "my dog is called Rex", { speaker: "bob" }),
      item("carol", "my dog is called Rex", { speaker: "carol" }),
    ]);
    expect(ids(await index.search("dog Rex", { k: 2, listener: { userId: "carol", isOwner: false }, now: NOW }))).toEqual(["carol", "bob"]);
    expect(ids(await index.search("dog Rex", { k: 2, listener: { userId: "bob", isOwner: false }, now: NOW }))).toEqual(["bob", "carol"]);
    expect(ids(await index.search("what is Carol's dog called?", { k: 2, listener: owner, now: NOW }))[0]).toBe("carol");
  });

  it("puts memories from a date the query names first, from a day before to three days after it", async () => {
    const march10 = Date.UTC(2025, 2, 10, 15);
    const index = MemoryIndex.create({ embedder: hashEmbedder() });
    // Same words: recency favours "a-recent", and so does the id order on a tie.
    await index.upsert([
      item("a-recent", "we went to the beach", { time: Date.UTC(2025, 3, 20) }),
      item("b-told-later", "we went to the beach", { time: march10 + 2 * DAY }),
      item("c-too-late", "we went to the beach", { time: march10 + 5 * DAY }),
      item("d-day", "we went to the beach", { time: march10 }),
    ]);
    const at = async (query: string, index_ = index): Promise<string[]> => ids(await index_.search(query, { k: 4, listener: owner, now: NOW }));
    expect((await at("the beach on 10 March, 2025")).slice(0, 2).sort()).toEqual(["b-told-later", "d-day"]);
    expect((await at("the beach on 10 March, 2025"))[2]).toBe("a-recent");
    expect((await at("beach in March 2025")).slice(0, 3).sort()).toEqual(["b-told-later", "c-too-late", "d-day"]);
    // Without a year: the latest March not after `now`.
    expect((await at("beach in March"))[3]).toBe("a-recent");
    expect(await at("beach")).toEqual(["a-recent", "c-too-late", "b-told-later", "d-day"]);
    const off = MemoryIndex.create({ embedder: hashEmbedder(), weights: { date: 1 } });
    await off.upsert([...index.items()]);
    expect(await at("the beach on 10 March, 2025", off)).toEqual(["a-recent", "c-too-late", "b-told-later", "d-day"]);
    // Only the hybrid weighs dates; the single-method rankings stay raw.
    expect(ids(await index.searchBm25("the beach on 10 March, 2025", { k: 4, listener: owner }))).toEqual(ids(await off.searchBm25("the beach on 10 March, 2025", { k: 4, listener: owner })));
  });

  it("weighs importance", async () => {
    const index = MemoryIndex.create({ embedder: hashEmbedder() });
    await index.upsert([item("low", "allergic to peanuts", { importance: 0 }), item("high", "allergic to peanuts", { importance: 1 })]);
    expect(ids(await index.search("peanuts", { k: 2, listener: owner, now: NOW }))).toEqual(["high", "low"]);
  });

  it("never returns a memory the listener may not hear (random data, every method)", async () => {
    const rand = prng(99);
    const users = ["alice", "bob", "carol", "owner"];
    const audiences: Audience[] = ["everyone", "speaker", "owner"];
    const vocab = "secret plan dog hospital tomorrow birthday gift money trip paris sister job".split(" ");
    const text = (): string => Array.from({ length: 3 + Math.floor(rand() * 5) }, () => vocab[Math.floor(rand() * vocab.length)]).join(" ");
    const index = MemoryIndex.create({ embedder: hashEmbedder() });
    const all: MemoryItem[] = [];
    for (let i = 0; i < 400; i++) {
      all.push({
        id: `m${i}`,
        kind: MEMORY_KINDS[Math.floor(rand() * MEMORY_KINDS.length)]!,
        text: text(),
        speaker: users[Math.floor(rand() * users.length)]!,
        audience: audiences[Math.floor(rand() * audiences.length)]!,
        time: NOW - Math.floor(rand() * 100) * DAY,
        importance: rand(),
      });
    }
    await index.upsert(all);
    index.remove(all.filter(() => rand() < 0.1).map((m) => m.id));
    let checked = 0;
    for (let q = 0; q < 200; q++) {
      const listener: Listener = { userId: users[Math.floor(rand() * users.length)]!, isOwner: rand() < 0.3 };
      const o = { k: 1 + Math.floor(rand() * 50), listener, now: NOW };
      const query = text();
      // The mask itself, not only the final mayHear guard: with room for every match, BM25 returns exactly the
      // matching memories the listener may hear (a forbidden one let through would push one of them out).
      const queryTerms = new Set(terms(query));
      const hearable = [...index.items()].filter((m) => mayHear(m, listener) && terms(m.text).some((t) => queryTerms.has(t)));
      const exact = await index.searchBm25(query, { ...o, k: hearable.length });
      expect(new Set(ids(exact))).toEqual(new Set(hearable.map((m) => m.id)));
      for (const hits of [await index.search(query, o), await index.searchBm25(query, o), await index.searchVector(query, o)]) {
        for (const hit of hits) {
          expect(mayHear(hit.item, listener)).toBe(true);
          checked++;
        }
      }
    }
    expect(checked).toBeGreaterThan(1000);
  });

  it("round-trips through serialize/deserialize with equal results", async () => {
    const rand = prng(5);
    const vocab = "dog cat beach pottery sister sweden camping book painting music".split(" ");
    const embedder = hashEmbedder();
    const index = MemoryIndex.create({ embedder, weights: { recencyFloor: 0.5 }, bm25: { k1: 0.9 } });
    await index.upsert(
      Array.from({ length: 200 }, (_, i) =>
        item(`m${i}`, Array.from({ length: 6 }, () => vocab[Math.floor(rand() * vocab.length)]).join(" "), {
          time: NOW - i * DAY,
          audience: i % 7 === 0 ? "speaker" : "everyone",
          speaker: i % 2 === 0 ? "alice" : "bob",
          sources: [`t${i}`],
        }),
      ),
    );
    index.remove(["m3", "m50"]);
    const bytes = index.serialize();
    const copy = MemoryIndex.deserialize(bytes, { embedder });
    expect(copy.size).toBe(index.size);
    expect(copy.get("m10")).toEqual(index.get("m10"));
    const o = { k: 20, listener: { userId: "bob", isOwner: false }, now: NOW };
    for (const query of ["dog beach", "sister in sweden", "painting music"]) {
      expect(await copy.search(query, o)).toEqual(await index.search(query, o));
      expect(await copy.searchBm25(query, o)).toEqual(await index.searchBm25(query, o));
    }
    // An unaligned copy of the bytes reads the same.
    const shifted = new Uint8Array(bytes.length + 1).subarray(1);
    shifted.set(bytes);
    expect(MemoryIndex.deserialize(shifted, { embedder }).size).toBe(index.size);
  });

  describe("saved indexes (format 2)", () => {
    const vocab = "dog cat beach pottery sister sweden camping book painting music zebra zinc career job puppy".split(" ");
    const speakers = ["alice", "bob", "carol"];
    const audiences: Audience[] = ["everyone", "speaker", "owner"];

    /** A random memory; some with context, importance, a topic and sources, emoji or a lone surrogate. */
    function randomItem(rand: () => number, id: string): MemoryItem {
      const sentence = (n: number): string => Array.from({ length: n }, () => vocab[Math.floor(rand() * vocab.length)]).join(" ");
      const extra: Partial<MemoryItem> = {
        speaker: speakers[Math.floor(rand() * speakers.length)]!,
        audience: audiences[Math.floor(rand() * audiences.length)]!,
        kind: MEMORY_KINDS[Math.floor(rand() * MEMORY_KINDS.length)]!,
        time: NOW - Math.floor(rand() * 100) * DAY,
      };
      if (rand() < 0.5) extra.context = sentence(1 + Math.floor(rand() * 8));
      if (rand() < 0.3) extra.importance = Math.round(rand() * 10) / 10;
      if (rand() < 0.1) Object.assign(extra, { topic: "pets", sources: [`t${id}`] });
      const r = rand();
      const tail = r < 0.05 ? " 🐶 café" : r < 0.08 ? " broken \ud800 text" : "";
      return item(id, sentence(1 + Math.floor(rand() * 10)) + tail, extra);
    }

    async function expectSameAnswers(a: MemoryIndex, b: MemoryIndex, rand: () => number): Promise<void> {
      expect(b.size).toBe(a.size);
      const byId = (index: MemoryIndex): MemoryItem[] => [...index.items()].sort((x, y) => (x.id < y.id ? -1 : 1));
      expect(byId(b)).toEqual(byId(a));
      const listeners: Listener[] = [owner, { userId: "alice", isOwner: false }, { userId: "bob", isOwner: false }, { userId: "nobody", isOwner: false }];
      for (let q = 0; q < 30; q++) {
        const query = Array.from({ length: 1 + Math.floor(rand() * 3) }, () => vocab[Math.floor(rand() * vocab.length)]).join(" ") + (q % 5 === 0 ? " alice" : "");
        const o = { k: 1 + Math.floor(rand() * 25), listener: listeners[q % listeners.length]!, now: NOW, ...(q % 7 === 3 && { kinds: ["turn" as const] }) };
        expect(await b.search(query, o)).toEqual(await a.search(query, o));
        expect(await b.searchBm25(query, o)).toEqual(await a.searchBm25(query, o));
        expect(await b.searchVector(query, o)).toEqual(await a.searchVector(query, o));
      }
    }

    async function churned(seed: number): Promise<{ index: MemoryIndex; embedder: ReturnType<typeof hashWordEmbedder>; rand: () => number }> {
      const rand = prng(seed);
      const embedder = hashWordEmbedder();
      const index = MemoryIndex.create({ embedder });
      await index.upsert(Array.from({ length: 300 }, (_, i) => randomItem(rand, `m${i}`)));
      index.remove(Array.from({ length: 300 }, (_, i) => `m${i}`).filter(() => rand() < 0.3));
      // Replacements in place and new memories filling some of the holes, the rest left as holes.
      await index.upsert(Array.from({ length: 40 }, (_, i) => randomItem(rand, rand() < 0.5 ? `m${Math.floor(rand() * 300)}` : `new${i}`)));
      index.setContext("new1", "sister camping");
      return { index, embedder, rand };
    }

    it("loads an index that answers, and changes, exactly as the saved one, holes and all", async () => {
      const { index, embedder, rand } = await churned(11);
      const bytes = index.serialize();
      expect(new DataView(bytes.buffer, bytes.byteOffset).getUint32(4, true)).toBe(2);
      const copy = MemoryIndex.deserialize(bytes, { embedder });
      await expectSameAnswers(index, copy, rand);
      // The same changes on both keep them equal: the free slots, postings and expansion terms came back as they were.
      const changes = Array.from({ length: 60 }, (_, i) => randomItem(rand, rand() < 0.5 ? `m${Math.floor(rand() * 300)}` : `later${i}`));
      const removed = Array.from({ length: 300 }, (_, i) => `m${i}`).filter(() => rand() < 0.2);
      for (const target of [index, copy]) {
        target.remove(removed);
        await target.upsert(changes);
      }
      await expectSameAnswers(index, copy, rand);
      // And saving the loaded copy gives the same bytes as saving the original.
      expect(copy.serialize()).toEqual(index.serialize());
    });

    it("still reads format 1 (memories and vectors, rebuilt on load)", async () => {
      const rand = prng(12);
      const embedder = hashWordEmbedder();
      const index = MemoryIndex.create({ embedder });
      const items = Array.from({ length: 120 }, (_, i) => randomItem(rand, `m${i}`));
      await index.upsert(items);
      const stored = [...index.items()];
      const header = new TextEncoder().encode(JSON.stringify({ embedder: embedder.id, dimensions: embedder.dimensions, options: {}, items: stored }));
      const vectorsAt = Math.ceil((12 + header.length) / 4) * 4;
      const bytes = new Uint8Array(vectorsAt + stored.length * embedder.dimensions * 4);
      const view = new DataView(bytes.buffer);
      view.setUint32(0, 0x49_4d_4d_53, true);
      view.setUint32(4, 1, true);
      view.setUint32(8, header.length, true);
      bytes.set(header, 12);
      const vectors = await embedder.embed(stored.map((m) => `${m.speaker}: ${m.text}`));
      vectors.forEach((v, i) => new Float32Array(bytes.buffer, vectorsAt + i * embedder.dimensions * 4, embedder.dimensions).set(v));
      await expectSameAnswers(index, MemoryIndex.deserialize(bytes, { embedder }), rand);
    });

    it("refuses truncated or altered bytes with MemoryIndexFormatError, never another failure", async () => {
      const { index, embedder, rand } = await churned(13);
      const bytes = index.serialize();
      const load = (b: Uint8Array): MemoryIndex => MemoryIndex.deserialize(b, { embedder });
      for (let length = 0; length < bytes.length; length += 1 + Math.floor(rand() * 97)) {
        expect(() => load(bytes.slice(0, length)), `truncated to ${length}`).toThrow(MemoryIndexFormatError);
      }
      expect(() => load(Uint8Array.from([...bytes, 0, 0, 0, 0, 0, 0, 0, 0]))).toThrow(MemoryIndexFormatError);
      // Altered header fields: the counts no longer match the tables, or point outside them.
      const headerLength = new DataView(bytes.buffer).getUint32(8, true);
      const header = JSON.parse(new TextDecoder().decode(bytes.subarray(12, 12 + headerLength))) as Record<string, unknown>;
      const withHeader = (change: (h: any) => void): Uint8Array => {
        const h = structuredClone(header) as any;
        change(h);
        const json = new TextEncoder().encode(JSON.stringify(h));
        const out = new Uint8Array(Math.ceil((12 + json.length) / 8) * 8 + (bytes.length - Math.ceil((12 + headerLength) / 8) * 8));
        out.set(bytes.subarray(0, 12));
        new DataView(out.buffer).setUint32(8, json.length, true);
        out.set(json, 12);
        out.set(bytes.subarray(Math.ceil((12 + headerLength) / 8) * 8), Math.ceil((12 + json.length) / 8) * 8);
        return out;
      };
      expect(load(withHeader(() => undefined)).size).toBe(index.size);
      const alterations: ((h: any) => void)[] = [
        (h) => (h.slotCount += 1),
        (h) => (h.slotCount = -8),
        (h) => (h.textBytes += 8),
        (h) => (h.fields[0].postings += 4),
        (h) => h.fields[1].terms.push("extra", "more"),
        (h) => (h.fields[0].terms[1] = h.fields[0].terms[0]),
        (h) => h.free.push(h.free[0]),
        (h) => h.free.pop(),
        (h) => (h.free[0] = 1e9),
        (h) => (h.speakers = ["alice"]),
        (h) => (h.speakers = [...h.speakers, h.speakers[0]]),
        (h) => (h.verbatim[0][0] = 0),
        (h) => (h.verbatim[0][1].importance = 7),
        (h) => h.verbatim.pop(),
        (h) => (h.expansion.words[0] = "zzz"),
        (h) => h.expansion.words.pop(),
        (h) => (h.fields = null),
        (h) => (h.options = 3),
      ];
      alterations.forEach((alter, i) => expect(() => load(withHeader(alter)), `alteration ${i}`).toThrow(MemoryIndexFormatError));
      // Random byte changes in the tables: refused, or (a vector, a time changed) loaded and searchable.
      const tablesAt = Math.ceil((12 + headerLength) / 8) * 8;
      let refused = 0;
      for (let trial = 0; trial < 400; trial++) {
        const altered = bytes.slice();
        const at = tablesAt + Math.floor(rand() * (bytes.length - tablesAt));
        altered[at] = altered[at]! ^ (1 << Math.floor(rand() * 8)) ^ (trial % 2 === 0 ? 0x80 : 0);
        let loaded: MemoryIndex;
        try {
          loaded = load(altered);
        } catch (err) {
          expect(err).toBeInstanceOf(MemoryIndexFormatError);
          refused++;
          continue;
        }
        await loaded.search("dog beach", { k: 5, listener: owner, now: NOW });
      }
      expect(refused).toBeGreaterThan(50);
    });
  });

  it("refuses another embedder's index and bytes that are not an index", async () => {
    const index = MemoryIndex.create({ embedder: hashEmbedder("space-a") });
    await index.upsert([item("a", "hello")]);
    const bytes = index.serialize();
    expect(() => MemoryIndex.deserialize(bytes, { embedder: hashEmbedder("space-b") })).toThrow(EmbedderMismatchError);
    expect(() => MemoryIndex.deserialize(bytes, { embedder: hashEmbedder("space-a", 16) })).toThrow(EmbedderMismatchError);
    expect(() => MemoryIndex.deserialize(bytes.subarray(0, bytes.length - 4), { embedder: hashEmbedder("space-a") })).toThrow(MemoryIndexFormatError);
    expect(() => MemoryIndex.deserialize(new TextEncoder().encode("not an index at all"), { embedder: hashEmbedder("space-a") })).toThrow(
      MemoryIndexFormatError,
    );
  });

  it("rejects malformed memories and leaves the index unchanged when embedding is aborted", async () => {
    const index = MemoryIndex.create({ embedder: hashEmbedder() });
    await expect(index.upsert([item("", "x")])).rejects.toThrow(InvalidMemoryItemError);
    await expect(index.upsert([{ ...item("a", "x"), audience: "nobody" as Audience }])).rejects.toThrow(InvalidMemoryItemError);
    await expect(index.upsert([item("a", "x", { importance: 2 })])).rejects.toThrow(InvalidMemoryItemError);
    const controller = new AbortController();
    controller.abort();
    await expect(index.upsert([item("a", "hello")], { signal: controller.signal })).rejects.toThrow();
    expect(index.size).toBe(0);
    await expect(index.search("hello", { k: 1, listener: owner, signal: controller.signal })).rejects.toThrow();
  });
});
