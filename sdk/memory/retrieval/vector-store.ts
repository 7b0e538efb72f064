/**
 * Exact-after-rescoring cosine search over every stored vector. Vectors are kept twice: float32 rows (the
 * exact values, for rescoring and for saving) and int8 rows quantised per row inside WebAssembly memory, which
 * the SIMD kernel scans in about 1.2 ms per 100,000 × 100 on the reference machine. The `rescore` best int8
 * candidates are then scored again in float32, so the result equals brute-force float32 search unless the
 * true top-n falls outside the int8 top-`rescore`, which per-row quantisation of unit vectors makes rare (the
 * tests check it against brute force on random data).
 */
import { MinHeap, type Ranking } from "./bm25.js";
import { createInt8Kernel, simdAvailable, type Int8Kernel } from "./simd.js";

const PAGE = 65536;

export class VectorStore {
  /** Bytes per int8 row: the dimensions rounded up to the kernel's 16 lanes. */
  readonly stride: number;
  private capacity = 0;
  private exact = new Float32Array(0);
  private readonly kernel: Int8Kernel | undefined;
  /** Plain-JS fallback copies when the runtime lacks WebAssembly SIMD. */
  private codes = new Int8Array(0);
  private scales = new Float32Array(0);
  private outScratch = new Float32Array(0);
  // Byte offsets inside the kernel's memory.
  private codesAt = 0;
  private scalesAt = 0;
  private queryAt = 0;
  private outAt = 0;
  /** How many rows the kernel must scan: one past the highest slot ever set. */
  private rows = 0;

  constructor(readonly dimensions: number) {
    this.stride = Math.ceil(dimensions / 16) * 16;
    this.kernel = simdAvailable() ? createInt8Kernel() : undefined;
    this.reserve(64);
  }

  /** Stores `vector` (unit length expected) in row `slot`. */
  set(slot: number, vector: Float32Array): void {
    if (vector.length !== this.dimensions) throw new RangeError(`vector of ${vector.length} dimensions, expected ${this.dimensions}`);
    if (slot >= this.capacity) this.reserve(Math.max(slot + 1, this.capacity * 2));
    this.exact.set(vector, slot * this.dimensions);
    const { codes, scales } = this.views();
    this.quantize(slot, codes, scales);
    if (slot >= this.rows) this.rows = slot + 1;
  }

  /**
   * Rows [0, count)'s int8 codes (`stride` bytes a row) and scales, copied: saved beside the float32 rows so
   * that loading copies them instead of quantising every row again.
   *
   * @example
   * const { codes, scales } = store.quantized(slotCount)
   */
  quantized(count: number): { codes: Int8Array; scales: Float32Array } {
    if (count > this.capacity) this.reserve(count);
    const { codes, scales } = this.views();
    return { codes: codes.slice(0, count * this.stride), scales: scales.slice(0, count) };
  }

  /**
   * Stores many rows at once, as saved by {@link row} and {@link quantized}: for every slot with
   * `present[slot] === 1`, its float32 row from `rows` (slot-major) and its codes and scale; the others stay
   * empty. Equal to calling {@link set} for each, without quantising again.
   *
   * @example
   * store.load(savedRows, saved.codes, saved.scales, present)
   */
  load(rows: Float32Array, codes: Int8Array, scales: Float32Array, present: Uint8Array): void {
    const count = present.length;
    const d = this.dimensions;
    if (rows.length !== count * d || codes.length !== count * this.stride || scales.length !== count) {
      throw new RangeError(`${rows.length} floats, ${codes.length} codes and ${scales.length} scales for ${count} rows`);
    }
    if (count > this.capacity) this.reserve(count);
    this.exact.set(rows);
    const view = this.views();
    view.codes.set(codes);
    view.scales.set(scales);
    for (let slot = 0; slot < count; slot++) {
      if (present[slot] === 1) this.rows = Math.max(this.rows, slot + 1);
      else this.clear(slot);
    }
  }

  /** Row `slot`'s int8 codes and scale, from its float32 row (per-row scale: its largest magnitude is ±127). */
  private quantize(slot: number, codes: Int8Array, scales: Float32Array): void {
    const d = this.dimensions;
    const exact = this.exact;
    const from = slot * d;
    let max = 0;
    for (let j = 0; j < d; j++) max = Math.max(max, Math.abs(exact[from + j]!));
    const scale = max > 0 ? max / 127 : 0;
    const base = slot * this.stride;
    for (let j = 0; j < this.stride; j++) codes[base + j] = j < d && scale > 0 ? Math.round(exact[from + j]! / scale) : 0;
    scales[slot] = scale;
  }

  /** Zeroes row `slot` (its score becomes 0; callers also mask it out). */
  clear(slot: number): void {
    if (slot >= this.capacity) return;
    this.exact.fill(0, slot * this.dimensions, (slot + 1) * this.dimensions);
    const { codes, scales } = this.views();
    codes.fill(0, slot * this.stride, (slot + 1) * this.stride);
    scales[slot] = 0;
  }

  /** The float32 row of `slot` (a view: copy it to keep it). */
  row(slot: number): Float32Array {
    return this.exact.subarray(slot * this.dimensions, (slot + 1) * this.dimensions);
  }

  /**
   * The `n` rows most similar to `query` (cosine; rows and query unit length) among slots with
   * `allowed[slot] === 1`, best first.
   *
   * @example
   * const { slots, scores } = store.search(queryVector, allowed, 10)
   */
  search(query: Float32Array, allowed: Uint8Array, n: number, rescore = Math.max(4 * n, 64)): Ranking {
    const rows = Math.min(this.rows, allowed.length);
    if (rows === 0 || n <= 0) return { slots: new Int32Array(0), scores: new Float64Array(0) };
    const approx = this.approximateScores(query, rows);
    const coarse = new MinHeap(rescore);
    // The kept worst score lives in a local: read through the heap it cost more than the 100,000-row scan itself.
    let floor = coarse.floor;
    for (let slot = 0; slot < rows; slot++) {
      const score = approx[slot]!;
      if (score > floor && allowed[slot] === 1) {
        coarse.offer(slot, score);
        floor = coarse.floor;
      }
    }
    const candidates = coarse.drain().slots;
    const fine = new MinHeap(n);
    const d = this.dimensions;
    const exact = this.exact;
    for (const slot of candidates) {
      let s = 0;
      const base = slot * d;
      for (let j = 0; j < d; j++) s += exact[base + j]! * query[j]!;
      fine.offer(slot, s);
    }
    return fine.drain();
  }

  /**
   * The approximate (int8) cosine of `query` with every row set so far, by slot: a whole-table scan at the
   * kernel's speed, for callers that need many rows' scores rather than the best few (a copy, theirs to keep).
   *
   * @example
   * const similarity = store.scores(queryVector) // similarity[slot]
   */
  scores(query: Float32Array): Float32Array {
    if (query.length !== this.dimensions) throw new RangeError(`query of ${query.length} dimensions, expected ${this.dimensions}`);
    if (this.rows === 0) return new Float32Array(0);
    const out = this.approximateScores(query, this.rows).slice();
    const scale = queryScale(query);
    for (let r = 0; r < out.length; r++) out[r]! *= scale;
    return out;
  }

  /** int8 scores of rows [0, rows), in steps of the query's scale (a view valid until the next call). */
  private approximateScores(query: Float32Array, rows: number): Float32Array {
    const scale = queryScale(query);
    const { codes, scales } = this.views();
    if (this.kernel !== undefined) {
      const q = new Int8Array(this.kernel.memory.buffer, this.queryAt, this.stride);
      q.fill(0);
      for (let j = 0; j < query.length; j++) q[j] = Math.round(query[j]! / scale);
      this.kernel.scores(this.codesAt, this.queryAt, rows, this.stride, this.scalesAt, this.outAt);
      return new Float32Array(this.kernel.memory.buffer, this.outAt, rows);
    }
    const q = new Int8Array(this.stride);
    for (let j = 0; j < query.length; j++) q[j] = Math.round(query[j]! / scale);
    const out = this.outScratch;
    for (let r = 0; r < rows; r++) {
      let s = 0;
      const base = r * this.stride;
      for (let j = 0; j < this.stride; j++) s += codes[base + j]! * q[j]!;
      out[r] = s * scales[r]!;
    }
    return out;
  }

  /** Views of the kernel's memory, made again only after it grew (a grown memory detaches old views). */
  private cachedViews: { buffer: ArrayBuffer; codes: Int8Array; scales: Float32Array } | undefined;

  private views(): { codes: Int8Array; scales: Float32Array } {
    if (this.kernel === undefined) return { codes: this.codes, scales: this.scales };
    const buffer = this.kernel.memory.buffer;
    if (this.cachedViews?.buffer !== buffer || this.cachedViews.scales.length !== this.capacity) {
      this.cachedViews = {
        buffer,
        codes: new Int8Array(buffer, this.codesAt, this.capacity * this.stride),
        scales: new Float32Array(buffer, this.scalesAt, this.capacity),
      };
    }
    return this.cachedViews;
  }

  /** Grows every array to `capacity` rows, keeping the rows set so far. */
  private reserve(capacity: number): void {
    const exact = new Float32Array(capacity * this.dimensions);
    exact.set(this.exact);
    const old = this.views();
    const oldCodes = old.codes.slice();
    const oldScales = old.scales.slice();
    this.capacity = capacity;
    this.exact = exact;
    if (this.kernel === undefined) {
      this.codes = new Int8Array(capacity * this.stride);
      this.codes.set(oldCodes);
      this.scales = new Float32Array(capacity);
      this.scales.set(oldScales);
      this.outScratch = new Float32Array(capacity);
      return;
    }
    // Layout: codes | scales | query | out, every part 16-byte aligned.
    this.codesAt = 0;
    this.scalesAt = align16(capacity * this.stride);
    this.queryAt = align16(this.scalesAt + capacity * 4);
    this.outAt = align16(this.queryAt + this.stride);
    const need = this.outAt + capacity * 4;
    const memory = this.kernel.memory;
    if (memory.buffer.byteLength < need) memory.grow(Math.ceil((need - memory.buffer.byteLength) / PAGE));
    const { codes, scales } = this.views();
    codes.set(oldCodes);
    scales.set(oldScales);
  }
}

const align16 = (n: number): number => Math.ceil(n / 16) * 16;

/** The step of a query's int8 codes: its largest magnitude maps to 127 (approximate scores are in these steps). */
function queryScale(query: Float32Array): number {
  let max = 0;
  for (let j = 0; j < query.length; j++) max = Math.max(max, Math.abs(query[j]!));
  return max > 0 ? max / 127 : 1;
}
