/**
 * How the two rankings are fused and how a memory's kind, importance, age, speaker and date move it. Weights
 * multiply the fused score, so they reorder memories of similar relevance and cannot lift an irrelevant one
 * past a clearly relevant one: a topic summary beats a segment summary that matched equally well.
 */
import type { Listener, MemoryItem, MemoryKind } from "../types.js";
import type { DateSpan } from "./dates.js";

/** Every knob of hybrid ranking. */
export interface RetrievalWeights {
  /** Reciprocal rank fusion constant: a hit at rank r (from 1) adds weight / (rrfK + r). */
  rrfK: number;
  /** The weight of the BM25 ranking in the fusion. */
  bm25: number;
  /** The weight of the vector ranking in the fusion. */
  vector: number;
  /** The weight of a memory's `context` (its neighbouring turns) in its BM25 score, against 1 for its text. */
  context: number;
  /**
   * The BM25 weight of a query word's nearest indexed words (word-vector neighbours, for embedders that have
   * word vectors), times their cosine similarity; 0 turns expansion off.
   */
  expansion: number;
  /**
   * The weight in the fusion of a third ranking, of the candidates the other two found: by how well each query
   * word is matched in meaning by some word of the memory's text or context (its best word-vector cosine there,
   * the query words weighted by their BM25 idf), for embedders that have word vectors; 0 turns it off. It finds
   * "kids" for "family" and "bowling" for "activity", which BM25 misses and a whole-sentence vector blurs.
   */
  softMatch: number;
  /** How many neighbours each query word adds at most. */
  expansionNeighbours: number;
  /** The least cosine similarity of a neighbour that is added. */
  expansionMinSimilarity: number;
  /** How deep each ranking is read before fusion. */
  candidates: number;
  /** Multiplier per memory kind. */
  kind: Record<MemoryKind, number>;
  /** Importance i ∈ [0, 1] (default 0.5) multiplies by 1 + importance · (i − 0.5). */
  importance: number;
  /** Age at which the recency bonus halves, in days (age relative to the search's `now`). */
  recencyHalfLifeDays: number;
  /** Recency multiplies by floor + (1 − floor) · 2^(−age / half-life): an old memory keeps `floor`. */
  recencyFloor: number;
  /** Multiplier for memories the listener said (speaker === listener.userId). */
  listenerSpeaker: number;
  /**
   * Multiplier for memories said by someone the query names ("what does Melanie like?" → Melanie's own
   * words first, before others' mentions of her).
   */
  namedSpeaker: number;
  /**
   * Multiplier for memories from a date the query names ("what did she say on 16 November?", "in July
   * 2023"): from `dateDaysBefore` days before the day, month or year named to `dateDaysAfter` days after it.
   * 1 turns it off.
   */
  date: number;
  /** How many days before a named date still count as from it (a user's local day is not UTC's). */
  dateDaysBefore: number;
  /** How many days after a named date still count as from it (what happened is often told a day or two later). */
  dateDaysAfter: number;
}

/**
 * The defaults, measured on LoCoMo (bench/memory-locomo.ts; chosen on conversations 26 and 41, checked on 43, 47
 * and 49). The vector ranking weighs less than the BM25 ranking: with the word-vector embedder it is the weaker
 * of the two (recall@10 0.49 against 0.69), and at equal weight it pulled the hybrid below BM25 alone. rrfK 20
 * rather than the textbook 60 lets a ranking's top few count more (+0.01 to +0.03 on each half). A memory's
 * context (its neighbouring turns) counts as much as its text in BM25: a reply is found by the question it
 * answers (+0.06 hybrid recall@10 on each half with ±1 turn; 0.3 and 0.7 gave less on the tuning half; with
 * ±2 turns, 1 again beat 0.5, 0.7, 1.2 and 1.5).
 * Expansion: each query word adds its nearest indexed word (cosine ≥ 0.6) at 0.2 × similarity: hybrid recall@10
 * 0.789 against 0.781 on the tuning half, 0.759 against 0.753 on the other; three neighbours, or weights 0.3
 * and 0.4, helped the tuning half only. It costs about 1.5 ms at p95 with 100,000 memories (3.7 to 4.9–6.0 ms).
 * Kinds: distilled memories (profile, notebook, topic summaries) above the turns they came from.
 * The recency floor is high because in a long companion relationship old facts stay true (LoCoMo questions
 * reach back months); recency breaks near-ties rather than deciding.
 * The soft match (word-level meaning of the candidates' text and context, see softMatch) at 0.8: hybrid recall@10
 * 0.827 against 0.802 on the tuning half, 0.785 against 0.778 on the other (0.5, 0.6, 0.7, 0.9 and 1 gave 0.820 to
 * 0.824 on the tuning half; squaring the similarities or weighing context words at 0.5 to 0.9 gave no more there).
 * Dates named in the query (dates.ts) multiply memories from then by 3, from a day before to three days after:
 * hybrid recall@10 0.802 against 0.789 on the tuning half, 0.778 against 0.759 on the other (108 of the 788
 * questions name a date). 2 to 4 tied on the tuning half; margins of 3 days after beat 1, 7 and 14 there on
 * recall@5 only; years ("in 2023") count too (leaving them out changed nothing on the tuning half).
 */
export const DEFAULT_WEIGHTS: RetrievalWeights = {
  rrfK: 20,
  bm25: 1,
  vector: 0.4,
  context: 1,
  expansion: 0.2,
  softMatch: 0.8,
  expansionNeighbours: 1,
  expansionMinSimilarity: 0.6,
  candidates: 100,
  kind: {
    turn: 1,
    "segment-summary": 1.1,
    "topic-summary": 1.25,
    profile: 1.4,
    notebook: 1.4,
    "working-memory": 1.2,
  },
  importance: 0.5,
  recencyHalfLifeDays: 30,
  recencyFloor: 0.85,
  listenerSpeaker: 1.15,
  namedSpeaker: 1.5,
  date: 3,
  dateDaysBefore: 1,
  dateDaysAfter: 3,
};

/**
 * Fills the defaults under partial weights (the kind table merges per kind).
 *
 * @example
 * resolveWeights({ recencyFloor: 1 }).rrfK // 60
 */
export function resolveWeights(partial: Partial<RetrievalWeights> = {}): RetrievalWeights {
  return { ...DEFAULT_WEIGHTS, ...partial, kind: { ...DEFAULT_WEIGHTS.kind, ...partial.kind } };
}

const DAY_MS = 86_400_000;

/**
 * The multiplier of one memory for one listener at time `now`, for a query that names `namedSpeakers` and
 * `namedDates`.
 *
 * @example
 * memoryBoost(resolveWeights(), item, { userId: "alice", isOwner: false }, Date.now())
 */
export function memoryBoost(
  weights: RetrievalWeights,
  item: MemoryItem,
  listener: Listener,
  now: number,
  namedSpeakers: ReadonlySet<string> = new Set(),
  namedDates: readonly DateSpan[] = [],
): number {
  const importance = Math.min(1, Math.max(0, item.importance ?? 0.5));
  const ageDays = Math.max(0, now - item.time) / DAY_MS;
  const recency =
    weights.recencyHalfLifeDays > 0
      ? weights.recencyFloor + (1 - weights.recencyFloor) * Math.pow(2, -ageDays / weights.recencyHalfLifeDays)
      : 1;
  const speaker = (item.speaker === listener.userId ? weights.listenerSpeaker : 1) * (namedSpeakers.has(item.speaker) ? weights.namedSpeaker : 1);
  return weights.kind[item.kind] * (1 + weights.importance * (importance - 0.5)) * recency * speaker * dateFactor(weights, item.time, namedDates);
}

/** `weights.date` when `time` falls in one of the named dates (widened by the margins), else 1. */
function dateFactor(weights: RetrievalWeights, time: number, namedDates: readonly DateSpan[]): number {
  for (const span of namedDates) {
    if (time >= span.from - weights.dateDaysBefore * DAY_MS && time < span.to + weights.dateDaysAfter * DAY_MS) return weights.date;
  }
  return 1;
}
