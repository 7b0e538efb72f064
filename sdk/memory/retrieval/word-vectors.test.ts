import { mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { cosine } from "./embedder.js";
import { loadWordVectorEmbedder, loadWordVectors, type WordVectorProgress } from "./word-vectors.js";

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "soulmesh-wv-"));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** A package file in the real one's format: header, words by frequency, then vectors with norm and rank. */
async function fakePackage(path: string): Promise<Record<string, number[]>> {
  const vectors: Record<string, number[]> = {
    the: [0.5, -0.25, 1e-3, 2],
    dog: [0.1, 0.9, -0.3, 0.2],
    puppy: [0.12, 0.85, -0.28, 0.25],
    'say "hi"': [-1.5e-2, 0, 3.25, -0.75],
    stock: [-0.8, 0.1, 0.4, -0.6],
  };
  const words = Object.keys(vectors);
  const body = Object.fromEntries(words.map((w, rank) => [w, [...vectors[w]!, Math.hypot(...vectors[w]!), rank]]));
  await writeFile(path, JSON.stringify({ precision: 8, l2NormIndex: 4, wordIndex: 5, size: words.length, dimensions: 4, words, vectors: body, unkVector: [0, 0, 0, 0, 0, -1] }));
  return vectors;
}

describe("word vectors", () => {
  it("converts the package into a cache, reads it back, and rebuilds a damaged one", async () => {
    const source = join(dir, "fake.json");
    const cacheDir = join(dir, "cache");
    const expected = await fakePackage(source);
    const phases: WordVectorProgress["phase"][] = [];
    const onProgress = (p: WordVectorProgress): void => void phases.push(p.phase);
    const built = await loadWordVectors({ sourcePath: source, cacheDir, onProgress });
    expect(phases).toContain("converting");
    expect(phases).toContain("writing");
    for (const [word, vector] of Object.entries(expected)) {
      const r = built.rank.get(word)!;
      const decoded = Array.from(built.codes.subarray(r * 4, r * 4 + 4), (c) => c * built.scales[r]!);
      decoded.forEach((v, j) => expect(Math.abs(v - vector[j]!)).toBeLessThanOrEqual(Math.max(...vector.map(Math.abs)) / 254 + 1e-7));
    }
    expect(built.rank.get('say "hi"')).toBe(3);

    phases.length = 0;
    const cached = await loadWordVectors({ sourcePath: source, cacheDir, onProgress });
    expect(phases).toEqual(["loading"]);
    expect(cached.rank).toEqual(built.rank);
    expect(cached.codes).toEqual(built.codes);
    expect(cached.scales).toEqual(built.scales);

    const [file] = await readdir(cacheDir);
    const bytes = await readFile(join(cacheDir, file!));
    bytes[bytes.length - 3]! ^= 0xff;
    await writeFile(join(cacheDir, file!), bytes);
    phases.length = 0;
    const rebuilt = await loadWordVectors({ sourcePath: source, cacheDir, onProgress });
    expect(phases).toContain("converting");
    expect(rebuilt.codes).toEqual(built.codes);
    expect(await readdir(cacheDir)).toEqual([file]); // no temporary file left behind
  });

  it("embeds unknown-only text as a zero vector and known text at unit length", async () => {
    const source = join(dir, "fake2.json");
    await fakePackage(source);
    const embedder = await loadWordVectorEmbedder({ sourcePath: source, cacheDir: join(dir, "cache2") });
    const [none, dog] = await embedder.embed(["zzz qqq", "Dog!"]);
    expect(Array.from(none!).every((v) => v === 0)).toBe(true);
    expect(Math.hypot(...dog!)).toBeCloseTo(1, 5);
  });

  // Loads the real package: the first run converts it into the cache (≈ 5–6 s on 2 cores), later runs read
  // the 38 MB cache (≈ 0.4 s). Uses the default cache folder so that runs share it.
  it("gives related sentences a higher similarity than unrelated ones (real package)", async () => {
    const embedder = await loadWordVectorEmbedder();
    expect(embedder.dimensions).toBe(100);
    const [dog, puppy, stocks, rates, pottery, ceramics] = await embedder.embed([
      "I adopted a puppy from the shelter last week",
      "We got a new dog and he loves walks",
      "The stock market fell sharply on Tuesday",
      "Investors worry about rising interest rates",
      "I signed up for a pottery class",
      "She makes ceramic bowls and vases by hand",
    ]);
    expect(cosine(dog!, puppy!)).toBeGreaterThan(cosine(dog!, stocks!));
    expect(cosine(dog!, puppy!)).toBeGreaterThan(cosine(puppy!, rates!));
    expect(cosine(stocks!, rates!)).toBeGreaterThan(cosine(stocks!, pottery!));
    expect(cosine(pottery!, ceramics!)).toBeGreaterThan(cosine(pottery!, rates!));
    expect(cosine(pottery!, ceramics!)).toBeGreaterThan(cosine(ceramics!, dog!));
  });
});
