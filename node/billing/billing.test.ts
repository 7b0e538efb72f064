import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Wallet } from "ethers";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { InferenceEscrow } from "../../sdk/chain/contracts.js";
import { signVoucher, voucherCost } from "../../sdk/chain/voucher.js";
import type { SettledTotals, Voucher } from "../../sdk/chain/voucher.js";
import { createTestChain } from "../../test/helpers/chain.js";
import type { TestChain } from "../../test/helpers/chain.js";
import { deployFixture, USD } from "../../test/helpers/soulmesh.js";
import type { Fixture } from "../../test/helpers/soulmesh.js";
import { expiryOrder, SettlementWorker } from "./settlement.js";
import type { SettlementPolicy, SettlementWorkerEvents } from "./settlement.js";
import { channelKeyOf, sessionKeyOf, VoucherBook } from "./voucher-book.js";
import type { BookEntry } from "./voucher-book.js";

const ROYALTY = 250_000n;
const FEE_BPS = 500n;
const ZERO: SettledTotals = { inputTokens: 0n, outputTokens: 0n };

let chain: TestChain;
let f: Fixture;
let user1: Wallet, user2: Wallet, creator: Wallet, provider: Wallet, stranger: Wallet, treasury: Wallet;
let agentA: bigint, agentB: bigint, personaId: bigint;
let escrowRef: { chainId: number; address: string };
let escrow: InferenceEscrow;
let dir: string;
// The book's clock follows the chain's (which runs days ahead of the wall clock once the fee is in force).
let clock = 0;

beforeAll(async () => {
  chain = await createTestChain();
  [, user1, user2, creator, provider, stranger, treasury] = chain.wallets as [
    Wallet,
    Wallet,
    Wallet,
    Wallet,
    Wallet,
    Wallet,
    Wallet
  ];
  f = await deployFixture(chain, {
    protocolFeeBps: Number(FEE_BPS),
    treasury: treasury.address,
  });
  await chain.increaseTime(2 * 24 * 3600 + 1); // the fee takes effect after the royalty delay
  personaId = await f.createPersona(creator, { royaltyPerMillion: ROYALTY });
  agentA = await f.mintAgent(user1, personaId);
  agentB = await f.mintAgent(user2, personaId);
  await f.registerProvider(provider);
  await f.depositAndCommit(user1, provider.address, 100n * USD);
  await f.depositAndCommit(user2, provider.address, 100n * USD);
  escrowRef = {
    chainId: f.deployment.chainId,
    address: f.deployment.contracts.inferenceEscrow,
  };
  escrow = f.as(provider).inferenceEscrow;
  dir = await mkdtemp(join(tmpdir(), "soulmesh-billing-"));
});
afterAll(async () => {
  await chain?.close();
  if (dir) await rm(dir, { recursive: true, force: true });
});

function newBook(folder = join(dir, "main")): VoucherBook {
  return new VoucherBook({
    dir: folder,
    escrow: escrowRef,
    provider: provider.address,
    now: () => clock,
    maxLifetimeSeconds: 24 * 3600,
  });
}

function newWorker(book: VoucherBook, policy: Partial<SettlementPolicy> = {}, e: InferenceEscrow = escrow) {
  return new SettlementWorker({
    book,
    escrow: e,
    policy: { intervalMs: 0, amountThreshold: 0n, maxBatch: 10, ...policy },
    now: () => chain.now(),
    retry: { attempts: 3, baseDelayMs: 10 },
  });
}

async function sign(payer: Wallet, fields: Partial<Voucher> & Pick<Voucher, "agentId">) {
  clock = await chain.now();
  return f.voucher(payer, { provider: provider.address, royaltyPerMillion: ROYALTY, feeBps: FEE_BPS, ...fields });
}

async function accept(book: VoucherBook, payer: Wallet, fields: Partial<Voucher> & Pick<Voucher, "agentId">) {
  const { voucher, signature } = await sign(payer, fields);
  return book.accept(voucher, signature);
}

function record<K extends keyof SettlementWorkerEvents>(worker: SettlementWorker, type: K) {
  const seen: SettlementWorkerEvents[K]["detail"][] = [];
  worker.addEventListener(type, ((e: SettlementWorkerEvents[K]) => seen.push(e.detail)) as never);
  return seen;
}

async function balances() {
  return {
    provider: await escrow.earningsOf(provider.address),
    creator: await escrow.earningsOf(creator.address),
    treasury: await escrow.earningsOf(treasury.address),
    user1: (await escrow.laneOf(user1.address, provider.address))[0],
    user2: (await escrow.laneOf(user2.address, provider.address))[0],
  };
}

/** What the escrow pays for `v` after `settled` (the voucher carries this deployment's royalty and fee). */
const cost = (v: Voucher, settled: SettledTotals = ZERO) => voucherCost(v, settled);

describe("VoucherBook and SettlementWorker on the escrow", () => {
  let book: VoucherBook;
  let settledKeys: string[] = [];

  it("settle the latest voucher of each session, across sessions and payers, in one exact batch", async () => {
    book = newBook();
    await book.start();
    await accept(book, user1, {
      agentId: agentA,
      session: 1n,
      inputTokens: 100n,
      outputTokens: 50n,
    });
    const a1 = await accept(book, user1, {
      agentId: agentA,
      session: 1n,
      inputTokens: 1_000n,
      outputTokens: 500n,
    });
    const a2 = await accept(book, user1, {
      agentId: agentA,
      session: 2n,
      inputTokens: 2_345n,
      outputTokens: 1_111n,
    });
    const b7 = await accept(book, user2, {
      agentId: agentB,
      session: 7n,
      inputTokens: 30_001n,
      outputTokens: 99n,
    });
    expect((await book.latest()).map((e) => e.key).sort()).toEqual([a1.key, a2.key, b7.key].sort());
    const owed = await book.outstanding();
    expect(owed.find((c) => c.channel === a1.channel)).toMatchObject({
      sessions: 2,
      inputTokens: 3_345n,
    });

    const before = await balances();
    const worker = newWorker(book);
    const sent = record(worker, "settlement:sent");
    const confirmed = record(worker, "settlement:confirmed");
    const report = await worker.settleNow();
    expect(sent).toHaveLength(1);
    expect(sent[0]!.keys).toHaveLength(3);
    expect(report.settled.sort()).toEqual([a1.key, a2.key, b7.key].sort());

    const c = [a1, a2, b7].map((e) => cost(e.voucher));
    const sum = (k: "providerAmount" | "royaltyAmount" | "feeAmount" | "total", xs = c) =>
      xs.reduce((s, x) => s + x[k], 0n);
    const after = await balances();
    expect(after.provider - before.provider).toBe(sum("providerAmount"));
    expect(after.creator - before.creator).toBe(sum("royaltyAmount"));
    expect(after.treasury - before.treasury).toBe(sum("feeAmount"));
    expect(sum("feeAmount")).toBeGreaterThan(0n);
    expect(before.user1 - after.user1).toBe(sum("total", c.slice(0, 2)));
    expect(before.user2 - after.user2).toBe(sum("total", c.slice(2)));
    expect(confirmed[0]!.paid).toBe(sum("total"));
    expect(await escrow.settledOf(user1.address, provider.address, agentA)).toEqual([2n, 2_345n, 1_111n, cost(a2.voucher).total]);
    expect(await book.latest()).toEqual([]);
    expect(await book.outstanding()).toEqual([]);
    settledKeys = report.settled;
  });

  it("settle nothing again after a restart of the book and the worker", async () => {
    await book.stop();
    book = newBook();
    await book.start();
    const before = await balances();
    const worker = newWorker(book);
    const sent = record(worker, "settlement:sent");
    const report = await worker.settleNow();
    expect(sent).toEqual([]);
    expect(report.txHashes).toEqual([]);
    expect(await balances()).toEqual(before);
    for (const key of settledKeys) expect((await book.get(key))?.settled).not.toEqual(ZERO);
  });

  it("reconcile a batch mined before markSettled (crash) from the chain: nothing paid twice, nothing lost", async () => {
    const a3 = await accept(book, user1, {
      agentId: agentA,
      session: 3n,
      inputTokens: 500n,
      outputTokens: 500n,
    });
    const b8 = await accept(book, user2, {
      agentId: agentB,
      session: 8n,
      inputTokens: 4_000n,
      outputTokens: 1_000n,
    });
    const before = await balances();
    // The worker's transaction, mined, then the process dies before markSettled.
    const pending = await book.latest();
    await (await escrow.settleBatch(pending.map((e) => ({ voucher: e.voucher, signature: e.signature })))).wait();
    await book.stop();

    book = newBook();
    await book.start();
    expect((await book.latest()).map((e) => e.key).sort()).toEqual([a3.key, b8.key].sort());
    // The payer goes on with session 3 after the restart.
    const a3b = await accept(book, user1, {
      agentId: agentA,
      session: 3n,
      inputTokens: 600n,
      outputTokens: 700n,
    });
    const worker = newWorker(book);
    const reconciled = record(worker, "settlement:reconciled");
    const sent = record(worker, "settlement:sent");
    const failed = record(worker, "settlement:failed");
    await worker.settleNow();
    expect(failed).toEqual([]);
    expect(reconciled.map((r) => r.key).sort()).toEqual([a3.key, b8.key].sort());
    expect(sent).toHaveLength(1);
    expect(sent[0]!.keys).toEqual([a3b.key]);

    const after = await balances();
    // Session 3 paid exactly its final totals once; session 8 exactly once.
    const expected = cost(a3b.voucher).providerAmount + cost(b8.voucher).providerAmount;
    expect(after.provider - before.provider).toBe(expected);
    expect(before.user1 - after.user1).toBe(cost(a3b.voucher).total);
    expect(before.user2 - after.user2).toBe(cost(b8.voucher).total);
    expect(await book.latest()).toEqual([]);
    expect((await worker.settleNow()).txHashes).toEqual([]);
  });

  it("refuse forged, replayed, lowered, wrong-chain, wrong-escrow, expired, wrong-provider vouchers and store nothing", async () => {
    const good = await sign(user1, {
      agentId: agentA,
      session: 10n,
      inputTokens: 1_000n,
      outputTokens: 1_000n,
    });
    await book.accept(good.voucher, good.signature);
    const snapshot = await book.entries();
    const v = good.voucher;
    const refuse = async (voucher: Voucher, signature: string, name: string, domain?: typeof escrowRef) => {
      const err = await book.accept(voucher, signature, domain ? { domain } : {}).catch((e: unknown) => e);
      expect((err as Error).name, name).toBe(name);
      expect(await book.entries()).toEqual(snapshot);
    };
    const more = { ...v, inputTokens: 2_000n };

    await refuse(
      more,
      await signVoucher(stranger, { ...more, payer: stranger.address }, escrowRef),
      "VoucherSignatureError"
    );
    await refuse(more, good.signature, "VoucherSignatureError"); // a signature over other totals
    await refuse(v, good.signature, "VoucherReplayError");
    const lower = { ...v, inputTokens: 999n, outputTokens: 5_000n };
    await refuse(lower, await signVoucher(user1, lower, escrowRef), "VoucherCumulativeDecreasedError");
    const otherChain = { ...escrowRef, chainId: 1 };
    await refuse(more, await signVoucher(user1, more, otherChain), "VoucherWrongDomainError", otherChain);
    await refuse(more, await signVoucher(user1, more, otherChain), "VoucherSignatureError");
    const otherEscrow = {
      ...escrowRef,
      address: f.deployment.contracts.agentRegistry,
    };
    await refuse(more, await signVoucher(user1, more, otherEscrow), "VoucherWrongDomainError", otherEscrow);
    await refuse(more, await signVoucher(user1, more, otherEscrow), "VoucherSignatureError");
    const expired = { ...more, expiry: BigInt(clock - 1) };
    await refuse(expired, await signVoucher(user1, expired, escrowRef), "VoucherExpiredError");
    const soon = { ...more, expiry: BigInt(clock + 10) };
    await refuse(soon, await signVoucher(user1, soon, escrowRef), "VoucherExpiredError");
    const tooFar = { ...more, expiry: BigInt(clock + 2 * 24 * 3600) };
    await refuse(tooFar, await signVoucher(user1, tooFar, escrowRef), "VoucherExpiryTooFarError");
    const otherProvider = { ...more, provider: stranger.address };
    await refuse(otherProvider, await signVoucher(user1, otherProvider, escrowRef), "VoucherWrongProviderError");
    const older = { ...more, session: 9n };
    await refuse(older, await signVoucher(user1, older, escrowRef), "VoucherSessionSupersededError");
    const repriced = { ...more, priceOutputPerMillion: 2_000_000n };
    await refuse(repriced, await signVoucher(user1, repriced, escrowRef), "VoucherPriceMismatchError");
    const err = await book
      .accept(more, await signVoucher(user1, more, escrowRef), {
        prices: { input: 1n, output: 1n },
      })
      .catch((e: unknown) => e);
    expect((err as Error).name).toBe("VoucherPriceMismatchError");

    await book.accept(more, await signVoucher(user1, more, escrowRef)); // the genuine next voucher is fine
    await newWorker(book).settleNow();
    expect(await book.latest()).toEqual([]);
  });

  it("settle what expires soonest first, a channel's sessions in order", async () => {
    const agentC = await f.mintAgent(user1, personaId);
    const agentD = await f.mintAgent(user2, personaId);
    const now = await chain.now();
    const c1 = await accept(book, user1, {
      agentId: agentC,
      session: 1n,
      expiry: BigInt(now + 3000),
    });
    const c2 = await accept(book, user1, {
      agentId: agentC,
      session: 2n,
      expiry: BigInt(now + 500),
    });
    const d1 = await accept(book, user2, {
      agentId: agentD,
      session: 1n,
      expiry: BigInt(now + 1000),
    });
    const a11 = await accept(book, user1, {
      agentId: agentA,
      session: 11n,
      expiry: BigInt(now + 2000),
    });
    const worker = newWorker(book, { maxBatch: 1 });
    const sent = record(worker, "settlement:sent");
    await worker.settleNow();
    // c1 expires last but must settle before c2, which expires first.
    expect(sent.map((s) => s.keys)).toEqual([[c1.key], [c2.key], [d1.key], [a11.key]]);
    expect(await book.latest()).toEqual([]);
  });

  it("drop an expired voucher for good and still settle the channel's later session", async () => {
    const now = await chain.now();
    const old = await accept(book, user2, {
      agentId: agentB,
      session: 20n,
      expiry: BigInt(now + 100),
    });
    const next = await accept(book, user2, {
      agentId: agentB,
      session: 21n,
      expiry: BigInt(now + 3600),
    });
    await chain.increaseTime(200);
    const worker = newWorker(book);
    const dropped = record(worker, "settlement:dropped");
    const sent = record(worker, "settlement:sent");
    await worker.settleNow();
    expect(dropped).toEqual([{ key: old.key, reason: "Escrow__VoucherExpired", permanent: true }]);
    expect(sent.map((s) => s.keys)).toEqual([[next.key]]);
    expect((await book.get(old.key))?.dropped).toBe("Escrow__VoucherExpired");
    expect(await book.latest()).toEqual([]);
  });

  it("settle when the unsettled amount passes the threshold, and on session close", async () => {
    // 10_000 input tokens at 0.5 tUSD per million: 5_000 units for the provider.
    const worker = newWorker(book, { amountThreshold: 12_000n });
    worker.start();
    const confirmed = record(worker, "settlement:confirmed");
    const first = await accept(book, user1, {
      agentId: agentA,
      session: 30n,
      inputTokens: 10_000n,
      outputTokens: 0n,
    });
    await new Promise((r) => setTimeout(r, 300));
    expect(confirmed).toEqual([]);
    const done = new Promise<SettlementWorkerEvents["settlement:confirmed"]["detail"]>((resolve) =>
      worker.addEventListener("settlement:confirmed", (e) => resolve(e.detail), { once: true })
    );
    const second = await accept(book, user2, {
      agentId: agentB,
      session: 30n,
      inputTokens: 20_000n,
      outputTokens: 0n,
    });
    expect((await done).keys.sort()).toEqual([first.key, second.key].sort());

    const third = await accept(book, user1, {
      agentId: agentA,
      session: 31n,
      inputTokens: 10n,
      outputTokens: 10n,
    });
    const report = await worker.closeSession(third.key);
    expect(report.settled).toEqual([third.key]);
    await expect(worker.closeSession(`${third.channel}:999`)).rejects.toMatchObject({ name: "UnknownSessionError" });
    await worker.stop();
  });

  it("attack 4: an entry of a batch settled first by someone else is skipped; the rest settle, and only they are marked settled", async () => {
    const x = await accept(book, user1, { agentId: agentA, session: 50n, inputTokens: 3_000n, outputTokens: 700n });
    const y = await accept(book, user2, { agentId: agentB, session: 50n, inputTokens: 9_000n, outputTokens: 100n });
    // Between the worker's previews and its batch, x is settled by another transaction (only the provider
    // or its settler can now; a second settling process of the same provider does it here). The batch used
    // to revert whole for it; now the escrow skips x with a SettlementSkipped log and settles y.
    const raced = new Proxy(escrow, {
      get(target, prop) {
        if (prop === "settleBatch") {
          return async (vouchers: { voucher: Voucher; signature: string }[]) => {
            await (await target.settle(x.voucher, x.signature)).wait();
            return target.settleBatch(vouchers);
          };
        }
        return Reflect.get(target, prop, target) as unknown;
      },
    });
    const before = await balances();
    const worker = newWorker(book, {}, raced);
    const confirmed = record(worker, "settlement:confirmed");
    const dropped = record(worker, "settlement:dropped");
    const report = await worker.settleNow();
    expect(report.settled).toEqual([y.key]);
    expect(confirmed).toHaveLength(1);
    expect(confirmed[0]!.keys).toEqual([y.key]);
    expect(confirmed[0]!.skipped).toEqual([{ key: x.key, reason: "Escrow__AlreadySettled" }]);
    // What the receipt's logs say was paid: y alone (x was paid by the other transaction).
    expect(confirmed[0]!.paid).toBe(cost(y.voucher).total);
    expect(confirmed[0]!.providerAmount).toBe(cost(y.voucher).providerAmount);
    expect(dropped).toEqual([{ key: x.key, reason: "Escrow__AlreadySettled", permanent: false }]);
    // y is recorded as settled with what the chain paid; x is not recorded as settled by the skipped batch…
    expect(await book.get(y.key)).toMatchObject({
      settled: { inputTokens: 9_000n, outputTokens: 100n },
      earned: { providerAmount: cost(y.voucher).providerAmount, total: cost(y.voucher).total },
    });
    expect((await book.get(x.key))!.settled).toMatchObject({ inputTokens: 0n, outputTokens: 0n });
    // …but reconciled from the chain on the next pass, and nothing is paid twice.
    const again = await newWorker(book).settleNow();
    expect(again.txHashes).toEqual([]);
    expect(again.reconciled).toEqual([x.key]);
    expect(await book.latest()).toEqual([]);
    const after = await balances();
    expect(after.provider - before.provider).toBe(cost(x.voucher).providerAmount + cost(y.voucher).providerAmount);
    expect(before.user1 - after.user1).toBe(cost(x.voucher).total);
    expect(before.user2 - after.user2).toBe(cost(y.voucher).total);
  });

  it("attack 4: an entry whose lane ran short after its preview is skipped and kept for later, the others settle", async () => {
    const agentE = await f.mintAgent(user2, personaId);
    const lane = (await escrow.laneOf(user2.address, provider.address))[0];
    // A voucher of user2 not in this book (another session the provider settles elsewhere) that, settled
    // between preview and batch, leaves the lane short for z.
    const z = await accept(book, user2, { agentId: agentE, session: 1n, inputTokens: 1_000_000n, outputTokens: 0n });
    const w = await accept(book, user1, { agentId: agentA, session: 51n, inputTokens: 10n, outputTokens: 10n });
    // Draw the lane down, with a voucher of another channel, to one unit less than z needs.
    const agentF = await f.mintAgent(user2, personaId);
    const costOf = (n: bigint) => cost({ ...z.voucher, agentId: agentF, inputTokens: n }).total;
    const room = lane - cost(z.voucher).total;
    let [lo, hi] = [1n, 1n << 46n]; // the fewest tokens costing more than `room`
    while (lo < hi) {
      const mid = (lo + hi) / 2n;
      if (costOf(mid) > room) hi = mid;
      else lo = mid + 1n;
    }
    const tokens = lo;
    expect(costOf(tokens)).toBeLessThanOrEqual(lane);
    const drainer = await f.voucher(user2, {
      provider: provider.address, agentId: agentF, session: 1n, royaltyPerMillion: ROYALTY, feeBps: FEE_BPS,
      inputTokens: tokens, outputTokens: 0n,
    });
    const raced = new Proxy(escrow, {
      get(target, prop) {
        if (prop === "settleBatch") {
          return async (vouchers: { voucher: Voucher; signature: string }[]) => {
            await (await target.settle(drainer.voucher, drainer.signature)).wait();
            return target.settleBatch(vouchers);
          };
        }
        return Reflect.get(target, prop, target) as unknown;
      },
    });
    const worker = newWorker(book, {}, raced);
    const confirmed = record(worker, "settlement:confirmed");
    const report = await worker.settleNow();
    expect(report.settled).toEqual([w.key]);
    expect(confirmed[0]!.skipped).toEqual([{ key: z.key, reason: "Escrow__InsufficientLane" }]);
    expect(report.skipped).toContain(z.key);
    expect((await book.get(z.key))!.dropped).toBeUndefined();
    expect((await book.latest()).map((e) => e.key)).toEqual([z.key]);
    // The payer commits more: z settles on the next pass.
    await f.depositAndCommit(user2, provider.address, 10n * USD);
    expect((await newWorker(book).settleNow()).settled).toEqual([z.key]);
  });

  it("retry a pass that failed on a transient RPC error", async () => {
    let failures = 2;
    const flaky = new Proxy(escrow, {
      get(target, prop) {
        if (prop === "settledOf" && failures > 0) {
          return async () => {
            failures--;
            throw new Error("connect ECONNRESET");
          };
        }
        return Reflect.get(target, prop, target) as unknown;
      },
    });
    const e = await accept(book, user1, { agentId: agentA, session: 60n });
    const worker = newWorker(book, {}, flaky);
    const failed = record(worker, "settlement:failed");
    const report = await worker.settleNow();
    expect(failed.map((x) => [x.attempt, x.willRetry])).toEqual([
      [1, true],
      [2, true],
    ]);
    expect(report.settled).toEqual([e.key]);
    await book.stop();
  });
});

describe("expiryOrder", () => {
  const entry = (channel: string, session: bigint, expiry: bigint) =>
    ({ key: `${channel}:${session}`, channel, expiry } as BookEntry);
  it("orders by the soonest expiry a session unblocks, keeping each channel's order", () => {
    const queues = new Map([
      ["0xa", [entry("0xa", 1n, 900n), entry("0xa", 2n, 100n), entry("0xa", 3n, 950n)]],
      ["0xb", [entry("0xb", 5n, 200n)]],
      ["0xc", [entry("0xc", 1n, 50n)]],
    ]);
    expect(expiryOrder(queues).map((e) => e.key)).toEqual(["0xc:1", "0xa:1", "0xa:2", "0xb:5", "0xa:3"]);
  });

  it("names channels and sessions as the escrow does", async () => {
    const v = {
      payer: user1.address,
      provider: provider.address,
      agentId: agentA,
      session: 3n,
    };
    expect(channelKeyOf(v)).toBe(await escrow.channelKey(v.payer, v.provider, v.agentId));
    expect(sessionKeyOf(v)).toBe(`${channelKeyOf(v)}:3`);
  });
});
