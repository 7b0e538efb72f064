import { describe, expect, it } from "vitest";
import {
  DEFAULT_REPUTATION_POLICY,
  EMPTY_REPUTATION,
  foldSettlements,
  registryAddresses,
  reputationOf,
  type ProviderLedger,
  type Reputation,
  type SettlementEntry,
} from "../../sdk/client/discovery.js";
import { rankProviders, type RankInput } from "../../sdk/client/selection.js";
import type { Quote } from "../../sdk/protocol/messages.js";

const MODEL = `0x${"ab".repeat(32)}`;
const OTHER_MODEL = `0x${"cd".repeat(32)}`;
const ADAPTER = `0x${"01".repeat(32)}`;
const addr = (n: number) => `0x${n.toString(16).padStart(2, "0").repeat(20)}`;

function candidate(n: number, quote: Partial<Quote> = {}, extra: { latencyMs?: number; reputation?: Partial<Reputation> } = {}): RankInput {
  const address = addr(n);
  return {
    address,
    latencyMs: extra.latencyMs ?? 10,
    reputation: { ...EMPTY_REPUTATION, ...extra.reputation },
    quote: {
      type: "quote",
      provider: address,
      models: [MODEL],
      cachedAdapters: [],
      priceInputPerMillion: "1000000",
      priceOutputPerMillion: "3000000",
      queueLength: 0,
      maxTokens: 4096,
      ...quote,
    },
  };
}

const order = (ranked: { candidate: RankInput }[]) => ranked.map((r) => r.candidate.address);

describe("rankProviders", () => {
  it("keeps only candidates whose quote serves the model under their own address", () => {
    const ranked = rankProviders(
      [
        candidate(1),
        candidate(2, { models: [OTHER_MODEL] }),
        candidate(3, { provider: addr(9) }),
        candidate(4, { models: [MODEL.toUpperCase().replace("0X", "0x")] }),
      ],
      { modelSha256: MODEL },
    );
    expect(order(ranked).sort()).toEqual([addr(1), addr(4)].sort());
  });

  it("prefers the cheaper typical turn, and reports its cost", () => {
    const ranked = rankProviders([candidate(1, { priceOutputPerMillion: "6000000" }), candidate(2)], { modelSha256: MODEL });
    expect(order(ranked)).toEqual([addr(2), addr(1)]);
    // 1000 in × 1.0 + 250 out × 3.0 per token.
    expect(ranked[0]!.expectedTurnCost).toBe(1750n);
    expect(ranked[1]!.expectedTurnCost).toBe(2500n);
  });

  it("judges price on the typical turn's mix of input and output", () => {
    const inputHeavy = candidate(1, { priceInputPerMillion: "500000", priceOutputPerMillion: "9000000" });
    const outputHeavy = candidate(2, { priceInputPerMillion: "2000000", priceOutputPerMillion: "1000000" });
    expect(order(rankProviders([inputHeavy, outputHeavy], { modelSha256: MODEL, typicalTurn: { inputTokens: 10_000, outputTokens: 10 } }))[0]).toBe(addr(1));
    expect(order(rankProviders([inputHeavy, outputHeavy], { modelSha256: MODEL, typicalTurn: { inputTokens: 10, outputTokens: 10_000 } }))[0]).toBe(addr(2));
  });

  it("prefers lower latency at equal price, but a few ms do not outweigh a real price gap", () => {
    expect(order(rankProviders([candidate(1, {}, { latencyMs: 400 }), candidate(2, {}, { latencyMs: 20 })], { modelSha256: MODEL }))).toEqual([addr(2), addr(1)]);
    const cheapSlower = candidate(1, { priceOutputPerMillion: "1500000" }, { latencyMs: 25 });
    expect(order(rankProviders([cheapSlower, candidate(2, {}, { latencyMs: 5 })], { modelSha256: MODEL }))[0]).toBe(addr(1));
  });

  it("prefers a settled history, more with more standing (value paid by funded payers)", () => {
    // Standing, not the voucher count: counting vouchers let 40 zero-value self-settlements outrank real usage
    // (attack 7 of issue 14), so this test, which ranked by settledVouchers, now ranks by standing.
    const ranked = rankProviders(
      [candidate(1), candidate(2, {}, { reputation: { standing: 50_000n } }), candidate(3, {}, { reputation: { standing: 5_000_000n } })],
      { modelSha256: MODEL },
    );
    expect(order(ranked)).toEqual([addr(3), addr(2), addr(1)]);
  });

  it("attack 7: settled vouchers without standing count for nothing", () => {
    const ranked = rankProviders(
      [candidate(1, {}, { reputation: { settledVouchers: 500, payers: 40 } }), candidate(2, {}, { reputation: { standing: 10_000n, fundedPayers: 1 } })],
      { modelSha256: MODEL },
    );
    expect(order(ranked)).toEqual([addr(2), addr(1)]);
    expect(ranked[1]!.score).toBe(rankProviders([candidate(1)], { modelSha256: MODEL })[0]!.score);
  });

  it("reads standing on a log scale: doubling it takes twice the value, and a tenfold price is not made up by it", () => {
    const score = (standing: bigint) => rankProviders([candidate(1, {}, { reputation: { standing } })], { modelSha256: MODEL })[0]!.score;
    // One funded payer at the minimum (one unit) divides the score by 1 + 0.1 × log2(2).
    expect(score(10_000n)).toBeCloseTo(score(0n) / 1.1, 10);
    expect(score(1_270_000n)).toBeCloseTo(score(0n) / 1.7, 10);
    const rich = candidate(1, { priceOutputPerMillion: "30000000" }, { reputation: { standing: 10n ** 15n } });
    expect(order(rankProviders([rich, candidate(2)], { modelSha256: MODEL }))).toEqual([addr(2), addr(1)]);
    expect(() => rankProviders([candidate(1)], { modelSha256: MODEL, reputationUnit: 0n })).toThrow(RangeError);
  });

  it("prefers a provider that already caches the persona's adapter", () => {
    const ranked = rankProviders([candidate(1), candidate(2, { cachedAdapters: [ADAPTER] })], { modelSha256: MODEL, adapterSha256: ADAPTER });
    expect(order(ranked)).toEqual([addr(2), addr(1)]);
    expect(ranked[0]!.adapterCached).toBe(true);
    // Without an adapter to look for, caching means nothing.
    expect(rankProviders([candidate(2, { cachedAdapters: [ADAPTER] })], { modelSha256: MODEL })[0]!.adapterCached).toBe(false);
  });

  it("prefers a shorter queue", () => {
    expect(order(rankProviders([candidate(1, { queueLength: 8 }), candidate(2, { queueLength: 1 })], { modelSha256: MODEL }))).toEqual([addr(2), addr(1)]);
  });

  it("applies price ceilings and a minimum per-turn token allowance", () => {
    const candidates = [candidate(1), candidate(2, { priceInputPerMillion: "9000000" }), candidate(3, { maxTokens: 16 })];
    const ranked = rankProviders(candidates, { modelSha256: MODEL, maxPrices: { input: 2_000_000n, output: 3_000_000n }, minMaxTokens: 256 });
    expect(order(ranked)).toEqual([addr(1)]);
  });

  it("weights can turn a factor off", () => {
    const ranked = rankProviders([candidate(1, { priceOutputPerMillion: "9000000" }, { latencyMs: 1 }), candidate(2, {}, { latencyMs: 900 })], {
      modelSha256: MODEL,
      weights: { price: 0 },
    });
    expect(order(ranked)).toEqual([addr(1), addr(2)]);
  });

  it("is deterministic: ties go to the lower address, whatever the input order", () => {
    const a = rankProviders([candidate(3), candidate(1), candidate(2)], { modelSha256: MODEL });
    const b = rankProviders([candidate(2), candidate(3), candidate(1)], { modelSha256: MODEL });
    expect(order(a)).toEqual([addr(1), addr(2), addr(3)]);
    expect(order(b)).toEqual(order(a));
  });

  it("handles free providers and an empty list", () => {
    expect(rankProviders([], { modelSha256: MODEL })).toEqual([]);
    const ranked = rankProviders([candidate(1, { priceInputPerMillion: "0", priceOutputPerMillion: "0" }), candidate(2)], { modelSha256: MODEL });
    expect(order(ranked)[0]).toBe(addr(1));
    expect(ranked[0]!.expectedTurnCost).toBe(0n);
  });
});

describe("registryAddresses", () => {
  const peerId = "12D3KooWGRUVh6ajAFEaAa7DqE3dhs4XHBcGm5ZtGZnkYTKHDxhP";
  const other = "12D3KooWKnDdG3iXw9eTFijk3EWSunZcFi54Zka4wmtqtt6rPxc8";
  it("appends the peer id, keeps matching ones, and leaves out garbage and other peers", () => {
    const addrs = registryAddresses({
      peerId,
      multiaddrs: ["/ip4/127.0.0.1/tcp/4001", `/ip4/127.0.0.1/tcp/4002/ws/p2p/${peerId}`, "not a multiaddr", `/ip4/10.0.0.1/tcp/1/p2p/${other}`],
    });
    expect(addrs.map(String)).toEqual([`/ip4/127.0.0.1/tcp/4001/p2p/${peerId}`, `/ip4/127.0.0.1/tcp/4002/ws/p2p/${peerId}`]);
  });
});

describe("reputation policy", () => {
  const provider = addr(7);
  const payer = (n: number) => addr(100 + n);
  const settled = (p: string, value: bigint, extra: Partial<SettlementEntry> = {}): SettlementEntry => ({
    provider,
    payer: p,
    providerAmount: value,
    royaltyAmount: 0n,
    feeAmount: 0n,
    inputTokens: 10n,
    outputTokens: 5n,
    ...extra,
  });
  const reputation = (entries: SettlementEntry[]) => {
    const ledgers = new Map<string, ProviderLedger>();
    foldSettlements(ledgers, entries);
    const ledger = ledgers.get(provider);
    return ledger === undefined ? EMPTY_REPUTATION : reputationOf(ledger);
  };
  const { minPayerPaid: min, payerCap: cap } = DEFAULT_REPUTATION_POLICY;

  it("counts value as provider share + royalty + fee, and ignores zero-value settlements entirely", () => {
    const r = reputation([settled(payer(1), 0n), settled(payer(2), 6_000n, { royaltyAmount: 3_000n, feeAmount: 1_000n })]);
    expect(r).toEqual({
      settledVouchers: 1,
      payers: 1,
      fundedPayers: 1,
      paidToProvider: 6_000n,
      paid: 10_000n,
      standing: 10_000n,
      inputTokens: 10n,
      outputTokens: 5n,
    });
    expect(reputation([settled(payer(1), 0n), settled(payer(2), 0n)])).toEqual(EMPTY_REPUTATION);
  });

  it("a payer counts once, only from the minimum, and for at most the cap", () => {
    // Two settlements of one payer add up before the minimum is applied.
    expect(reputation([settled(payer(1), min / 2n), settled(payer(1), min / 2n)]).standing).toBe(min);
    expect(reputation([settled(payer(1), min - 1n)])).toMatchObject({ payers: 1, fundedPayers: 0, standing: 0n, paid: min - 1n });
    expect(reputation([settled(payer(1), cap * 100n)]).standing).toBe(cap);
    // The same value from many real payers stands higher than from one.
    const many = reputation(Array.from({ length: 10 }, (_, i) => settled(payer(i), cap)));
    expect(many).toMatchObject({ fundedPayers: 10, standing: 10n * cap });
  });
});
