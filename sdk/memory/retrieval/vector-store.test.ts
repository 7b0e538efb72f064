import { describe, expect, it } from "vitest";
import { normalize } from "./embedder.js";
import { createInt8Kernel, simdAvailable } from "./simd.js";
import { prng } from "./test-helpers.js";
import { VectorStore } from "./vector-store.js";

function randomUnit(rand: () => number, d: number): Float32Array {
  return normalize(Float32Array.from({ length: d }, () => rand() * 2 - 1));
}

describe("SIMD kernel", () => {
  it("computes scaled int8 dot products exactly like the plain loop", () => {
    expect(simdAvailable()).toBe(true);
    const kernel = createInt8Kernel();
    const rows = 37;
    const stride = 48;
    kernel.memory.grow(1);
    const buffer = kernel.memory.buffer;
    const matrix = new Int8Array(buffer, 0, rows * stride);
    const query = new Int8Array(buffer, 2048, stride);
    const scales = new Float32Array(buffer, 4096, rows);
    const out = new Float32Array(buffer, 8192, rows);
    const rand = prng(3);
    for (let i = 0; i < matrix.length; i++) matrix[i] = Math.round(rand() * 254 - 127);
    for (let i = 0; i < stride; i++) query[i] = Math.round(rand() * 254 - 127);
    for (let r = 0; r < rows; r++) scales[r] = rand();
    kernel.scores(0, 2048, rows, stride, 4096, 8192);
    for (let r = 0; r < rows; r++) {
      let s = 0;
      for (let j = 0; j < stride; j++) s += matrix[r * stride + j]! * query[j]!;
      expect(out[r]).toBeCloseTo(Math.fround(s) * scales[r]!, 2);
    }
  });
});

describe("VectorStore", () => {
  it("returns the nearest rows by cosine, as brute force does, on random data", () => {
    const rand = prng(11);
    const d = 100;
    const n = 5000;
    const store = new VectorStore(d);
    const rows: Float32Array[] = [];
    for (let i = 0; i < n; i++) {
      rows.push(randomUnit(rand, d));
      store.set(i, rows[i]!);
    }
    const allowed = new Uint8Array(n).fill(1);
    for (let i = 0; i < n; i += 3) allowed[i] = 0;
    for (let q = 0; q < 30; q++) {
      const query = randomUnit(rand, d);
      const brute = rows
        .map((row, slot) => ({ slot, score: row.reduce((s, v, j) => s + v * query[j]!, 0) }))
        .filter(({ slot }) => allowed[slot] === 1)
        .sort((a, b) => b.score - a.score)
        .slice(0, 10);
      const { slots, scores } = store.search(query, allowed, 10);
      expect(Array.from(slots)).toEqual(brute.map((b) => b.slot));
      scores.forEach((s, i) => expect(s).toBeCloseTo(brute[i]!.score, 5));
    }
  });

  it("keeps rows across growth and forgets cleared ones", () => {
    const rand = prng(5);
    const store = new VectorStore(20);
    const first = randomUnit(rand, 20);
    store.set(0, first);
    for (let i = 1; i < 1000; i++) store.set(i, randomUnit(rand, 20));
    expect(Array.from(store.row(0))).toEqual(Array.from(first));
    const allowed = new Uint8Array(1000).fill(1);
    expect(store.search(first, allowed, 1).slots[0]).toBe(0);
    store.clear(0);
    allowed[0] = 0;
    expect(store.search(first, allowed, 1).slots[0]).not.toBe(0);
  });

  it("scores every row against a query, close to the exact cosine, and refuses a query of another size", () => {
    const rand = prng(6);
    const store = new VectorStore(50);
    expect(store.scores(randomUnit(rand, 50)).length).toBe(0);
    const rows = Array.from({ length: 300 }, () => randomUnit(rand, 50));
    rows.forEach((row, i) => store.set(i, row));
    const query = randomUnit(rand, 50);
    const scores = store.scores(query);
    expect(scores.length).toBe(300);
    rows.forEach((row, i) => {
      let exact = 0;
      for (let j = 0; j < 50; j++) exact += row[j]! * query[j]!;
      expect(Math.abs(scores[i]! - exact)).toBeLessThan(0.03);
    });
    // A copy: the next scan does not change it.
    const before = Array.from(scores);
    store.scores(randomUnit(rand, 50));
    expect(Array.from(scores)).toEqual(before);
    expect(() => store.scores(new Float32Array(49))).toThrow(RangeError);
  });
});
