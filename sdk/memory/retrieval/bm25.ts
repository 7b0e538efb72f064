/**
 * BM25 over an inverted index that is updated in place: adding or removing one document touches only its own
 * terms' postings and the collection totals, so an index of 100,000 memories never rebuilds on a new turn.
 * Documents are small integer slots chosen by the caller (MemoryIndex shares them with the vector store).
 */
import { MemoryIndexFormatError } from "./errors.js";

/** BM25's two constants. */
export interface Bm25Params {
  /** Term-frequency saturation. */
  k1: number;
  /** Length normalisation (0: none, 1: full). */
  b: number;
}

/**
 * Measured on LoCoMo (bench/memory-locomo.ts, tuned on two conversations, checked on the other three): chat
 * turns vary in length without being about more, so length normalisation is weaker than the textbook 0.75
 * (b = 0.4: +0.02 recall@10 for BM25 alone; k1 between 0.8 and 1.6 changed little).
 */
export const DEFAULT_BM25: Bm25Params = { k1: 1.2, b: 0.4 };

/** An index's saved form: see {@link Bm25Index.snapshot}. */
export interface Bm25Snapshot {
  /** Every term, in id order. */
  terms: string[];
  /** Per term: how many postings it has (its slice of `slots` and `tfs`, in order). */
  postingLength: Int32Array;
  slots: Int32Array;
  tfs: Uint16Array;
  /** Per slot: its length in terms, or -1 when the index holds no document there. */
  lengths: Int32Array;
}

/** A ranking: parallel arrays of slots and scores, best first. */
export interface Ranking {
  slots: Int32Array;
  scores: Float64Array;
}

/**
 * The index. Postings are flat typed arrays per term (slot, tf), appended on add and swap-removed on delete; each
 * document remembers where it sits in each of its terms' postings, so deleting it costs O(its terms), not a
 * scan. (A Map per posting and per document was measured 3× slower to fill at 100,000 memories.)
 */
export class Bm25Index {
  private readonly termIds = new Map<string, number>();
  /** termIds inverted: each term by its id. */
  private readonly termList: string[] = [];
  private postingSlots: Int32Array[] = [];
  private postingTf: Uint16Array[] = [];
  private postingLength: number[] = [];
  /** Per slot: its term ids and its index in each term's posting (its frequencies live in the postings). */
  private docTerms: (Int32Array | undefined)[] = [];
  private docPosition: (Int32Array | undefined)[] = [];
  private lengths = new Float64Array(64);
  private totalLength = 0;
  private count = 0;
  /** Bumped by every change of a document's length: norms()'s cache is valid for one version. */
  private version = 0;
  private normCache = new Float64Array(0);
  private normVersion = -1;

  constructor(readonly params: Bm25Params = DEFAULT_BM25) {}

  /** Number of documents. */
  get size(): number {
    return this.count;
  }

  /**
   * Indexes `terms` as document `slot`, replacing what the slot held.
   *
   * @example
   * index.set(0, terms("my dog loves the beach"))
   */
  set(slot: number, terms: readonly string[]): void {
    this.delete(slot);
    const tf = new Map<number, number>();
    for (const term of terms) {
      let id = this.termIds.get(term);
      if (id === undefined) {
        id = this.postingSlots.length;
        this.termIds.set(term, id);
        this.termList.push(term);
        this.postingSlots.push(new Int32Array(4));
        this.postingTf.push(new Uint16Array(4));
        this.postingLength.push(0);
      }
      tf.set(id, (tf.get(id) ?? 0) + 1);
    }
    const ids = new Int32Array(tf.size);
    const positions = new Int32Array(tf.size);
    let k = 0;
    for (const [id, n] of tf) {
      ids[k] = id;
      positions[k] = this.append(id, slot, Math.min(n, 0xffff));
      k++;
    }
    this.docTerms[slot] = ids;
    this.docPosition[slot] = positions;
    if (slot >= this.lengths.length) this.lengths = grow(this.lengths, slot + 1);
    this.lengths[slot] = terms.length;
    this.totalLength += terms.length;
    this.count++;
    this.version++;
  }

  /** Removes document `slot` (no-op when absent). */
  delete(slot: number): void {
    const ids = this.docTerms[slot];
    if (ids === undefined) return;
    const positions = this.docPosition[slot]!;
    for (let k = 0; k < ids.length; k++) this.unlink(ids[k]!, positions[k]!);
    this.docTerms[slot] = undefined;
    this.docPosition[slot] = undefined;
    this.totalLength -= this.lengths[slot]!;
    this.lengths[slot] = 0;
    this.count--;
    this.version++;
  }

  /**
   * The ids of the distinct terms of document `slot` (a view: do not change it), or undefined when the slot
   * holds none; {@link Bm25Index.term} names them.
   *
   * @example
   * for (const id of index.documentTerms(slot) ?? []) console.log(index.term(id))
   */
  documentTerms(slot: number): Int32Array | undefined {
    return this.docTerms[slot];
  }

  /** The term with this id (ids are those of {@link Bm25Index.documentTerms}). */
  term(id: number): string {
    return this.termList[id]!;
  }

  /** How many distinct terms the index has ever held (one past the highest id). */
  get termCount(): number {
    return this.termList.length;
  }

  /** The document frequency of `term` (for tests and diagnostics). */
  documentFrequency(term: string): number {
    const id = this.termIds.get(term);
    return id === undefined ? 0 : this.postingLength[id]!;
  }

  /**
   * What {@link Bm25Index.restore} needs to rebuild this index exactly: its terms in id order, each term's
   * posting (slots and tfs, concatenated in posting order) and each slot's length, -1 for a slot it does not hold.
   * Postings keep their order so that a restored index deletes and appends as the saved one would have.
   *
   * @example
   * const snapshot = index.snapshot(slotCount)
   */
  snapshot(slotCount: number): Bm25Snapshot {
    const terms = [...this.termIds.keys()];
    const postingLength = Int32Array.from(this.postingLength);
    let total = 0;
    for (const n of this.postingLength) total += n;
    const slots = new Int32Array(total);
    const tfs = new Uint16Array(total);
    let at = 0;
    for (let id = 0; id < terms.length; id++) {
      const n = postingLength[id]!;
      slots.set(this.postingSlots[id]!.subarray(0, n), at);
      tfs.set(this.postingTf[id]!.subarray(0, n), at);
      at += n;
    }
    const lengths = new Int32Array(slotCount).fill(-1);
    for (let slot = 0; slot < slotCount; slot++) if (this.docTerms[slot] !== undefined) lengths[slot] = this.lengths[slot]!;
    return { terms, postingLength, slots, tfs, lengths };
  }

  /**
   * An index from {@link snapshot}, checked first: every slot in range and held, no slot twice in a posting,
   * every count consistent. The per-document tables are derived from the postings, so they are not saved.
   * Throws MemoryIndexFormatError on any inconsistency (a corrupt save must not become a corrupt index).
   *
   * @example
   * const index = Bm25Index.restore(DEFAULT_BM25, snapshot)
   */
  static restore(params: Bm25Params, snapshot: Bm25Snapshot): Bm25Index {
    const { terms, postingLength, slots, tfs, lengths } = snapshot;
    const slotCount = lengths.length;
    const fail = (detail: string): never => {
      throw new MemoryIndexFormatError(`BM25 postings: ${detail}`);
    };
    if (postingLength.length !== terms.length || slots.length !== tfs.length) fail("table sizes disagree");
    const index = new Bm25Index(params);
    for (const term of terms) {
      if (typeof term !== "string") fail("a term is not a string");
      index.termIds.set(term, index.termIds.size);
      index.termList.push(term);
    }
    if (index.termIds.size !== terms.length) fail("a term appears twice");
    let total = 0;
    for (let slot = 0; slot < slotCount; slot++) if (lengths[slot]! < -1) fail(`slot ${slot} has length ${lengths[slot]}`);
    for (let id = 0; id < terms.length; id++) {
      const n = postingLength[id]!;
      if (n < 0 || n > slots.length - total) fail(`term ${id} has ${n} postings, beyond the table`);
      total += n;
    }
    if (total !== slots.length) fail(`${total} postings listed, ${slots.length} stored`);
    // Pass 1: check every posting and count each document's terms.
    const docCount = new Int32Array(slotCount);
    const docTfSum = new Float64Array(slotCount);
    const lastTerm = new Int32Array(slotCount).fill(-1);
    let at = 0;
    for (let id = 0; id < terms.length; id++) {
      const end = at + postingLength[id]!;
      for (let i = at; i < end; i++) {
        const slot = slots[i]!;
        if (!(slot >= 0 && slot < slotCount) || lengths[slot]! < 0) fail(`term ${id} lists slot ${slot}, which holds no document`);
        if (lastTerm[slot] === id) fail(`term ${id} lists slot ${slot} twice`);
        if (tfs[i]! === 0) fail(`term ${id} has a zero frequency`);
        lastTerm[slot] = id;
        docCount[slot]!++;
        docTfSum[slot]! += tfs[i]!;
      }
      at = end;
    }
    // Pass 2: each document's (term, position) rows, as views of three shared tables.
    const docAt = new Int32Array(slotCount + 1);
    for (let slot = 0; slot < slotCount; slot++) {
      if (lengths[slot]! >= 0 && docTfSum[slot]! > lengths[slot]!) fail(`slot ${slot} has more term occurrences than its length`);
      docAt[slot + 1] = docAt[slot]! + docCount[slot]!;
    }
    const allIds = new Int32Array(total);
    const allPositions = new Int32Array(total);
    const fill = docAt.slice(0, slotCount);
    // Each posting a full view of one shared copy: append finds it full and moves it out on the first add.
    const ownSlots = slots.slice();
    const ownTfs = tfs.slice();
    at = 0;
    for (let id = 0; id < terms.length; id++) {
      const n = postingLength[id]!;
      const postingSlots = n === 0 ? new Int32Array(4) : ownSlots.subarray(at, at + n);
      const postingTf = n === 0 ? new Uint16Array(4) : ownTfs.subarray(at, at + n);
      index.postingSlots.push(postingSlots);
      index.postingTf.push(postingTf);
      index.postingLength.push(n);
      for (let p = 0; p < n; p++) {
        const slot = postingSlots[p]!;
        const k = fill[slot]!++;
        allIds[k] = id;
        allPositions[k] = p;
      }
      at += n;
    }
    index.lengths = new Float64Array(Math.max(64, slotCount));
    for (let slot = 0; slot < slotCount; slot++) {
      const length = lengths[slot]!;
      if (length < 0) continue;
      const from = docAt[slot]!;
      const to = docAt[slot + 1]!;
      index.docTerms[slot] = allIds.subarray(from, to);
      index.docPosition[slot] = allPositions.subarray(from, to);
      index.lengths[slot] = length;
      index.totalLength += length;
      index.count++;
    }
    index.version++;
    return index;
  }

  /** Appends (slot, tf) to a term's posting; returns its position. */
  private append(id: number, slot: number, tf: number): number {
    const n = this.postingLength[id]!;
    if (n === this.postingSlots[id]!.length) {
      const slots = new Int32Array(n * 2);
      slots.set(this.postingSlots[id]!);
      const tfs = new Uint16Array(n * 2);
      tfs.set(this.postingTf[id]!);
      this.postingSlots[id] = slots;
      this.postingTf[id] = tfs;
    }
    this.postingSlots[id]![n] = slot;
    this.postingTf[id]![n] = tf;
    this.postingLength[id] = n + 1;
    return n;
  }

  /** Removes position `p` of a term's posting by moving its last entry there (and telling that document). */
  private unlink(id: number, p: number): void {
    const slots = this.postingSlots[id]!;
    const tfs = this.postingTf[id]!;
    const last = this.postingLength[id]! - 1;
    if (p !== last) {
      const moved = slots[last]!;
      slots[p] = moved;
      tfs[p] = tfs[last]!;
      const movedTerms = this.docTerms[moved]!;
      const k = movedTerms.indexOf(id);
      this.docPosition[moved]![k] = p;
    }
    this.postingLength[id] = last;
  }

  /**
   * The best `n` documents for `query` among those whose `allowed[slot]` is 1, by BM25 (Lucene's idf,
   * always positive). A repeated query term counts once per occurrence, as in the original formula's qtf=1 sum.
   *
   * @example
   * const { slots } = index.search(terms("beach dog"), allowed, 10)
   */
  search(query: readonly string[], allowed: Uint8Array, n: number): Ranking {
    return searchFields([{ index: this, weight: 1 }], query, allowed, n);
  }

  /**
   * Adds `weight` × this index's BM25 score of each allowed document to `scratch.acc[slot]` (each query term
   * scaled by `termWeights[q]`, default 1), recording each slot it touches first in `scratch.touched` (callers
   * reset `acc` for those slots after).
   */
  accumulate(
    query: readonly string[],
    allowed: Uint8Array,
    weight: number,
    scratch: Accumulator,
    termWeights?: readonly number[],
  ): void {
    const N = this.count;
    if (N === 0 || weight === 0) return;
    const { k1 } = this.params;
    const norms = this.norms();
    const acc = scratch.acc;
    const touched = scratch.touched;
    let count = scratch.count;
    for (let q = 0; q < query.length; q++) {
      const id = this.termIds.get(query[q]!);
      if (id === undefined) continue;
      const df = this.postingLength[id]!;
      if (df === 0) continue;
      const idf = weight * (termWeights?.[q] ?? 1) * Math.log(1 + (N - df + 0.5) / (df + 0.5));
      const slots = this.postingSlots[id]!;
      const tfs = this.postingTf[id]!;
      for (let i = 0; i < df; i++) {
        const slot = slots[i]!;
        if (allowed[slot] !== 1) continue;
        const tf = tfs[i]!;
        const before = acc[slot]!;
        if (before === 0) touched[count++] = slot;
        acc[slot] = before + (idf * tf * (k1 + 1)) / (tf + norms[slot]!);
      }
    }
    scratch.count = count;
  }

  /**
   * Each slot's length normalisation k1·(1 − b + b·length/avgdl), computed once per change of the collection's
   * totals rather than once per posting per query (the same expression, so scores are bit-for-bit the same).
   */
  private norms(): Float64Array {
    const n = this.lengths.length;
    if (this.normVersion !== this.version || this.normCache.length !== n) {
      if (this.normCache.length !== n) this.normCache = new Float64Array(n);
      const { k1, b } = this.params;
      const avgdl = this.totalLength / this.count || 1;
      const lengths = this.lengths;
      const cache = this.normCache;
      for (let slot = 0; slot < n; slot++) cache[slot] = k1 * (1 - b + (b * lengths[slot]!) / avgdl);
      this.normVersion = this.version;
    }
    return this.normCache;
  }

  /** One past the highest slot this index has held (the size an accumulator must have). */
  get slotBound(): number {
    return this.lengths.length;
  }
}

/**
 * A score accumulator shared by every search (searches are synchronous, so one at a time): `acc` is all zeros
 * between searches, and `touched[0, count)` lists the slots a search made non-zero. Reusing it saves a
 * 100,000-slot allocation and a growing array per query.
 */
interface Accumulator {
  acc: Float64Array;
  touched: Int32Array;
  count: number;
}

const shared: Accumulator = { acc: new Float64Array(64), touched: new Int32Array(64), count: 0 };

/**
 * The best `n` documents for `query` by a weighted sum of BM25 scores over several indexes sharing slots (a
 * memory's text and its context, each its own field with its own statistics, as in BM25F's simplest form).
 * `termWeights`, parallel to `query`, scales each term (default 1): expansion terms count less than asked ones.
 *
 * @example
 * searchFields([{ index: text, weight: 1 }, { index: context, weight: 0.3 }], terms("beach dog"), allowed, 10)
 */
export function searchFields(
  fields: readonly { index: Bm25Index; weight: number }[],
  query: readonly string[],
  allowed: Uint8Array,
  n: number,
  termWeights?: readonly number[]): Ranking {
  if (n <= 0 || fields.every((f) => f.index.size === 0)) return { slots: new Int32Array(0), scores: new Float64Array(0) };
  let bound = 0;
  for (const f of fields) bound = Math.max(bound, f.index.slotBound);
  if (shared.acc.length < bound) {
    const size = Math.max(bound, shared.acc.length * 2);
    shared.acc = new Float64Array(size);
    shared.touched = new Int32Array(size);
  }
  shared.count = 0;
  try {
    for (const { index, weight } of fields) index.accumulate(query, allowed, weight, shared, termWeights);
    return topN(shared.touched.subarray(0, shared.count), shared.acc, n);
  } finally {
    const { acc, touched, count } = shared;
    for (let i = 0; i < count; i++) acc[touched[i]!] = 0;
    shared.count = 0;
  }
}

function grow(array: Float64Array, min: number): Float64Array<ArrayBuffer> {
  const next = new Float64Array(Math.max(min, array.length * 2));
  next.set(array);
  return next;
}

/**
 * The `n` candidates with the highest `score[slot]`, best first; ties go to the lower slot so that equal
 * inputs give equal rankings whatever the insertion history.
 */
export function topN(candidates: ArrayLike<number>, score: ArrayLike<number>, n: number): Ranking {
  const heap = new MinHeap(n);
  // Most candidates score below the kept worst: skip them without a call (an equal score may still win on slot).
  let floor = heap.floor;
  for (let i = 0; i < candidates.length; i++) {
    const slot = candidates[i]!;
    const s = score[slot]!;
    if (s < floor) continue;
    heap.offer(slot, s);
    floor = heap.floor;
  }
  return heap.drain();
}

/** A bounded min-heap of (slot, score): keeps the best `capacity` seen. */
export class MinHeap {
  private readonly slots: Int32Array;
  private readonly scores: Float64Array;
  private count = 0;

  constructor(readonly capacity: number) {
    this.slots = new Int32Array(Math.max(1, capacity));
    this.scores = new Float64Array(Math.max(1, capacity));
  }

  /** The worst score kept, or -Infinity while not full: a cheap pre-check for callers' hot loops. */
  get floor(): number {
    return this.count < this.capacity ? -Infinity : this.scores[0]!;
  }

  offer(slot: number, score: number): void {
    if (this.capacity <= 0) return;
    if (this.count < this.capacity) {
      let i = this.count++;
      while (i > 0) {
        const parent = (i - 1) >> 1;
        if (!worse(score, slot, this.scores[parent]!, this.slots[parent]!)) break;
        this.scores[i] = this.scores[parent]!;
        this.slots[i] = this.slots[parent]!;
        i = parent;
      }
      this.scores[i] = score;
      this.slots[i] = slot;
      return;
    }
    if (!worse(this.scores[0]!, this.slots[0]!, score, slot)) return;
    this.siftDown(slot, score);
  }

  private siftDown(slot: number, score: number): void {
    let i = 0;
    const n = this.count;
    for (;;) {
      const l = 2 * i + 1;
      if (l >= n) break;
      const r = l + 1;
      const c = r < n && worse(this.scores[r]!, this.slots[r]!, this.scores[l]!, this.slots[l]!) ? r : l;
      if (!worse(this.scores[c]!, this.slots[c]!, score, slot)) break;
      this.scores[i] = this.scores[c]!;
      this.slots[i] = this.slots[c]!;
      i = c;
    }
    this.scores[i] = score;
    this.slots[i] = slot;
  }

  /** Everything kept, best first; empties the heap. */
  drain(): Ranking {
    const n = this.count;
    const slots = new Int32Array(n);
    const scores = new Float64Array(n);
    for (let k = n - 1; k >= 0; k--) {
      slots[k] = this.slots[0]!;
      scores[k] = this.scores[0]!;
      this.count--;
      if (this.count > 0) this.siftDown(this.slots[this.count]!, this.scores[this.count]!);
    }
    return { slots, scores };
  }
}

/** Whether (a, slotA) ranks below (b, slotB): lower score, or equal score and higher slot. */
function worse(a: number, slotA: number, b: number, slotB: number): boolean {
  return a < b || (a === b && slotA > slotB);
}
