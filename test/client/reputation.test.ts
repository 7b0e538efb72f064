// Reputation on a real EDR chain: what the escrow's VoucherSettled logs say about each provider, how the
// ranking reads it, and a cache that reads each block's logs once (attack 7 of issue 14: bought reputation).
import { mkdtemp, readdir, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Wallet, type Provider } from "ethers";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  EMPTY_REPUTATION,
  fileReputationStore,
  readReputation,
  ReputationCache,
  setSharedReputationCache,
  sharedReputationCache,
  type LogsReadDetail,
  type Reputation,
} from "../../sdk/client/discovery.js";
import { rankProviders, type RankInput } from "../../sdk/client/selection.js";
import type { Quote } from "../../sdk/protocol/messages.js";
import { createTestChain, type TestChain } from "../helpers/chain.js";
import { deployFixture, USD, type Fixture } from "../helpers/soulmesh.js";

const MODEL = `0x${"ab".repeat(32)}`;

let chain: TestChain;
let f: Fixture;
let honest: Wallet, sybil: Wallet, creator: Wallet;
let personaId: bigint;
/** Payers of the honest provider: distinct people, each paying for real usage. */
let customers: Wallet[];
let dir: string;

/** A quote as the ranking sees it: every candidate identical but for its address and reputation. */
function candidate(address: string, reputation: Reputation): RankInput {
  const quote: Quote = {
    type: "quote",
    provider: address,
    models: [MODEL],
    cachedAdapters: [],
    priceInputPerMillion: "500000",
    priceOutputPerMillion: "1500000",
    queueLength: 0,
    maxTokens: 4096,
  };
  return { address, quote, latencyMs: 20, reputation };
}

/** A wallet the attacker made up, with gas. */
async function freshWallet(provider: Provider): Promise<Wallet> {
  const w = new Wallet(Wallet.createRandom().privateKey, provider);
  await chain.provider.send("hardhat_setBalance", [w.address, "0x56BC75E2D63100000"]);
  return w;
}

/** `payer` uses `provider` for a real session: commits funds, adopts the persona, and the provider settles the voucher. */
async function paidSession(payer: Wallet, provider: Wallet, tokens: { inputTokens: bigint; outputTokens: bigint }, funds = 10n * USD): Promise<void> {
  await f.depositAndCommit(payer, provider.address, funds);
  const agentId = await f.mintAgent(payer, personaId);
  const { voucher, signature } = await f.voucher(payer, { provider: provider.address, agentId, ...tokens });
  await (await f.as(provider).inferenceEscrow.settle(voucher, signature)).wait();
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "soulmesh-reputation-"));
  chain = await createTestChain();
  f = await deployFixture(chain);
  const w = chain.wallets;
  [creator, honest, sybil] = [w[1]!, w[2]!, w[3]!];
  customers = [w[4]!, w[5]!, w[6]!];
  personaId = await f.createPersona(creator);
  await f.registerProvider(honest);
  await f.registerProvider(sybil);
  // Real usage: three customers, each about 1 tUSD (1M input and 200k output tokens at 0.5/1.5 per M, royalty 0.2 per M).
  for (const c of customers) await paidSession(c, honest, { inputTokens: 1_000_000n, outputTokens: 200_000n });
}, 120_000);

afterAll(async () => {
  await chain?.close();
  if (dir !== undefined) await rm(dir, { recursive: true, force: true });
});

/** The ranges a cache reads, as it reads them. */
function recordReads(cache: ReputationCache): LogsReadDetail[] {
  const reads: LogsReadDetail[] = [];
  cache.addEventListener("logs:read", (e) => reads.push(e.detail));
  return reads;
}

/** The Sybil and the honest provider ranked on the reputation the escrow's logs give them now. */
async function rankSybilAndHonest(): Promise<ReturnType<typeof rankProviders>> {
  const reputation = await readReputation(f.contracts.inferenceEscrow, { fromBlock: f.deployment.startBlock });
  return rankProviders(
    [candidate(sybil.address, reputation.get(sybil.address) ?? EMPTY_REPUTATION), candidate(honest.address, reputation.get(honest.address) ?? EMPTY_REPUTATION)],
    { modelSha256: MODEL },
  );
}

describe("attack 7: bought reputation", () => {
  it("40 zero-value self-settlements from payer wallets the provider controls do not outrank real paid usage", async () => {
    // The Sybil's own persona (royalty 0) and 40 payer wallets it made up; each signs a voucher at price 0,
    // which needs no lane, and the Sybil settles them itself: 40 settled vouchers from 40 "distinct payers".
    const ownPersona = await f.createPersona(sybil, { royaltyPerMillion: 0n });
    const agentId = await f.mintAgent(sybil, ownPersona);
    for (let i = 0; i < 40; i++) {
      const payer = new Wallet(Wallet.createRandom().privateKey);
      const { voucher, signature } = await f.voucher(payer, {
        provider: sybil.address,
        agentId,
        priceInputPerMillion: 0n,
        priceOutputPerMillion: 0n,
        royaltyPerMillion: 0n,
      });
      await (await f.as(sybil).inferenceEscrow.settle(voucher, signature)).wait();
    }
    const ranked = await rankSybilAndHonest();
    expect(ranked.map((r) => r.candidate.address)).toEqual([honest.address, sybil.address]);
    // Worth nothing, so counted as nothing: an identical candidate with no history scores the same.
    const blank = rankProviders([candidate(sybil.address, EMPTY_REPUTATION)], { modelSha256: MODEL })[0]!.score;
    expect(ranked[1]!.score).toBe(blank);
  });

  it("dust from many made-up payers buys next to nothing: each payer counts only once it paid a meaningful amount", async () => {
    // 30 wallets, each with gas, commit 1 unit and pay it to the Sybil (1 output token at 1 unit per token).
    const ownPersona = await f.createPersona(sybil, { royaltyPerMillion: 0n });
    for (let i = 0; i < 30; i++) {
      const payer = await freshWallet(chain.provider);
      await f.depositAndCommit(payer, sybil.address, 1n);
      const agentId = await f.mintAgent(payer, ownPersona);
      const { voucher, signature } = await f.voucher(payer, {
        provider: sybil.address,
        agentId,
        inputTokens: 0n,
        outputTokens: 1n,
        priceInputPerMillion: 0n,
        priceOutputPerMillion: 1_000_000n,
        royaltyPerMillion: 0n,
      });
      await (await f.as(sybil).inferenceEscrow.settle(voucher, signature)).wait();
    }
    const ranked = await rankSybilAndHonest();
    expect(ranked.map((r) => r.candidate.address)).toEqual([honest.address, sybil.address]);
  }, 120_000);
});

describe("reputation cache", () => {
  it("reads only the blocks after its cursor, and sees what settled since", async () => {
    const cache = new ReputationCache();
    const reads = recordReads(cache);
    const from = f.deployment.startBlock;
    const first = await cache.read(f.contracts.inferenceEscrow, { fromBlock: from });
    const head = await chain.provider.getBlockNumber();
    expect(reads).toEqual([{ fromBlock: from, toBlock: head, settlements: expect.any(Number) }]);
    expect(first.get(honest.address)).toMatchObject({ settledVouchers: 3, payers: 3, fundedPayers: 3 });
    expect(cache.cursorOf(BigInt(chain.chainId), f.deployment.contracts.inferenceEscrow, from)).toBe(head);

    // Nothing new: no logs are read at all.
    await cache.read(f.contracts.inferenceEscrow, { fromBlock: from });
    expect(reads).toHaveLength(1);

    // A fourth customer: the next read covers the new blocks only, and counts it.
    const fourth = await freshWallet(chain.provider);
    await paidSession(fourth, honest, { inputTokens: 100_000n, outputTokens: 20_000n });
    const second = await cache.read(f.contracts.inferenceEscrow, { fromBlock: from });
    const head2 = await chain.provider.getBlockNumber();
    expect(reads[1]).toEqual({ fromBlock: head + 1, toBlock: head2, settlements: 1 });
    const before = first.get(honest.address)!;
    const after = second.get(honest.address)!;
    expect(after).toMatchObject({ settledVouchers: 4, payers: 4, fundedPayers: 4 });
    expect(after.paid).toBeGreaterThan(before.paid);
    // The same figures as a full read from the first block.
    expect(await readReputation(f.contracts.inferenceEscrow, { fromBlock: from, cache: false })).toEqual(second);
  }, 60_000);

  it("readReputation goes through the process's shared cache unless told otherwise", async () => {
    const shared = new ReputationCache();
    const reads = recordReads(shared);
    setSharedReputationCache(shared);
    expect(sharedReputationCache()).toBe(shared);
    const a = await readReputation(f.contracts.inferenceEscrow, { fromBlock: f.deployment.startBlock });
    const b = await readReputation(f.contracts.inferenceEscrow, { fromBlock: f.deployment.startBlock });
    expect(b).toEqual(a);
    expect(reads).toHaveLength(1);
    // Another policy applies to the same cached totals: a minimum above what each customer paid leaves none.
    const strict = await readReputation(f.contracts.inferenceEscrow, { fromBlock: f.deployment.startBlock, policy: { minPayerPaid: 10n ** 12n, payerCap: 10n ** 12n } });
    expect(strict.get(honest.address)).toMatchObject({ fundedPayers: 0, standing: 0n });
    expect(reads).toHaveLength(1);
    // A view of the past (toBlock) is read whole, not through the cache.
    await readReputation(f.contracts.inferenceEscrow, { fromBlock: f.deployment.startBlock, toBlock: f.deployment.startBlock + 1 });
    expect(reads).toHaveLength(1);
  });

  it("a passed cache serves repeated reads without reading old blocks again, and concurrent readers share one read", async () => {
    const shared = new ReputationCache();
    const reads = recordReads(shared);
    const a = await readReputation(f.contracts.inferenceEscrow, { fromBlock: f.deployment.startBlock, cache: shared });
    const b = await readReputation(f.contracts.inferenceEscrow, { fromBlock: f.deployment.startBlock, cache: shared });
    expect(b).toEqual(a);
    expect(reads).toHaveLength(1);
    // Concurrent readers share one read.
    await chain.increaseTime(1);
    await Promise.all([shared.read(f.contracts.inferenceEscrow, { fromBlock: f.deployment.startBlock }), shared.read(f.contracts.inferenceEscrow, { fromBlock: f.deployment.startBlock })]);
    expect(reads).toHaveLength(2);
  });

  it("keeps its cursor in a file store across runs, one file per chain id and escrow", async () => {
    const store = fileReputationStore(join(dir, "persist"));
    const one = new ReputationCache({ store });
    const full = await one.read(f.contracts.inferenceEscrow, { fromBlock: f.deployment.startBlock });
    const files = await readdir(join(dir, "persist"));
    expect(files).toEqual([`${ReputationCache.keyOf(BigInt(chain.chainId), f.deployment.contracts.inferenceEscrow, f.deployment.startBlock)}.json`]);
    // A later run: nothing new to read, the same reputation.
    const two = new ReputationCache({ store });
    const reads = recordReads(two);
    expect(await two.read(f.contracts.inferenceEscrow, { fromBlock: f.deployment.startBlock })).toEqual(full);
    expect(reads).toEqual([]);
    // A torn file is read again from the logs, not trusted.
    await writeFile(join(dir, "persist", files[0]!), "{ not json");
    const three = new ReputationCache({ store });
    const threeReads = recordReads(three);
    expect(await three.read(f.contracts.inferenceEscrow, { fromBlock: f.deployment.startBlock })).toEqual(full);
    expect(threeReads[0]!.fromBlock).toBe(f.deployment.startBlock);
  });

  it("an aborted read changes nothing", async () => {
    const cache = new ReputationCache();
    const controller = new AbortController();
    controller.abort(new Error("stop"));
    await expect(cache.read(f.contracts.inferenceEscrow, { signal: controller.signal })).rejects.toThrow("stop");
    expect(cache.cursorOf(BigInt(chain.chainId), f.deployment.contracts.inferenceEscrow)).toBeUndefined();
    expect(() => new ReputationCache({ policy: { minPayerPaid: 0n } })).toThrow(RangeError);
  });

  it("a new chain under the same chain id and escrow address (a devnet started again) is read from scratch", async () => {
    const store = fileReputationStore(join(dir, "redeploy"));
    const cache = new ReputationCache({ store });
    const old = await cache.read(f.contracts.inferenceEscrow, { fromBlock: f.deployment.startBlock });
    expect(old.get(honest.address)?.fundedPayers).toBeGreaterThan(0);
    const chain2 = await createTestChain();
    try {
      const f2 = await deployFixture(chain2);
      expect(f2.deployment.contracts.inferenceEscrow).toBe(f.deployment.contracts.inferenceEscrow);
      expect(chain2.chainId).toBe(chain.chainId);
      // Blocks on, so that the cursor's block number exists on the new chain too, with another hash.
      while ((await chain2.provider.getBlockNumber()) < (await chain.provider.getBlockNumber())) await chain2.increaseTime(1);
      for (const later of [new ReputationCache({ store }), cache]) {
        const resets: string[] = [];
        later.addEventListener("cache:reset", (e) => resets.push(e.detail.reason));
        const fresh = await later.read(f2.contracts.inferenceEscrow, { fromBlock: f2.deployment.startBlock });
        expect(resets).toHaveLength(1);
        expect(fresh.size).toBe(0);
      }
    } finally {
      await chain2.close();
    }
  }, 120_000);
});
