/**
 * An agent's searchable memory: every MemoryItem indexed for BM25 and by its embedding, updated one item at a
 * time, searched by a hybrid of both, and saved as bytes in the vault.
 *
 * The privacy rule is enforced here, before any ranking: a search first marks which memories the listener may
 * hear (mayHear), and every ranking only ever reads marked slots. A memory another user said in confidence
 * cannot surface, not in the hybrid nor in the single-method rankings.
 */
import { MEMORY_KINDS, mayHear, type Audience, type Listener, type MemoryItem, type MemoryKind } from "../types.js";
import { Bm25Index, DEFAULT_BM25, searchFields, type Bm25Params, type Bm25Snapshot, type Ranking } from "./bm25.js";
import type { Embedder } from "./embedder.js";
import { EmbedderMismatchError, EmbeddingShapeError, InvalidMemoryItemError, MemoryIndexFormatError } from "./errors.js";
import { STOP_WORDS, stem, terms, words } from "./tokenize.js";
import { dateSpans } from "./dates.js";
import { VectorStore } from "./vector-store.js";
import { memoryBoost, resolveWeights, type RetrievalWeights } from "./weights.js";

/** One result: the memory and its score (fused and weighted for search; raw BM25 or cosine for the others). */
export interface SearchHit {
  item: MemoryItem;
  score: number;
}

/** What every search takes. */
export interface SearchOptions {
  /** How many hits at most. */
  k: number;
  /** Who will hear the result: only memories they may hear are considered at all. */
  listener: Listener;
  /** "Now" for recency, in milliseconds since the epoch; default Date.now(). */
  now?: number;
  /** Only these kinds (default: all). */
  kinds?: readonly MemoryKind[];
  signal?: AbortSignal;
}

/** How an index is made. */
export interface MemoryIndexOptions {
  embedder: Embedder;
  weights?: Partial<RetrievalWeights>;
  bm25?: Partial<Bm25Params>;
  /**
   * Index the speaker as a BM25 term of each memory (default true): "what did Caroline say about…" matches
   * Caroline's turns though they never name her.
   */
  indexSpeaker?: boolean;
  /**
   * Embed each memory as "speaker: text" (default true): a question about a person then leans toward what
   * that person said. Measured on LoCoMo: vector recall@10 0.49 against 0.48 without.
   */
  embedSpeaker?: boolean;
}

const AUDIENCE_CODE: Record<Audience, number> = { everyone: 1, speaker: 2, owner: 3 };
const KIND_CODE = new Map<MemoryKind, number>(MEMORY_KINDS.map((k, i) => [k, i]));
const MAGIC = 0x49_4d_4d_53; // "SMMI" little-endian
/** AUDIENCE_CODE inverted. */
const AUDIENCES: readonly (Audience | undefined)[] = [undefined, "everyone", "speaker", "owner"];

/**
 * 2: the memories as columns, the BM25 postings, the slot layout (holes and free list), the speakers, the
 * expansion terms and the int8 vectors are saved, so loading decodes them instead of tokenizing every memory
 * again (8 s at 100,000 memories).
 * 1: memories (JSON) and vectors only, everything else rebuilt on load; still read.
 */
const FORMAT_VERSION = 2;

/** Per slot in version 2: how its memory is saved. */
const enum SlotForm {
  Hole = 0,
  Columns = 1,
  ColumnsWithContext = 2,
  /** Whole in the header's JSON: fields the columns do not have (topic, sources), or text that is not valid UTF-16. */
  Verbatim = 3,
}

/** The fields a memory saved in columns may have. */
const COLUMN_FIELDS = new Set(["id", "kind", "text", "speaker", "audience", "time", "importance", "context"]);

/** Version 2's JSON header. */
interface HeaderV2 {
  embedder: string;
  dimensions: number;
  options: Omit<MemoryIndexOptions, "embedder">;
  slotCount: number;
  /** UTF-8 bytes of the memories' strings (ids, texts, contexts), concatenated. */
  textBytes: number;
  /** [slot, memory] for each memory saved whole. */
  verbatim: [number, MemoryItem][];
  free: number[];
  /** Every speaker ever indexed, in code order. */
  speakers: string[];
  /** Text then context: each field's terms in id order and its number of postings. */
  fields: { terms: string[]; postings: number }[];
  /** The expansion table, row by row: each term and the word whose vector it has. */
  expansion: { terms: string[]; words: string[] };
}

export class MemoryIndex {
  private readonly weights: RetrievalWeights;
  private bm25: Bm25Index;
  /** The memories' `context` as a second BM25 field, slot for slot. */
  private contextBm25: Bm25Index;
  private readonly vectors: VectorStore;
  private readonly indexSpeaker: boolean;
  private readonly slotOf = new Map<string, number>();
  private readonly bySlot: (MemoryItem | undefined)[] = [];
  private readonly free: number[] = [];
  /** Per slot: 0 empty, else AUDIENCE_CODE of the item, for the privacy mask without a call per memory. */
  private audience = new Uint8Array(64);
  private speaker = new Int32Array(64);
  private kind = new Uint8Array(64);
  private readonly speakerCode = new Map<string, number>();
  /** Each speaker's name as BM25 terms, to see whether a query names them. */
  private readonly speakerTerms = new Map<string, string[]>();
  /**
   * The word vector of every BM25 term indexed so far (from the first word that stemmed to it), row by row,
   * for query expansion and the soft match: searching a few thousand terms' vectors costs a fraction of a
   * millisecond, where the embedder's whole vocabulary (341,479 words) would cost tens. Absent when the
   * embedder has no word vectors (or both uses are off).
   */
  private readonly termVectors: VectorStore | undefined;
  private readonly termRow = new Map<string, number>();
  private readonly rowTerm: string[] = [];
  /** The word each row's vector was read from (saved, so loading reads the same vectors again). */
  private readonly rowWord: string[] = [];
  private everyTerm = new Uint8Array(64);
  /**
   * Per BM25 field (text, context): each term id's expansion row, -1 for none, filled as searches meet the ids.
   * Valid while no row is added (`rows`): a term may gain a row later, when a text first has it.
   */
  private rowOfId: { rows: number; text: Int32Array; context: Int32Array } = { rows: 0, text: new Int32Array(0), context: new Int32Array(0) };

  private constructor(readonly embedder: Embedder, private readonly options: Omit<MemoryIndexOptions, "embedder">) {
    this.weights = resolveWeights(options.weights);
    this.bm25 = new Bm25Index({ ...DEFAULT_BM25, ...options.bm25 });
    this.contextBm25 = new Bm25Index({ ...DEFAULT_BM25, ...options.bm25 });
    this.vectors = new VectorStore(embedder.dimensions);
    this.indexSpeaker = options.indexSpeaker ?? true;
    const wordLevel = this.weights.expansion > 0 || this.weights.softMatch > 0;
    this.termVectors = embedder.wordVector !== undefined && wordLevel ? new VectorStore(embedder.dimensions) : undefined;
  }

  /**
   * An empty index.
   *
   * @example
   * const index = MemoryIndex.create({ embedder: await loadWordVectorEmbedder() })
   */
  static create(options: MemoryIndexOptions): MemoryIndex {
    const { embedder, ...rest } = options;
    return new MemoryIndex(embedder, rest);
  }

  /** Number of memories. */
  get size(): number {
    return this.slotOf.size;
  }

  /** The memory with this id. */
  get(id: string): MemoryItem | undefined {
    const slot = this.slotOf.get(id);
    return slot === undefined ? undefined : this.bySlot[slot];
  }

  /** Every memory, in no particular order. */
  *items(): IterableIterator<MemoryItem> {
    for (const item of this.bySlot) if (item !== undefined) yield item;
  }

  /**
   * Adds memories, or replaces those with the same id. Embeds them first: if embedding fails or is aborted
   * the index is unchanged. A replacement whose embedded text (speaker and text) is unchanged keeps its
   * vector and is not embedded again: a turn whose context grows as later turns arrive costs no embedding.
   *
   * @example
   * await index.upsert([{ id: "turn:1", kind: "turn", text: "I adopted a cat", speaker: "alice", audience: "everyone", time: Date.now() }])
   */
  async upsert(items: MemoryItem[], options: { signal?: AbortSignal } = {}): Promise<void> {
    const latest = new Map<string, MemoryItem>();
    for (const item of items) latest.set(checkItem(item).id, copyItem(item));
    const batch = [...latest.values()];
    if (batch.length === 0) return;
    options.signal?.throwIfAborted();
    const fresh = batch.filter((item) => !this.sameEmbedding(item));
    const vectors = fresh.length === 0 ? [] : await this.embedder.embed(fresh.map((item) => this.embeddedText(item)), options);
    options.signal?.throwIfAborted();
    this.checkVectors(vectors, fresh.length);
    const vectorOf = new Map(fresh.map((item, i) => [item, vectors[i]!]));
    for (const item of batch) {
      const vector = vectorOf.get(item);
      if (vector !== undefined) this.place(item, vector);
      else this.place(item, this.vectors.row(this.slotOf.get(item.id)!).slice());
    }
  }

  /**
   * Replaces a memory's `context` (its BM25 context field) without embedding anything: vectors are made from
   * the text alone. Returns false when no memory has this id.
   *
   * @example
   * index.setContext("turn:1", "Did you get a pet?\nWhat is its name?")
   */
  setContext(id: string, context: string | undefined): boolean {
    const slot = this.slotOf.get(id);
    if (slot === undefined) return false;
    const item = { ...this.bySlot[slot]! };
    if (context === undefined || context.length === 0) delete item.context;
    else item.context = context;
    this.bySlot[slot] = item;
    this.placeContext(slot, item);
    return true;
  }

  /**
   * Removes memories by id (unknown ids are ignored).
   *
   * @example
   * index.remove(["turn:1"])
   */
  remove(ids: string[]): void {
    for (const id of ids) {
      const slot = this.slotOf.get(id);
      if (slot === undefined) continue;
      this.version++;
      this.slotOf.delete(id);
      this.bySlot[slot] = undefined;
      this.audience[slot] = 0;
      this.bm25.delete(slot);
      this.contextBm25.delete(slot);
      this.vectors.clear(slot);
      this.free.push(slot);
    }
  }

  /**
   * The best `k` memories for `query` that the listener may hear: BM25 and vector rankings fused by reciprocal
   * rank, then weighted by kind, importance, recency, speaker and the dates the query names (dates.ts).
   *
   * @example
   * const hits = await index.search("how is her dog?", { k: 8, listener: { userId: "alice", isOwner: false } })
   */
  async search(query: string, options: SearchOptions): Promise<SearchHit[]> {
    const allowed = this.allowed(options);
    const depth = Math.max(options.k, this.weights.candidates);
    const queryTerms = this.queryTerms(query);
    const named = this.namedSpeakers(queryTerms);
    const vector = await this.embedQuery(this.withoutNames(query, named), options.signal);
    const lexical = this.lexical(this.expand(query, queryTerms, named) ?? { terms: queryTerms }, allowed, depth);
    const semantic = this.vectors.search(vector, allowed, depth);
    const fused = new Map<number, number>();
    const { rrfK, bm25, vector: vectorWeight } = this.weights;
    // Equal scores share a rank (1224 ranking), so identical memories fuse equally and the weights decide.
    const add = (ranking: Ranking, weight: number): void => {
      let rank = 0;
      ranking.slots.forEach((slot, i) => {
        if (i === 0 || ranking.scores[i] !== ranking.scores[i - 1]) rank = i;
        fused.set(slot, (fused.get(slot) ?? 0) + weight / (rrfK + rank + 1));
      });
    };
    add(lexical, bm25);
    add(semantic, vectorWeight);
    const soft = this.softRanking(query, named, fused.keys());
    if (soft !== undefined) add(soft, this.weights.softMatch);
    const now = options.now ?? Date.now();
    const dates = this.weights.date === 1 ? [] : dateSpans(query, now);
    const hits: SearchHit[] = [];
    for (const [slot, score] of fused) {
      const item = this.bySlot[slot]!;
      hits.push({ item, score: score * memoryBoost(this.weights, item, options.listener, now, named, dates) });
    }
    return this.finish(hits, options);
  }

  /**
   * BM25 alone, with the same filters as {@link search} and no weights (scores are BM25's).
   *
   * @example
   * await index.searchBm25("adoption agency", { k: 10, listener })
   */
  async searchBm25(query: string, options: SearchOptions): Promise<SearchHit[]> {
    options.signal?.throwIfAborted();
    const queryTerms = this.queryTerms(query);
    const expanded = this.expand(query, queryTerms, this.namedSpeakers(queryTerms)) ?? { terms: queryTerms };
    const ranking = this.lexical(expanded, this.allowed(options), options.k);
    return this.finish(this.hitsOf(ranking), options);
  }

  /**
   * Vector similarity alone (cosine), with the same filters as {@link search} and no weights.
   *
   * @example
   * await index.searchVector("adopting a child", { k: 10, listener })
   */
  async searchVector(query: string, options: SearchOptions): Promise<SearchHit[]> {
    const allowed = this.allowed(options);
    const vector = await this.embedQuery(this.withoutNames(query, this.namedSpeakers(this.queryTerms(query))), options.signal);
    return this.finish(this.hitsOf(this.vectors.search(vector, allowed, options.k)), options);
  }

  /**
   * The index as bytes (for the vault's "retrieval-index" item): a JSON header (options, the free slots, the
   * speakers, both fields' terms, the expansion terms, any memory the columns cannot hold), then little-endian
   * tables, each 8-byte aligned: the memories slot by slot as columns (form, kind, audience, speaker code, time,
   * importance, string ends) and their strings as one UTF-8 text; per BM25 field its slot lengths, posting
   * lengths, posting slots and frequencies; the vectors (float32 rows, then their int8 codes and scales).
   * Loading decodes these instead of tokenizing every memory again, and gives back an index that answers, and
   * changes, exactly as this one does.
   *
   * @example
   * const bytes = index.serialize()
   */
  serialize(): Uint8Array {
    const slotCount = this.bySlot.length;
    const d = this.embedder.dimensions;
    const columns = this.itemColumns();
    const fields = [this.bm25.snapshot(slotCount), this.contextBm25.snapshot(slotCount)];
    const header: HeaderV2 = {
      embedder: this.embedder.id,
      dimensions: d,
      options: this.options,
      slotCount,
      textBytes: columns.text.length,
      verbatim: columns.verbatim,
      free: this.free,
      speakers: [...this.speakerCode.keys()],
      fields: fields.map((f) => ({ terms: f.terms, postings: f.slots.length })),
      expansion: { terms: this.rowTerm, words: this.rowWord },
    };
    const json = new TextEncoder().encode(JSON.stringify(header));
    const layout = layoutV2(align8(12 + json.length), slotCount, columns.text.length, fields.map((f) => ({ terms: f.terms.length, postings: f.slots.length })), d, this.vectors.stride);
    const bytes = new Uint8Array(layout.end);
    const view = new DataView(bytes.buffer);
    view.setUint32(0, MAGIC, true);
    view.setUint32(4, FORMAT_VERSION, true);
    view.setUint32(8, json.length, true);
    bytes.set(json, 12);
    const { buffer } = bytes;
    new Uint8Array(buffer, layout.form, slotCount).set(columns.form);
    new Uint8Array(buffer, layout.kind, slotCount).set(columns.kind);
    new Uint8Array(buffer, layout.audience, slotCount).set(columns.audience);
    new Int32Array(buffer, layout.speaker, slotCount).set(columns.speaker);
    new Float64Array(buffer, layout.time, slotCount).set(columns.time);
    new Float64Array(buffer, layout.importance, slotCount).set(columns.importance);
    new Uint32Array(buffer, layout.ends, slotCount * 3).set(columns.ends);
    bytes.set(columns.text, layout.text);
    fields.forEach((f, i) => {
      const at = layout.fields[i]!;
      new Int32Array(buffer, at.lengths, slotCount).set(f.lengths);
      new Int32Array(buffer, at.postingLength, f.terms.length).set(f.postingLength);
      new Int32Array(buffer, at.slots, f.slots.length).set(f.slots);
      new Uint16Array(buffer, at.tfs, f.tfs.length).set(f.tfs);
    });
    const vectors = new Float32Array(buffer, layout.vectors, slotCount * d);
    for (let slot = 0; slot < slotCount; slot++) if (this.bySlot[slot] !== undefined) vectors.set(this.vectors.row(slot), slot * d);
    const { codes, scales } = this.vectors.quantized(slotCount);
    new Int8Array(buffer, layout.codes, codes.length).set(codes);
    new Float32Array(buffer, layout.scales, scales.length).set(scales);
    return bytes;
  }

  /**
   * The memories as columns, for {@link serialize}: one JSON.parse of 100,000 memories costs more than the
   * rest of loading, where one UTF-8 decode and a slice per string costs a fraction.
   */
  private itemColumns(): ItemColumns {
    const slotCount = this.bySlot.length;
    const columns: ItemColumns = {
      form: new Uint8Array(slotCount),
      kind: new Uint8Array(slotCount),
      audience: new Uint8Array(slotCount),
      speaker: new Int32Array(slotCount),
      time: new Float64Array(slotCount),
      importance: new Float64Array(slotCount),
      ends: new Uint32Array(slotCount * 3),
      text: new Uint8Array(0),
      verbatim: [],
    };
    const parts: string[] = [];
    let end = 0;
    for (let slot = 0; slot < slotCount; slot++) {
      const item = this.bySlot[slot];
      if (item !== undefined && fitsColumns(item)) {
        const hasContext = item.context !== undefined;
        columns.form[slot] = hasContext ? SlotForm.ColumnsWithContext : SlotForm.Columns;
        columns.kind[slot] = KIND_CODE.get(item.kind)!;
        columns.audience[slot] = AUDIENCE_CODE[item.audience];
        columns.speaker[slot] = this.speakerCode.get(item.speaker)!;
        columns.time[slot] = item.time;
        columns.importance[slot] = item.importance ?? Number.NaN;
        parts.push(item.id, item.text);
        if (hasContext) parts.push(item.context!);
        columns.ends[slot * 3] = end += item.id.length;
        columns.ends[slot * 3 + 1] = end += item.text.length;
        columns.ends[slot * 3 + 2] = end += hasContext ? item.context!.length : 0;
        continue;
      }
      if (item !== undefined) {
        columns.form[slot] = SlotForm.Verbatim;
        columns.verbatim.push([slot, item]);
      }
      columns.ends.fill(end, slot * 3, slot * 3 + 3);
    }
    columns.text = new TextEncoder().encode(parts.join(""));
    return columns;
  }

  /**
   * An index from {@link serialize}'s bytes (this version's or the previous one's). Throws
   * EmbedderMismatchError when it was saved with another embedder, MemoryIndexFormatError when the bytes are not
   * a saved index or are truncated or altered (every length and offset is checked before it is used).
   *
   * @example
   * const index = MemoryIndex.deserialize(bytes, { embedder })
   */
  static deserialize(bytes: Uint8Array, options: { embedder: Embedder }): MemoryIndex {
    if (bytes.length < 12) throw new MemoryIndexFormatError(`${bytes.length} bytes, too short`);
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    if (view.getUint32(0, true) !== MAGIC) throw new MemoryIndexFormatError("wrong magic number");
    const version = view.getUint32(4, true);
    if (version !== 1 && version !== FORMAT_VERSION) throw new MemoryIndexFormatError(`format version ${version}, this version reads 1 to ${FORMAT_VERSION}`);
    const headerLength = view.getUint32(8, true);
    if (12 + headerLength > bytes.length) throw new MemoryIndexFormatError("truncated header");
    let header: unknown;
    try {
      header = JSON.parse(new TextDecoder().decode(bytes.subarray(12, 12 + headerLength)));
    } catch (err) {
      throw new MemoryIndexFormatError(`unreadable header (${err instanceof Error ? err.message : String(err)})`);
    }
    if (header === null || typeof header !== "object") throw new MemoryIndexFormatError("the header is not an object");
    const { embedder } = options;
    const saved = header as { embedder: unknown; dimensions: unknown };
    if (saved.embedder !== embedder.id || saved.dimensions !== embedder.dimensions) {
      throw new EmbedderMismatchError(`${String(saved.embedder)} (${String(saved.dimensions)} dimensions)`, `${embedder.id} (${embedder.dimensions} dimensions)`);
    }
    return version === 1
      ? MemoryIndex.fromV1(bytes, align4(12 + headerLength), header as { options?: Omit<MemoryIndexOptions, "embedder">; items?: unknown }, embedder)
      : MemoryIndex.fromV2(bytes, align8(12 + headerLength), header as HeaderV2, embedder);
  }

  /** Version 1: the memories and their vectors, everything else rebuilt by placing each memory again. */
  private static fromV1(bytes: Uint8Array, vectorsAt: number, header: { options?: Omit<MemoryIndexOptions, "embedder">; items?: unknown }, embedder: Embedder): MemoryIndex {
    const d = embedder.dimensions;
    if (!Array.isArray(header.items) || vectorsAt + header.items.length * d * 4 !== bytes.length) {
      throw new MemoryIndexFormatError("the vectors do not match the memories (truncated or altered)");
    }
    // Copy: the caller's bytes may be unaligned for a Float32Array view, and may be reused after.
    const vectors = new Float32Array(Uint8Array.prototype.slice.call(bytes, vectorsAt).buffer);
    const index = new MemoryIndex(embedder, header.options ?? {});
    (header.items as MemoryItem[]).forEach((item, i) => index.place(checkSavedItem(item), vectors.subarray(i * d, (i + 1) * d)));
    return index;
  }

  /** Version 2: every table decoded and checked, nothing tokenized. */
  private static fromV2(bytes: Uint8Array, binaryAt: number, header: HeaderV2, embedder: Embedder): MemoryIndex {
    const fail = (detail: string): never => {
      throw new MemoryIndexFormatError(detail);
    };
    const d = embedder.dimensions;
    const { slotCount, textBytes, verbatim, free, speakers, fields, expansion } = header;
    if (header.options === null || typeof header.options !== "object" || Array.isArray(header.options)) fail("options are not an object");
    if (!Number.isSafeInteger(slotCount) || slotCount < 0 || !Number.isSafeInteger(textBytes) || textBytes < 0) fail("slot count or text size malformed");
    if (!Array.isArray(verbatim) || !Array.isArray(free) || !Array.isArray(speakers)) fail("saved memories, free slots or speakers missing");
    if (!Array.isArray(fields) || fields.length !== 2) fail("expected two BM25 fields");
    if (expansion === null || typeof expansion !== "object" || !Array.isArray(expansion.terms) || !Array.isArray(expansion.words) || expansion.terms.length !== expansion.words.length) {
      fail("the expansion table is malformed");
    }
    const counts = fields.map((f) => {
      if (f === null || typeof f !== "object" || !Array.isArray(f.terms) || !Number.isSafeInteger(f.postings) || f.postings < 0) fail("a BM25 field is malformed");
      return { terms: f.terms.length, postings: f.postings };
    });
    const index = new MemoryIndex(embedder, header.options);
    const stride = index.vectors.stride;
    const layout = layoutV2(binaryAt, slotCount, textBytes, counts, d, stride);
    if (layout.end !== bytes.length) fail(`${bytes.length} bytes where the header implies ${layout.end} (truncated or altered)`);
    // Views straight into the caller's bytes when aligned (every table is copied out of them below); a copy when
    // not, since typed-array views need their element size's alignment.
    const aligned = bytes.byteOffset % 8 === 0;
    const buffer = aligned ? bytes.buffer : Uint8Array.prototype.slice.call(bytes, binaryAt).buffer;
    const at = (offset: number): number => (aligned ? bytes.byteOffset + offset : offset - binaryAt);

    const capacity = Math.max(64, slotCount);
    index.audience = new Uint8Array(capacity);
    index.speaker = new Int32Array(capacity);
    index.kind = new Uint8Array(capacity);
    for (const speaker of speakers) {
      if (typeof speaker !== "string" || index.speakerCode.has(speaker)) fail("the speakers are not distinct strings");
      index.codeOfSpeaker(speaker);
    }
    const items = readItems(
      {
        form: new Uint8Array(buffer, at(layout.form), slotCount),
        kind: new Uint8Array(buffer, at(layout.kind), slotCount),
        audience: new Uint8Array(buffer, at(layout.audience), slotCount),
        speaker: new Int32Array(buffer, at(layout.speaker), slotCount),
        time: new Float64Array(buffer, at(layout.time), slotCount),
        importance: new Float64Array(buffer, at(layout.importance), slotCount),
        ends: new Uint32Array(buffer, at(layout.ends), slotCount * 3),
        text: new Uint8Array(buffer, at(layout.text), textBytes),
        verbatim,
      },
      speakers,
    );
    for (let slot = 0; slot < slotCount; slot++) {
      const saved = items[slot];
      if (saved === undefined) {
        index.bySlot.push(undefined);
        continue;
      }
      const item = checkSavedItem(saved);
      if (index.slotOf.has(item.id)) fail(`memory ${JSON.stringify(item.id)} is saved twice`);
      const code = index.speakerCode.get(item.speaker);
      if (code === undefined) fail(`the speaker of memory ${JSON.stringify(item.id)} is not among the speakers`);
      index.slotOf.set(item.id, slot);
      index.bySlot.push(item);
      index.audience[slot] = AUDIENCE_CODE[item.audience];
      index.speaker[slot] = code!;
      index.kind[slot] = KIND_CODE.get(item.kind)!;
    }
    const holes = new Set<number>();
    for (const slot of free) {
      if (!Number.isInteger(slot) || slot < 0 || slot >= slotCount || index.bySlot[slot] !== undefined || holes.has(slot)) fail(`free slot ${String(slot)} is not a hole`);
      holes.add(slot);
    }
    if (holes.size !== slotCount - index.slotOf.size) fail("the free slots do not list every hole");
    index.free.push(...free);

    const params = { ...DEFAULT_BM25, ...index.options.bm25 };
    const restored = fields.map((f, i) => {
      const offsets = layout.fields[i]!;
      const snapshot: Bm25Snapshot = {
        terms: f.terms,
        lengths: new Int32Array(buffer, at(offsets.lengths), slotCount),
        postingLength: new Int32Array(buffer, at(offsets.postingLength), f.terms.length),
        slots: new Int32Array(buffer, at(offsets.slots), f.postings),
        tfs: new Uint16Array(buffer, at(offsets.tfs), f.postings),
      };
      for (let slot = 0; slot < slotCount; slot++) {
        const item = index.bySlot[slot];
        const held = snapshot.lengths[slot]! >= 0;
        const expected = item !== undefined && (i === 0 || (item.context !== undefined && item.context.length > 0));
        if (held !== expected) fail(`BM25 field ${i} ${held ? "holds" : "lacks"} slot ${slot}`);
      }
      return Bm25Index.restore(params, snapshot);
    });
    index.bm25 = restored[0]!;
    index.contextBm25 = restored[1]!;

    const vectors = new Float32Array(buffer, at(layout.vectors), slotCount * d);
    const codes = new Int8Array(buffer, at(layout.codes), slotCount * stride);
    const scales = new Float32Array(buffer, at(layout.scales), slotCount);
    index.vectors.load(vectors, codes, scales, index.audience.subarray(0, slotCount).map((code) => (code === 0 ? 0 : 1)));
    index.restoreExpansion(expansion.terms, expansion.words);
    return index;
  }

  /** Reads the saved expansion rows' vectors again from their words (same embedder, so the same vectors). */
  private restoreExpansion(terms: unknown[], words: unknown[]): void {
    if (this.termVectors === undefined) return;
    for (let row = 0; row < terms.length; row++) {
      const term = terms[row];
      const word = words[row];
      if (typeof term !== "string" || typeof word !== "string" || this.termRow.has(term)) throw new MemoryIndexFormatError(`expansion row ${row} is malformed`);
      const vector = this.embedder.wordVector!(word);
      if (vector === undefined) throw new MemoryIndexFormatError(`expansion word ${JSON.stringify(word)} has no vector`);
      this.termRow.set(term, row);
      this.rowTerm.push(term);
      this.rowWord.push(word);
      this.termVectors.set(row, vector);
    }
    const everyTerm = new Uint8Array(Math.max(64, terms.length));
    everyTerm.fill(1, 0, terms.length);
    this.everyTerm = everyTerm;
  }

  private place(item: MemoryItem, vector: Float32Array): void {
    this.version++;
    let slot = this.slotOf.get(item.id);
    if (slot === undefined) {
      slot = this.free.pop() ?? this.bySlot.length;
      this.slotOf.set(item.id, slot);
    }
    this.bySlot[slot] = item;
    if (slot >= this.audience.length) this.growCodes(slot + 1);
    this.audience[slot] = AUDIENCE_CODE[item.audience];
    this.speaker[slot] = this.codeOfSpeaker(item.speaker);
    this.kind[slot] = KIND_CODE.get(item.kind)!;
    const docTerms = terms(item.text);
    if (this.indexSpeaker) docTerms.push(...terms(item.speaker));
    this.bm25.set(slot, docTerms);
    this.placeContext(slot, item);
    this.vectors.set(slot, vector);
    if (this.termVectors !== undefined) this.addTermVectors(item.text);
  }

  /** Gives each new BM25 term of `text` its word vector, for expansion (terms are never dropped: few, small). */
  private addTermVectors(text: string): void {
    for (const word of words(text)) {
      if (STOP_WORDS.has(word) || word.includes("'")) continue;
      const term = stem(word);
      if (this.termRow.has(term)) continue;
      const vector = this.embedder.wordVector!(word);
      if (vector === undefined) continue;
      const row = this.rowTerm.length;
      this.termRow.set(term, row);
      this.rowTerm.push(term);
      this.rowWord.push(word);
      this.termVectors!.set(row, vector);
      if (row >= this.everyTerm.length) {
        const grown = new Uint8Array(this.everyTerm.length * 2);
        grown.set(this.everyTerm);
        this.everyTerm = grown;
      }
      this.everyTerm[row] = 1;
    }
  }

  /**
   * The query's terms, then each query word's nearest indexed words (by word vector) with their weights: an
   * open-domain or multi-hop question rarely uses the words its evidence uses ("job" → "career").
   */
  private expand(query: string, queryTerms: readonly string[], named: ReadonlySet<string>): { terms: string[]; weights: number[] } | undefined {
    const { expansion, expansionNeighbours, expansionMinSimilarity } = this.weights;
    if (this.termVectors === undefined || this.rowTerm.length === 0 || expansion <= 0 || expansionNeighbours <= 0) return undefined;
    const out = [...queryTerms];
    const weights = queryTerms.map(() => 1);
    const seen = new Set(queryTerms);
    for (const word of words(this.withoutNames(query, named))) {
      if (STOP_WORDS.has(word) || word.includes("'")) continue;
      const vector = this.embedder.wordVector!(word);
      if (vector === undefined) continue;
      const near = this.termVectors.search(vector, this.everyTerm, expansionNeighbours + 1, 32);
      let added = 0;
      for (let i = 0; i < near.slots.length && added < expansionNeighbours; i++) {
        const similarity = near.scores[i]!;
        if (similarity < expansionMinSimilarity) break;
        const term = this.rowTerm[near.slots[i]!]!;
        if (seen.has(term)) continue;
        seen.add(term);
        out.push(term);
        weights.push(expansion * similarity);
        added++;
      }
    }
    return out.length === queryTerms.length ? undefined : { terms: out, weights };
  }

  /**
   * The candidates ranked by how well the query's words are matched in meaning by their words: for each query
   * word (not a stop word, not a named speaker's name, with a word vector), its best cosine with any term of
   * the memory's text or context that has a vector; averaged with the words' BM25 idf as weights, so "Melanie's
   * family activities" counts "family" and "activities" above "do". Undefined when there is nothing to match.
   * Measured on LoCoMo: hybrid recall@10 0.827 against 0.802 on the tuning half, 0.785 against 0.778 on the other.
   */
  private softRanking(query: string, named: ReadonlySet<string>, candidates: Iterable<number>): Ranking | undefined {
    if (this.termVectors === undefined || this.weights.softMatch <= 0 || this.rowTerm.length === 0) return undefined;
    const perWord: Float32Array[] = [];
    const idf: number[] = [];
    const seen = new Set<string>();
    const n = this.bm25.size;
    for (const word of words(this.withoutNames(query, named))) {
      if (STOP_WORDS.has(word) || word.includes("'") || seen.has(word)) continue;
      seen.add(word);
      const vector = this.embedder.wordVector!(word);
      if (vector === undefined) continue;
      const df = this.bm25.documentFrequency(stem(word));
      perWord.push(this.termVectors.scores(vector));
      idf.push(Math.log(1 + (n - df + 0.5) / (df + 0.5)));
    }
    const w = perWord.length;
    if (w === 0) return undefined;
    const rowOf = this.termRows();
    let totalIdf = 0;
    for (const x of idf) totalIdf += x;
    const best = new Float32Array(w);
    const slots = Int32Array.from(candidates);
    const scores = new Float64Array(slots.length);
    const fields = [this.bm25, this.contextBm25];
    const fieldRows = [rowOf.text, rowOf.context];
    for (let c = 0; c < slots.length; c++) {
      best.fill(0);
      for (let f = 0; f < 2; f++) {
        const ids = fields[f]!.documentTerms(slots[c]!);
        if (ids === undefined) continue;
        const rows = fieldRows[f]!;
        for (let i = 0; i < ids.length; i++) {
          const row = rows[ids[i]!]!;
          if (row < 0) continue;
          for (let q = 0; q < w; q++) {
            const x = perWord[q]![row]!;
            if (x > best[q]!) best[q] = x;
          }
        }
      }
      let score = 0;
      for (let q = 0; q < w; q++) score += idf[q]! * best[q]!;
      scores[c] = score / totalIdf;
    }
    const order = Array.from(slots.keys()).sort((a, b) => scores[b]! - scores[a]! || slots[a]! - slots[b]!);
    return { slots: Int32Array.from(order, (i) => slots[i]!), scores: Float64Array.from(order, (i) => scores[i]!) };
  }

  /** Each BM25 term id's expansion row (-1 for none), per field, brought up to date with both. */
  private termRows(): { text: Int32Array; context: Int32Array } {
    const rows = this.rowTerm.length;
    if (this.rowOfId.rows !== rows) this.rowOfId = { rows, text: new Int32Array(0), context: new Int32Array(0) };
    const fill = (field: Bm25Index, known: Int32Array): Int32Array => {
      if (known.length === field.termCount) return known;
      const out = new Int32Array(field.termCount);
      out.set(known);
      for (let id = known.length; id < out.length; id++) out[id] = this.termRow.get(field.term(id)) ?? -1;
      return out;
    };
    this.rowOfId.text = fill(this.bm25, this.rowOfId.text);
    this.rowOfId.context = fill(this.contextBm25, this.rowOfId.context);
    return this.rowOfId;
  }

  private placeContext(slot: number, item: MemoryItem): void {
    if (item.context !== undefined && item.context.length > 0) this.contextBm25.set(slot, terms(item.context));
    else this.contextBm25.delete(slot);
  }

  /** What the embedder is given for a memory. */
  private embeddedText(item: MemoryItem): string {
    return (this.options.embedSpeaker ?? true) ? `${item.speaker}: ${item.text}` : item.text;
  }

  /** Whether the index already holds a vector of exactly what `item` would be embedded as. */
  private sameEmbedding(item: MemoryItem): boolean {
    const held = this.get(item.id);
    return held !== undefined && held.text === item.text && held.speaker === item.speaker;
  }

  private codeOfSpeaker(speaker: string): number {
    let code = this.speakerCode.get(speaker);
    if (code === undefined) {
      this.speakerCode.set(speaker, (code = this.speakerCode.size + 1));
      this.speakerTerms.set(speaker, terms(speaker));
    }
    return code;
  }

  /** The speakers whose every name term is in the query (a speaker ever indexed, even if since removed). */
  private namedSpeakers(queryTerms: readonly string[]): Set<string> {
    const named = new Set<string>();
    if (queryTerms.length === 0) return named;
    const inQuery = new Set(queryTerms);
    for (const [speaker, nameTerms] of this.speakerTerms) {
      if (nameTerms.length > 0 && nameTerms.every((t) => inQuery.has(t))) named.add(speaker);
    }
    return named;
  }

  /**
   * The last privacy mask and what it was computed from: a conversation's searches come from the same
   * listener, so at 100,000 memories this saves a full pass per search. Any change of the memories bumps
   * `version`, which invalidates it; the rankings only read it.
   */
  private lastMask: { version: number; listenerCode: number; isOwner: boolean; kindMask: number; mask: Uint8Array } | undefined;
  private version = 0;

  private growCodes(min: number): void {
    const n = Math.max(min, this.audience.length * 2);
    const audience = new Uint8Array(n);
    audience.set(this.audience);
    const speaker = new Int32Array(n);
    speaker.set(this.speaker);
    const kind = new Uint8Array(n);
    kind.set(this.kind);
    this.audience = audience;
    this.speaker = speaker;
    this.kind = kind;
  }

  /**
   * The privacy mask: 1 for each slot holding a memory the listener may hear (and of a wanted kind). The
   * same rule as mayHear, read from per-slot codes: "everyone" always, "speaker" only for that speaker,
   * "owner" only for the owner.
   */
  private allowed(options: SearchOptions): Uint8Array {
    const { listener } = options;
    const listenerCode = this.speakerCode.get(listener.userId) ?? -1;
    let kindMask = 0xff;
    if (options.kinds !== undefined) {
      kindMask = 0;
      for (const k of options.kinds) kindMask |= 1 << KIND_CODE.get(k)!;
    }
    const n = this.bySlot.length;
    const isOwner = !!listener.isOwner;
    const cached = this.lastMask;
    if (cached !== undefined && cached.version === this.version && cached.listenerCode === listenerCode && cached.isOwner === isOwner && cached.kindMask === kindMask) {
      return cached.mask;
    }
    const mask = new Uint8Array(n);
    const { audience, speaker, kind } = this;
    for (let slot = 0; slot < n; slot++) {
      const a = audience[slot];
      const hear = a === 1 || (a === 2 && speaker[slot] === listenerCode) || (a === 3 && listener.isOwner);
      mask[slot] = hear && (kindMask & (1 << kind[slot]!)) !== 0 ? 1 : 0;
    }
    this.lastMask = { version: this.version, listenerCode, isOwner, kindMask, mask };
    return mask;
  }

  /**
   * The query without the names of speakers it names, for the vector ranking: a rare name dominates a
   * rarity-weighted mean, pulling the query toward every memory that mentions the person rather than toward
   * what is asked about them (the speaker weight and BM25's speaker term already cover the person).
   */
  private withoutNames(query: string, named: ReadonlySet<string>): string {
    if (named.size === 0) return query;
    const nameTerms = new Set<string>();
    for (const speaker of named) for (const t of this.speakerTerms.get(speaker) ?? []) nameTerms.add(t);
    return words(query)
      .filter((w) => !nameTerms.has(stem(w)))
      .join(" ");
  }

  /** BM25 over the text plus BM25 over the context at its weight (each field with its own statistics). */
  private lexical(query: { terms: readonly string[]; weights?: readonly number[] }, allowed: Uint8Array, n: number): Ranking {
    const fields = [{ index: this.bm25, weight: 1 }];
    if (this.contextBm25.size > 0) fields.push({ index: this.contextBm25, weight: this.weights.context });
    return searchFields(fields, query.terms, allowed, n, query.weights);
  }

  private queryTerms(query: string): string[] {
    return terms(query);
  }

  private async embedQuery(query: string, signal: AbortSignal | undefined): Promise<Float32Array> {
    signal?.throwIfAborted();
    const vectors = await this.embedder.embed([query], signal === undefined ? {} : { signal });
    this.checkVectors(vectors, 1);
    return vectors[0]!;
  }

  private checkVectors(vectors: Float32Array[], count: number): void {
    if (vectors.length !== count) throw new EmbeddingShapeError(this.embedder.id, `${vectors.length} vectors for ${count} texts`);
    for (const v of vectors) {
      if (v.length !== this.embedder.dimensions) {
        throw new EmbeddingShapeError(this.embedder.id, `a vector of ${v.length} dimensions, declared ${this.embedder.dimensions}`);
      }
    }
  }

  private hitsOf(ranking: Ranking): SearchHit[] {
    return Array.from(ranking.slots, (slot, i) => ({ item: this.bySlot[slot]!, score: ranking.scores[i]! }));
  }

  /**
   * Sorts (ties by id, so equal indexes answer equally whatever their insertion order), cuts to k, and checks
   * the privacy rule once more with mayHear itself: a second, independent guard on the mask.
   */
  private finish(hits: SearchHit[], options: SearchOptions): SearchHit[] {
    options.signal?.throwIfAborted();
    return hits
      .filter((hit) => mayHear(hit.item, options.listener))
      .sort((a, b) => b.score - a.score || (a.item.id < b.item.id ? -1 : a.item.id > b.item.id ? 1 : 0))
      .slice(0, options.k);
  }
}

const align4 = (n: number): number => Math.ceil(n / 4) * 4;
const align8 = (n: number): number => Math.ceil(n / 8) * 8;

/** Version 2's memory columns, slot by slot (see {@link MemoryIndex.serialize}). */
interface ItemColumns {
  form: Uint8Array;
  kind: Uint8Array;
  audience: Uint8Array;
  speaker: Int32Array;
  time: Float64Array;
  /** NaN where the memory has none. */
  importance: Float64Array;
  /** Per slot, where its id, text and context end in the decoded text (UTF-16 units); each starts where the last ended. */
  ends: Uint32Array;
  text: Uint8Array;
  verbatim: [number, MemoryItem][];
}

/** Whether a memory round-trips through the columns: only their fields, and strings UTF-8 can carry. */
function fitsColumns(item: MemoryItem): boolean {
  for (const key in item) if (!COLUMN_FIELDS.has(key)) return false;
  if (typeof item.context !== "string" && item.context !== undefined) return false;
  return !LONE_SURROGATE.test(item.id) && !LONE_SURROGATE.test(item.text) && !LONE_SURROGATE.test(item.speaker) && !LONE_SURROGATE.test(item.context ?? "");
}

const LONE_SURROGATE = /\p{Cs}/u;

/**
 * The memories from version 2's columns, by slot (undefined for a hole). Shapes and ranges are checked here;
 * the memories themselves by the caller, as upsert checks them.
 */
function readItems(columns: ItemColumns, speakers: readonly string[]): (MemoryItem | undefined)[] {
  const fail = (detail: string): never => {
    throw new MemoryIndexFormatError(detail);
  };
  const { form, kind, audience, speaker, time, importance, ends } = columns;
  const slotCount = form.length;
  const text = new TextDecoder().decode(columns.text);
  const items: (MemoryItem | undefined)[] = new Array<MemoryItem | undefined>(slotCount);
  let cursor = 0;
  for (let slot = 0; slot < slotCount; slot++) {
    const f = form[slot]!;
    const idEnd = ends[slot * 3]!;
    const textEnd = ends[slot * 3 + 1]!;
    const contextEnd = ends[slot * 3 + 2]!;
    if (!(cursor <= idEnd && idEnd <= textEnd && textEnd <= contextEnd && contextEnd <= text.length)) fail(`slot ${slot}'s strings lie outside the text`);
    if (f === SlotForm.Columns || f === SlotForm.ColumnsWithContext) {
      const code = speaker[slot]!;
      if (!(code >= 1 && code <= speakers.length)) fail(`slot ${slot} names speaker ${code}, of ${speakers.length}`);
      const item: MemoryItem = {
        id: text.slice(cursor, idEnd),
        kind: MEMORY_KINDS[kind[slot]!]!,
        text: text.slice(idEnd, textEnd),
        speaker: speakers[code - 1]!,
        audience: AUDIENCES[audience[slot]!]!,
        time: time[slot]!,
      };
      if (!Number.isNaN(importance[slot]!)) item.importance = importance[slot]!;
      if (f === SlotForm.ColumnsWithContext) item.context = text.slice(textEnd, contextEnd);
      else if (contextEnd !== textEnd) fail(`slot ${slot} has context text but no context`);
      items[slot] = item;
    } else if (f !== SlotForm.Hole && f !== SlotForm.Verbatim) {
      fail(`slot ${slot} has form ${f}`);
    } else if (idEnd !== cursor || contextEnd !== cursor) {
      fail(`slot ${slot} holds strings but no memory in columns`);
    }
    cursor = contextEnd;
  }
  if (cursor !== text.length) fail("the text holds more than the memories' strings");
  for (const entry of columns.verbatim) {
    if (!Array.isArray(entry) || entry.length !== 2) fail("a saved memory is malformed");
    const [slot, item] = entry;
    if (!Number.isInteger(slot) || !(slot >= 0 && slot < slotCount) || form[slot] !== SlotForm.Verbatim || items[slot] !== undefined) fail(`saved memory at slot ${String(slot)} does not fit its slot`);
    items[slot] = item;
  }
  for (let slot = 0; slot < slotCount; slot++) if (form[slot] === SlotForm.Verbatim && items[slot] === undefined) fail(`slot ${slot}'s memory is missing`);
  return items;
}

/** Byte offsets of version 2's tables, from the counts in its header; `end` is the whole save's length. */
interface LayoutV2 {
  form: number;
  kind: number;
  audience: number;
  speaker: number;
  time: number;
  importance: number;
  ends: number;
  text: number;
  fields: { lengths: number; postingLength: number; slots: number; tfs: number }[];
  vectors: number;
  codes: number;
  scales: number;
  end: number;
}

function layoutV2(binaryAt: number, slotCount: number, textBytes: number, fields: readonly { terms: number; postings: number }[], dimensions: number, stride: number): LayoutV2 {
  let at = binaryAt;
  // Every table 8-byte aligned, so one aligned base serves every element size.
  const take = (bytes: number): number => {
    const start = at;
    at = align8(at + bytes);
    return start;
  };
  return {
    form: take(slotCount),
    kind: take(slotCount),
    audience: take(slotCount),
    speaker: take(slotCount * 4),
    time: take(slotCount * 8),
    importance: take(slotCount * 8),
    ends: take(slotCount * 12),
    text: take(textBytes),
    fields: fields.map((f) => ({ lengths: take(slotCount * 4), postingLength: take(f.terms * 4), slots: take(f.postings * 4), tfs: take(f.postings * 2) })),
    vectors: take(slotCount * dimensions * 4),
    codes: take(slotCount * stride),
    scales: take(slotCount * 4),
    end: at,
  };
}

function checkItem(item: MemoryItem): MemoryItem {
  const problems: string[] = [];
  if (item === null || typeof item !== "object") throw new InvalidMemoryItemError(undefined, ["a memory is an object"]);
  if (typeof item.id !== "string" || item.id.length === 0) problems.push("id is a non-empty string");
  if (!KIND_CODE.has(item.kind)) problems.push(`kind ${JSON.stringify(item.kind)} is not one of ${MEMORY_KINDS.join(", ")}`);
  if (typeof item.text !== "string") problems.push("text is a string");
  if (typeof item.speaker !== "string") problems.push("speaker is a string");
  if (item.context !== undefined && typeof item.context !== "string") problems.push("context is a string when present");
  if (!Object.hasOwn(AUDIENCE_CODE, item.audience)) problems.push(`audience ${JSON.stringify(item.audience)} is not everyone, speaker or owner`);
  if (!Number.isFinite(item.time)) problems.push("time is milliseconds since the epoch");
  if (item.importance !== undefined && !(item.importance >= 0 && item.importance <= 1)) problems.push("importance is between 0 and 1");
  if (problems.length > 0) throw new InvalidMemoryItemError(item.id, problems);
  return item;
}

/** A saved memory, checked as upsert checks one, but refused as a format error: the save is what is wrong. */
function checkSavedItem(item: MemoryItem): MemoryItem {
  try {
    return checkItem(item);
  } catch (err) {
    if (err instanceof InvalidMemoryItemError) throw new MemoryIndexFormatError(`a saved memory is invalid (${err.problems.join("; ")})`);
    throw err;
  }
}

/** A copy the caller cannot change under the index (its audience and speaker are indexed as codes). */
function copyItem(item: MemoryItem): MemoryItem {
  return { ...item, ...(item.sources !== undefined && { sources: [...item.sources] }) };
}
