/**
 * Choosing a provider: ask each candidate for a quote (which also measures the round trip), then rank by
 * what a typical turn would cost, how fast it answers, its settled history, whether it already holds the
 * persona's adapter, and how busy it is. The ranking is a pure function so that it can be tested and tuned
 * without a network.
 */
import type { Libp2p } from "libp2p";
import { getAddress } from "ethers";
import type { Quote } from "../protocol/messages.js";
import { requestProtocol } from "../protocol/stream.js";
import {
  DEFAULT_REPUTATION_POLICY,
  EMPTY_REPUTATION,
  resolveProvider,
  type ProviderRecord,
  type Reputation,
  type ResolvedProvider,
} from "./discovery.js";

/** A provider that answered a quote. */
export interface QuotedProvider extends ResolvedProvider {
  /** The record's address (checksummed). */
  address: string;
  quote: Quote;
  /** Round trip of the quote request on an open connection, in milliseconds. */
  latencyMs: number;
  reputation: Reputation;
}

/** What the ranking reads of a candidate. */
export interface RankInput {
  /** The provider's registered address; its quote must name the same. */
  address: string;
  quote: Quote;
  latencyMs: number;
  reputation: Reputation;
}

/**
 * How much each factor moves a score. Scores multiply (lower is better), so each factor's weight is
 * independent of the units of the others.
 */
export interface RankingWeights {
  /** Exponent on the typical turn's cost relative to the cheapest candidate's. */
  price: number;
  /** Exponent on the latency (plus 50 ms, so that differences of a few ms, small beside a turn's seconds, barely count) relative to the fastest. */
  latency: number;
  /** Score multiplier per request in the provider's queue. */
  queue: number;
  /**
   * Strength of settled history: the score divides by 1 + reputation × log2(1 + standing / reputationUnit),
   * standing being the value paid by distinct funded payers, each capped (see reputation-cache.ts). Not the
   * number of settled vouchers: that is free to fake (attack 7 of issue 14).
   */
  reputation: number;
  /** Fraction taken off the score when the persona's adapter is already cached (no download, no load). */
  adapterCached: number;
}

export const DEFAULT_RANKING_WEIGHTS: RankingWeights = Object.freeze({
  price: 1,
  latency: 0.5,
  queue: 0.25,
  reputation: 0.1,
  adapterCached: 0.3,
});

/** The turn a price is judged on, in tokens. */
export interface TypicalTurn {
  inputTokens: number;
  outputTokens: number;
}

export const DEFAULT_TYPICAL_TURN: TypicalTurn = Object.freeze({ inputTokens: 1_000, outputTokens: 250 });

export interface RankOptions {
  modelSha256: string;
  /** The persona's adapter, when it has one: candidates that cache it rank higher. */
  adapterSha256?: string;
  typicalTurn?: TypicalTurn;
  weights?: Partial<RankingWeights>;
  /** Candidates quoting above these prices (per million tokens) are left out. */
  maxPrices?: { input: bigint; output: bigint };
  /** Candidates whose quote allows fewer tokens per turn are left out. */
  minMaxTokens?: number;
  /**
   * Standing worth one step of the log scale, in token units. Default the reputation policy's `minPayerPaid`
   * (0.01 tUSD): one funded payer at the minimum counts as log2(2) = 1.
   */
  reputationUnit?: bigint;
}

export interface RankedProvider<T extends RankInput = RankInput> {
  candidate: T;
  /** Lower is better; 1 would be a candidate best on every factor with no queue and no history. */
  score: number;
  /** Provider share of the typical turn at the quoted prices, in token units (rounded down as the escrow does). */
  expectedTurnCost: bigint;
  adapterCached: boolean;
}

/**
 * Candidates that serve the model, best first. Leaves out those whose quote does not list the model, names
 * another provider address than their record, or breaks `maxPrices`/`minMaxTokens`. Ties go to the lower
 * address, so that the same inputs always give the same order.
 *
 * @example
 * const [best] = rankProviders(quoted, { modelSha256, adapterSha256 })
 */
export function rankProviders<T extends RankInput>(candidates: readonly T[], options: RankOptions): RankedProvider<T>[] {
  const w = { ...DEFAULT_RANKING_WEIGHTS, ...options.weights };
  const turn = options.typicalTurn ?? DEFAULT_TYPICAL_TURN;
  const model = options.modelSha256.toLowerCase();
  const adapter = options.adapterSha256?.toLowerCase();
  const unit = Number(options.reputationUnit ?? DEFAULT_REPUTATION_POLICY.minPayerPaid);
  if (!(unit > 0)) throw new RangeError("reputationUnit must be positive");
  const eligible = candidates.filter((c) => {
    const q = c.quote;
    if (!q.models.some((m) => m.toLowerCase() === model)) return false;
    if (getAddress(q.provider) !== getAddress(c.address)) return false;
    if (options.maxPrices !== undefined) {
      if (BigInt(q.priceInputPerMillion) > options.maxPrices.input || BigInt(q.priceOutputPerMillion) > options.maxPrices.output) return false;
    }
    if (options.minMaxTokens !== undefined && q.maxTokens < options.minMaxTokens) return false;
    return true;
  });
  if (eligible.length === 0) return [];
  // Exact in bigint; the escrow's division by a million is applied only to the reported cost.
  const costOf = (q: Quote) =>
    BigInt(turn.inputTokens) * BigInt(q.priceInputPerMillion) + BigInt(turn.outputTokens) * BigInt(q.priceOutputPerMillion);
  const costs = eligible.map((c) => costOf(c.quote));
  const minCost = costs.reduce((a, b) => (b < a ? b : a));
  const minLatency = Math.min(...eligible.map((c) => Math.max(0, c.latencyMs)));
  const ranked = eligible.map((c, i): RankedProvider<T> => {
    const cost = costs[i]!;
    // +1 keeps free providers comparable; Number() on the ratio's parts loses only digits that do not matter here.
    const priceRatio = Number(cost + 1n) / Number(minCost + 1n);
    const latencyRatio = (Math.max(0, c.latencyMs) + 50) / (minLatency + 50);
    const cached = adapter !== undefined && c.quote.cachedAdapters.some((a) => a.toLowerCase() === adapter);
    const score =
      priceRatio ** w.price *
      latencyRatio ** w.latency *
      (1 + w.queue * c.quote.queueLength) *
      (cached ? 1 - w.adapterCached : 1) /
      (1 + w.reputation * Math.log2(1 + Number(c.reputation.standing) / unit));
    return { candidate: c, score, expectedTurnCost: cost / 1_000_000n, adapterCached: cached };
  });
  return ranked.sort((a, b) => a.score - b.score || (getAddress(a.candidate.address) < getAddress(b.candidate.address) ? -1 : 1));
}

export interface QuoteOptions {
  modelSha256: string;
  adapterSha256?: string;
  /** Time for the quote's round trip. Default 3 s. */
  timeoutMs?: number;
  signal?: AbortSignal;
}

/**
 * Asks a resolved provider for its quote on the model (and adapter), timing the round trip.
 *
 * @example
 * const { quote, latencyMs } = await requestQuote(libp2p, resolved.peerId, { modelSha256 })
 * @throws the provider's typed ProtocolError, ProtocolTimeoutError, or ProtocolStreamError.
 */
export async function requestQuote(
  libp2p: Libp2p,
  peer: ResolvedProvider["peerId"],
  options: QuoteOptions,
): Promise<{ quote: Quote; latencyMs: number }> {
  const started = performance.now();
  const quote = await requestProtocol(
    libp2p,
    peer,
    "quote",
    { type: "quote.request", models: [options.modelSha256], adapters: options.adapterSha256 === undefined ? [] : [options.adapterSha256] },
    { timeoutMs: options.timeoutMs ?? 3_000, ...(options.signal !== undefined && { signal: options.signal }) },
  );
  return { quote, latencyMs: performance.now() - started };
}

export interface GatherQuotesOptions extends QuoteOptions {
  /** Settled history by checksummed address (see readReputation); missing means none. */
  reputation?: ReadonlyMap<string, Reputation>;
  /** Time to connect to each provider (registry addresses, then DHT). Default 5 s. */
  resolveTimeoutMs?: number;
}

/** A provider left out while gathering quotes, and why. */
export interface UnquotedProvider {
  record: ProviderRecord;
  error: unknown;
}

/**
 * Connects to every record and asks each for a quote, all at once: one slow provider costs its timeout,
 * not the sum of all.
 *
 * @example
 * const { quoted, unreachable } = await gatherQuotes(libp2p, records, { modelSha256, reputation, signal })
 */
export async function gatherQuotes(
  libp2p: Libp2p,
  records: readonly ProviderRecord[],
  options: GatherQuotesOptions,
): Promise<{ quoted: QuotedProvider[]; unreachable: UnquotedProvider[] }> {
  const results = await Promise.all(
    records.map(async (record): Promise<QuotedProvider | UnquotedProvider> => {
      try {
        const resolved = await resolveProvider(libp2p, record, {
          timeoutMs: options.resolveTimeoutMs ?? 5_000,
          ...(options.signal !== undefined && { signal: options.signal }),
        });
        const { quote, latencyMs } = await requestQuote(libp2p, resolved.peerId, options);
        return { ...resolved, address: record.address, quote, latencyMs, reputation: options.reputation?.get(record.address) ?? EMPTY_REPUTATION };
      } catch (error) {
        options.signal?.throwIfAborted();
        return { record, error };
      }
    }),
  );
  const quoted: QuotedProvider[] = [];
  const unreachable: UnquotedProvider[] = [];
  for (const r of results) {
    if ("quote" in r) quoted.push(r);
    else unreachable.push(r);
  }
  return { quoted, unreachable };
}
