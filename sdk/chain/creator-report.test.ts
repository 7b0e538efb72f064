import { BrowserProvider } from "ethers";
import type { Wallet } from "ethers";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTestChain } from "../../test/helpers/chain.js";
import type { TestChain } from "../../test/helpers/chain.js";
import { deployFixture, USD } from "../../test/helpers/soulmesh.js";
import type { Fixture } from "../../test/helpers/soulmesh.js";
import { connectContracts } from "./contracts.js";
import type { SoulmeshContracts } from "./contracts.js";
import {
  createLogCache,
  InvalidBlockRangeError,
  InvalidCreatorAddressError,
  parseWithBigints,
  readCreatorReport,
  stringifyWithBigints,
} from "./creator-report.js";
import type { CreatorReport, KeyValueStorage } from "./creator-report.js";
import { utcDay } from "./usage.js";
import { signVoucher, voucherCost } from "./voucher.js";
import type { Voucher } from "./voucher.js";

let chain: TestChain;
let f: Fixture;
let creator: Wallet, other: Wallet, newHolder: Wallet;
let users: Wallet[], providers: Wallet[];
let p1: bigint, p2: bigint, p3: bigint;
/** Reads through a provider that records the block ranges of every eth_getLogs. */
let read: SoulmeshContracts;
const getLogsCalls: { fromBlock: number; toBlock: number }[] = [];

/** What the test expects, from the vouchers and the royalty each persona had when settled: holder → persona → figures. */
interface Expected {
  revenue: bigint;
  inputTokens: bigint;
  outputTokens: bigint;
  byDay: Map<string, bigint>;
  byProvider: Map<string, { amount: bigint; inputTokens: bigint; outputTokens: bigint }>;
}
const expected = new Map<string, Map<bigint, Expected>>();
const agentsOf = new Map<bigint, bigint[]>();
let session = 1n;
const escrowRef = () => ({ chainId: f.deployment.chainId, address: f.deployment.contracts.inferenceEscrow });

/** A voucher of a new session at the royalty and fee in force, signed by `user` for `provider`. */
async function signedVoucher(user: Wallet, agentId: bigint, personaId: bigint, provider: Wallet, input: bigint, output: bigint) {
  const [, royalty] = await f.contracts.personaRegistry.royaltyOf(personaId);
  const [feeBps] = await f.contracts.inferenceEscrow.protocolFee();
  return f.voucher(user, {
    provider: provider.address,
    agentId,
    session: session++,
    inputTokens: input,
    outputTokens: output,
    royaltyPerMillion: royalty,
    feeBps,
  });
}

async function settle(user: Wallet, agentId: bigint, personaId: bigint, provider: Wallet, input: bigint, output: bigint): Promise<void> {
  const { voucher, signature } = await signedVoucher(user, agentId, personaId, provider, input, output);
  await (await f.as(provider).inferenceEscrow.settle(voucher, signature)).wait();
  await record(voucher, personaId);
}

/** Adds what `voucher` (of a new session, just settled) paid to the figures its persona's holder expects. */
async function record(voucher: Voucher, personaId: bigint): Promise<void> {
  const [holder] = await f.contracts.personaRegistry.royaltyOf(personaId);
  const provider = { address: voucher.provider };
  const [input, output] = [voucher.inputTokens, voucher.outputTokens];
  const cost = voucherCost(voucher, { inputTokens: 0n, outputTokens: 0n });
  const perHolder = expected.get(holder) ?? new Map<bigint, Expected>();
  expected.set(holder, perHolder);
  const e = perHolder.get(personaId) ?? { revenue: 0n, inputTokens: 0n, outputTokens: 0n, byDay: new Map(), byProvider: new Map() };
  perHolder.set(personaId, e);
  e.revenue += cost.royaltyAmount;
  e.inputTokens += input;
  e.outputTokens += output;
  const day = utcDay(await chain.now());
  e.byDay.set(day, (e.byDay.get(day) ?? 0n) + cost.royaltyAmount);
  const p = e.byProvider.get(provider.address) ?? { amount: 0n, inputTokens: 0n, outputTokens: 0n };
  p.amount += cost.royaltyAmount;
  p.inputTokens += input;
  p.outputTokens += output;
  e.byProvider.set(provider.address, p);
}

async function adopt(user: Wallet, personaId: bigint): Promise<bigint> {
  const agentId = await f.mintAgent(user, personaId);
  agentsOf.set(personaId, [...(agentsOf.get(personaId) ?? []), agentId]);
  return agentId;
}

function checkAgainstExpected(report: CreatorReport, holder: string): void {
  const mine = expected.get(holder) ?? new Map<bigint, Expected>();
  let total = 0n;
  for (const p of report.personas) {
    const e = mine.get(p.personaId);
    expect(p.revenue).toBe(e?.revenue ?? 0n);
    expect(p.inputTokens).toBe(e?.inputTokens ?? 0n);
    expect(p.outputTokens).toBe(e?.outputTokens ?? 0n);
    expect(p.revenueByDay).toEqual([...(e?.byDay ?? [])].sort(([a], [b]) => (a < b ? -1 : 1)).map(([day, amount]) => ({ day, amount })));
    expect(new Map(p.topProviders.map((t) => [t.provider, { amount: t.amount, inputTokens: t.inputTokens, outputTokens: t.outputTokens }]))).toEqual(
      e?.byProvider ?? new Map(),
    );
    for (let i = 1; i < p.topProviders.length; i++) expect(p.topProviders[i - 1]!.amount >= p.topProviders[i]!.amount).toBe(true);
    expect(p.agentsAdopted).toBe(agentsOf.get(p.personaId)?.length ?? 0);
    total += p.revenue;
  }
  expect(report.totals.revenue).toBe(total);
  expect(total).toBe([...mine.values()].reduce((a, e) => a + e.revenue, 0n));
}

beforeAll(async () => {
  chain = await createTestChain();
  f = await deployFixture(chain);
  const w = chain.wallets;
  users = [w[1]!, w[5]!];
  creator = w[2]!;
  providers = [w[3]!, w[4]!];
  other = w[6]!;
  newHolder = w[7]!;
  const wrapped = new BrowserProvider(
    {
      request: async ({ method, params }: { method: string; params?: unknown[] | Record<string, unknown> }) => {
        const args = (params ?? []) as unknown[];
        if (method === "eth_getLogs") {
          const filter = args[0] as { fromBlock: string; toBlock: string };
          getLogsCalls.push({ fromBlock: Number(filter.fromBlock), toBlock: Number(filter.toBlock) });
        }
        return chain.provider.send(method, args);
      },
    },
    undefined,
    { cacheTimeout: -1 },
  );
  read = connectContracts(f.deployment, wrapped);

  p1 = await f.createPersona(creator, { royaltyPerMillion: 300_000n, adoptionPrice: 2n * USD });
  p2 = await f.createPersona(creator, { royaltyPerMillion: 120_000n });
  p3 = await f.createPersona(other, { royaltyPerMillion: 50_000n });
  for (const p of providers) await f.registerProvider(p);
  for (const u of users) for (const p of providers) await f.depositAndCommit(u, p.address, 25n * USD);
  const a1 = await adopt(users[0]!, p1);
  const a2 = await adopt(users[0]!, p2);
  const a3 = await adopt(users[1]!, p3);
  const a4 = await adopt(users[1]!, p1);
  for (let day = 0; day < 2; day++) {
    for (const [i, provider] of providers.entries()) {
      const n = BigInt(day * 10 + i + 1);
      await settle(users[0]!, a1, p1, provider, 1_000n * n, 333n * n);
      await settle(users[0]!, a2, p2, provider, 2_000n * n + 7n, 111n * n);
      await settle(users[1]!, a3, p3, provider, 900n * n, 400n * n);
      if (i === 0) await settle(users[1]!, a4, p1, provider, 5_000n * n + 1n, 2_000n);
    }
    await chain.increaseTime(86_400);
  }
}, 40_000);
afterAll(() => chain?.close());

describe("readCreatorReport", () => {
  const cache = createLogCache();
  let first: CreatorReport;

  it("gives every figure equal to the contract's own, to the unit", async () => {
    first = await readCreatorReport({ contracts: read, creator: creator.address, fromBlock: f.deployment.startBlock, cache });
    expect(first.personas.map((p) => p.personaId)).toEqual([p1, p2]);
    checkAgainstExpected(first, creator.address);
    // Nothing withdrawn yet and the creator earns nothing else: the escrow owes exactly the royalties.
    expect(first.earnings).toEqual({ pending: await f.contracts.inferenceEscrow.earningsOf(creator.address), withdrawn: 0n });
    expect(first.earnings.pending).toBe(first.totals.revenue);
    expect(first.personas[0]!.revenueByDay).toHaveLength(2);
    expect(first.personas[0]!.topProviders.map((t) => t.provider).sort()).toEqual(providers.map((p) => p.address).sort());
    const persona1 = await f.contracts.personaRegistry.personaOf(p1);
    expect(first.personas[0]).toMatchObject({
      manifestCid: persona1.manifestCid,
      adoptionPrice: 2n * USD,
      adoptionRevenue: 4n * USD,
      royaltyNow: 300_000n,
      holder: creator.address,
    });
    expect(first.personas[0]!.royaltyScheduled).toBeUndefined();
    expect(first.block).toBe(await chain.provider.getBlockNumber());
  });

  it("reads only new blocks with its cache, and agrees with a report read from scratch", async () => {
    // Withdraw, schedule a royalty change, hand p1 to another holder, and settle more on both sides of it.
    const receipt = await (await f.as(creator).inferenceEscrow.withdrawEarnings(creator.address)).wait();
    const withdrawn = first.earnings.pending;
    const scheduled = await (await f.as(creator).personaRegistry.scheduleRoyalty(p2, 80_000n)).wait();
    const scheduledAt = (await chain.provider.getBlock(scheduled!.blockNumber))!.timestamp;
    const a5 = await adopt(users[1]!, p2);
    await settle(users[1]!, a5, p2, providers[1]!, 4_321n, 1_234n);
    await settle(users[0]!, agentsOf.get(p1)![0]!, p1, providers[1]!, 3_000n, 1_000n);
    await (await f.as(creator).personaRegistry.transferFrom(creator.address, newHolder.address, p1)).wait();
    await settle(users[1]!, agentsOf.get(p1)![1]!, p1, providers[0]!, 7_777n, 2_222n);
    expect(receipt).not.toBeNull();

    getLogsCalls.length = 0;
    const second = await readCreatorReport({ contracts: read, creator: creator.address, fromBlock: f.deployment.startBlock, cache });
    expect(getLogsCalls.length).toBeGreaterThan(0);
    for (const call of getLogsCalls) expect(call.fromBlock).toBe(first.block + 1);

    getLogsCalls.length = 0;
    const scratch = await readCreatorReport({ contracts: read, creator: creator.address, fromBlock: f.deployment.startBlock });
    expect(getLogsCalls.some((c) => c.fromBlock === f.deployment.startBlock)).toBe(true);
    expect(second).toEqual(scratch);

    checkAgainstExpected(second, creator.address);
    expect(second.earnings.withdrawn).toBe(withdrawn);
    expect(second.earnings.pending).toBe(await f.contracts.inferenceEscrow.earningsOf(creator.address));
    expect(second.earnings.pending + second.earnings.withdrawn).toBe(second.totals.revenue);

    const [r1, r2] = second.personas;
    // p1 paid the creator until the transfer, and the new holder after it.
    expect(r1!.holder).toBe(newHolder.address);
    expect(r1!.revenue).toBe(expected.get(creator.address)!.get(p1)!.revenue);
    const theirs = await readCreatorReport({ contracts: read, creator: newHolder.address, fromBlock: f.deployment.startBlock, cache });
    expect(theirs.personas.map((p) => p.personaId)).toEqual([p1]);
    checkAgainstExpected(theirs, newHolder.address);
    expect(theirs.totals.revenue).toBeGreaterThan(0n);
    expect(theirs.earnings.pending).toBe(await f.contracts.inferenceEscrow.earningsOf(newHolder.address));
    expect(theirs.earnings.pending).toBe(theirs.totals.revenue);

    // The scheduled royalty shows with when it takes effect; the old one is still in force.
    expect(r2!.royaltyNow).toBe(120_000n);
    expect(r2!.royaltyScheduled).toEqual({ value: 80_000n, effectiveAt: scheduledAt + f.deployment.parameters.royaltyDelay });
    const [, next, effectiveAt] = await f.contracts.personaRegistry.royaltyScheduleOf(p2);
    expect(r2!.royaltyScheduled).toEqual({ value: next, effectiveAt: Number(effectiveAt) });
  });

  it("counts only what settled: a batch's skipped entries (SettlementSkipped) add nothing", async () => {
    const cache2 = createLogCache();
    const before = await readCreatorReport({ contracts: read, creator: creator.address, fromBlock: f.deployment.startBlock, cache: cache2 });
    const [a2] = agentsOf.get(p2)!;
    const good = await signedVoucher(users[0]!, a2!, p2, providers[0]!, 6_000n, 700n);
    const low = await signedVoucher(users[1]!, agentsOf.get(p2)![1]!, p2, providers[0]!, 9_000n, 900n);
    const lowRoyalty = { ...low.voucher, royaltyPerMillion: low.voucher.royaltyPerMillion - 1n };
    const otherProvider = await signedVoucher(users[1]!, agentsOf.get(p2)![1]!, p2, providers[1]!, 5_000n, 500n);
    const batch = [
      good,
      good, // the same voucher again: Escrow__AlreadySettled
      { voucher: lowRoyalty, signature: await signVoucher(users[1]!, lowRoyalty, escrowRef()) }, // Escrow__RoyaltyBelowRate
      otherProvider, // another provider's voucher: Escrow__NotProviderOrSettler
    ];
    const receipt = await (await f.as(providers[0]!).inferenceEscrow.settleBatch(batch)).wait();
    const escrow = f.contracts.inferenceEscrow;
    const names = receipt!.logs.map((l) => escrow.interface.parseLog(l)?.name);
    expect(names.filter((n) => n === "VoucherSettled")).toHaveLength(1);
    expect(names.filter((n) => n === "SettlementSkipped")).toHaveLength(3);
    await record(good.voucher, p2);

    const after = await readCreatorReport({ contracts: read, creator: creator.address, fromBlock: f.deployment.startBlock, cache: cache2 });
    checkAgainstExpected(after, creator.address);
    const royalty = voucherCost(good.voucher, { inputTokens: 0n, outputTokens: 0n }).royaltyAmount;
    expect(after.totals.revenue - before.totals.revenue).toBe(royalty);
    expect(after.totals.inputTokens - before.totals.inputTokens).toBe(6_000n);
    expect(after.earnings.pending - before.earnings.pending).toBe(royalty);
    expect(after.earnings.pending).toBe(await escrow.earningsOf(creator.address));
  });

  it("persists to a storage, bigints included, and a new cache over it reads nothing already seen", async () => {
    const items = new Map<string, string>();
    const storage: KeyValueStorage = { getItem: (k) => items.get(k) ?? null, setItem: (k, v) => void items.set(k, v) };
    const options = { contracts: read, creator: creator.address, fromBlock: f.deployment.startBlock };
    const a = await readCreatorReport({ ...options, cache: createLogCache({ storage }) });
    expect(items.size).toBeGreaterThan(0);
    getLogsCalls.length = 0;
    const b = await readCreatorReport({ ...options, cache: createLogCache({ storage }) });
    expect(getLogsCalls).toEqual([]);
    expect(b).toEqual(a);
    expect(parseWithBigints(stringifyWithBigints({ x: [1n, 2n ** 200n], y: "1" }))).toEqual({ x: [1n, 2n ** 200n], y: "1" });
  });

  it("lists no persona for an account that never held one, and reads at an older block", async () => {
    const none = await readCreatorReport({ contracts: read, creator: users[0]!.address, fromBlock: f.deployment.startBlock, cache });
    expect(none.personas).toEqual([]);
    expect(none.totals).toEqual({ revenue: 0n, inputTokens: 0n, outputTokens: 0n });
    const old = await readCreatorReport({ contracts: read, creator: creator.address, fromBlock: f.deployment.startBlock, toBlock: first.block, cache });
    expect(old).toEqual(first);
  });

  it("rejects bad inputs with typed errors before any request", async () => {
    getLogsCalls.length = 0;
    const base = { contracts: read, fromBlock: f.deployment.startBlock };
    await expect(readCreatorReport({ ...base, creator: "0x1234" })).rejects.toBeInstanceOf(InvalidCreatorAddressError);
    await expect(readCreatorReport({ ...base, creator: "" })).rejects.toThrow(/not an address/);
    await expect(readCreatorReport({ ...base, creator: creator.address, fromBlock: -1 })).rejects.toBeInstanceOf(InvalidBlockRangeError);
    await expect(readCreatorReport({ ...base, creator: creator.address, fromBlock: 1.5 })).rejects.toBeInstanceOf(InvalidBlockRangeError);
    await expect(readCreatorReport({ ...base, creator: creator.address, fromBlock: 10, toBlock: 5 })).rejects.toBeInstanceOf(
      InvalidBlockRangeError,
    );
    await expect(readCreatorReport({ ...base, creator: creator.address, fromBlock: 1e9 })).rejects.toBeInstanceOf(InvalidBlockRangeError);
    expect(getLogsCalls).toEqual([]);
    const err = await readCreatorReport({ ...base, creator: "nope" }).catch((e: unknown) => e);
    expect((err as Error).name).toBe("InvalidCreatorAddressError");
  });
});
