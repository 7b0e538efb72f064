import { Wallet } from "ethers";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTestChain } from "../../test/helpers/chain.js";
import type { TestChain } from "../../test/helpers/chain.js";
import { deployFixture, USD } from "../../test/helpers/soulmesh.js";
import type { Fixture } from "../../test/helpers/soulmesh.js";
import { ContractRevertError, InvalidVoucherError } from "./errors.js";
import { withRevertDecoding } from "./revert.js";
import {
  hashVoucher,
  nextSessionNumber,
  recoverVoucherSigner,
  signVoucher,
  validateVoucher,
  verifyVoucher,
  sessionCost,
  VOUCHER_DOMAIN_VERSION,
  voucherCost,
  voucherDomain,
} from "./voucher.js";
import type { SettledTotals, Voucher, VoucherRates } from "./voucher.js";

const payer = Wallet.createRandom();
const escrow = { chainId: 31337n, address: "0x5FbDB2315678afecb367f032d93F642f64180aa3" };

function voucher(overrides: Partial<Voucher> = {}): Voucher {
  return {
    payer: payer.address,
    provider: "0x70997970C51812dc3A010C7d01b50e0d17dc79C8",
    agentId: 7n,
    session: 1_763_888_400_000n,
    inputTokens: 1_234n,
    outputTokens: 567n,
    priceInputPerMillion: 500_000n,
    priceOutputPerMillion: 1_500_000n,
    royaltyPerMillion: 200_000n,
    feeBps: 0n,
    expiry: 2_000_000_000n,
    ...overrides,
  };
}

describe("voucher signing", () => {
  it("signs and recovers the payer", async () => {
    const v = voucher();
    const signature = await signVoucher(payer, v, escrow);
    expect(recoverVoucherSigner(v, escrow, signature)).toBe(payer.address);
    expect(verifyVoucher(v, escrow, signature)).toBe(true);
  });

  it("binds the signature to every field, the chain and the contract", async () => {
    const v = voucher();
    const signature = await signVoucher(payer, v, escrow);
    expect(verifyVoucher({ ...v, outputTokens: v.outputTokens + 1n }, escrow, signature)).toBe(false);
    expect(verifyVoucher({ ...v, session: v.session + 1n }, escrow, signature)).toBe(false);
    expect(verifyVoucher(v, { ...escrow, chainId: 1n }, signature)).toBe(false);
    expect(verifyVoucher(v, { ...escrow, address: "0x" + "12".repeat(20) }, signature)).toBe(false);
    expect(hashVoucher(v, escrow)).not.toBe(hashVoucher(v, { ...escrow, chainId: 1n }));
  });

  it("rejects a signature by someone else and garbage signatures", async () => {
    const v = voucher();
    const forged = await Wallet.createRandom().signTypedData(
      { name: "Soulmesh InferenceEscrow", version: "1", chainId: escrow.chainId, verifyingContract: escrow.address },
      { Voucher: [{ name: "payer", type: "address" }] },
      { payer: v.payer },
    );
    expect(verifyVoucher(v, escrow, forged)).toBe(false);
    expect(verifyVoucher(v, escrow, "0x1234")).toBe(false);
    expect(recoverVoucherSigner(v, escrow, "not hex")).toBeUndefined();
  });

  it("refuses to sign for another payer", async () => {
    await expect(signVoucher(Wallet.createRandom(), voucher(), escrow)).rejects.toThrow(InvalidVoucherError);
  });

  it.each([
    ["a negative token count", { inputTokens: -1n }],
    ["tokens above uint64", { outputTokens: 1n << 64n }],
    ["a price above uint128", { priceInputPerMillion: 1n << 128n }],
    ["a session above uint64", { session: 1n << 64n }],
    ["a payer that is not an address", { payer: "0x1234" }],
    ["a number instead of a bigint", { expiry: 5 as unknown as bigint }],
  ])("rejects %s with a typed error", (_label, bad) => {
    const err = (() => {
      try {
        validateVoucher(voucher(bad as Partial<Voucher>));
      } catch (e) {
        return e;
      }
    })();
    expect(err).toBeInstanceOf(InvalidVoucherError);
    expect((err as InvalidVoucherError).name).toBe("InvalidVoucherError");
  });
});

describe("voucherCost", () => {
  it("pays prices per million tokens, royalty on all tokens and the fee on both, at the voucher's own rates", () => {
    const cost = voucherCost(
      voucher({ inputTokens: 2_000_000n, outputTokens: 1_000_000n, royaltyPerMillion: 100_000n, feeBps: 250n }),
      { inputTokens: 0n, outputTokens: 0n },
    );
    expect(cost.providerAmount).toBe(2n * 500_000n + 1_500_000n);
    expect(cost.royaltyAmount).toBe(300_000n);
    expect(cost.feeAmount).toBe(((2_500_000n + 300_000n) * 250n) / 10_000n);
    expect(cost.total).toBe(cost.providerAmount + cost.royaltyAmount + cost.feeAmount);
    expect(sessionCost({ inputTokens: 2_000_000n, outputTokens: 1_000_000n }, voucher({ royaltyPerMillion: 100_000n, feeBps: 250n }))).toBe(
      cost.total,
    );
  });

  it("never drifts: settling in many steps costs what settling once does, and what sessionCost says", () => {
    const final = voucher({ inputTokens: 9_999n, outputTokens: 3_333n, priceInputPerMillion: 777n, royaltyPerMillion: 1_234n, feeBps: 333n });
    const once = voucherCost(final, { inputTokens: 0n, outputTokens: 0n }).total;
    let stepped = 0n;
    let settled = { inputTokens: 0n, outputTokens: 0n };
    for (let i = 1n; i <= 33n; i++) {
      const next = { inputTokens: (final.inputTokens * i) / 33n, outputTokens: (final.outputTokens * i) / 33n };
      stepped += voucherCost({ ...final, ...next }, settled).total;
      settled = next;
    }
    expect(stepped).toBe(once);
    expect(sessionCost(final, final)).toBe(once);
  });

  it("holds a session to its latest voucher's cumulative cost when the rates changed, cutting the provider's share first", () => {
    const totals = { inputTokens: 10_000n, outputTokens: 5_000n };
    const dear = voucher({ ...totals, priceInputPerMillion: 2_000_000n, priceOutputPerMillion: 2_000_000n, royaltyPerMillion: 100_000n });
    const paid = sessionCost(totals, dear);
    const cheap = voucher({ inputTokens: 30_000n, outputTokens: 15_000n, priceInputPerMillion: 1_000_000n, priceOutputPerMillion: 1_000_000n, royaltyPerMillion: 100_000n });
    const cost = voucherCost(cheap, { ...totals, paid });
    expect(paid + cost.total).toBe(sessionCost(cheap, cheap));
    // The royalty of the new tokens is untouched; the provider gives up what the dearer prices took.
    expect(cost.royaltyAmount).toBe(((45_000n - 15_000n) * 100_000n) / 1_000_000n);
    expect(cost.providerAmount).toBe(sessionCost(cheap, cheap) - paid - cost.royaltyAmount);
    expect(cost.providerAmount).toBeLessThan(voucherCost(cheap, totals).providerAmount);
    // A voucher cheaper in all than what the session already paid takes nothing.
    const cheaper = voucher({ inputTokens: 10_001n, outputTokens: 5_000n, priceInputPerMillion: 1n, priceOutputPerMillion: 1n, royaltyPerMillion: 0n });
    expect(voucherCost(cheaper, { ...totals, paid })).toEqual({ providerAmount: 0n, royaltyAmount: 0n, feeAmount: 0n, total: 0n });
  });
});

describe("nextSessionNumber", () => {
  it("follows the clock, and stays above the last session seen", () => {
    expect(nextSessionNumber(0n, 1_000)).toBe(1_000n);
    expect(nextSessionNumber(5_000n, 1_000)).toBe(5_001n);
  });
});

/** A small seeded PRNG (mulberry32), so that a failing random case can be replayed from its seed. */
function prng(seed: number): (max: bigint) => bigint {
  let a = seed >>> 0;
  const next = (): number => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4_294_967_296;
  };
  // Uniform enough below 2^53 for tests; spans several magnitudes by drawing the magnitude first.
  return (max) => {
    const digits = Math.floor(next() * max.toString().length) + 1;
    const bound = 10n ** BigInt(digits) < max ? 10n ** BigInt(digits) : max;
    return BigInt(Math.floor(next() * Number(bound)));
  };
}

describe("voucherCost and sessionCost against the escrow on EDR", () => {
  const seed = Number(process.env.SOULMESH_TEST_SEED ?? Date.now() % 1_000_000);
  const random = prng(seed);
  const FEE_IN_FORCE = 300n;
  const ROYALTY_IN_FORCE = 150_000n;
  let chain: TestChain;
  let f: Fixture;
  let payer: Wallet, creator: Wallet, provider: Wallet, treasury: string;
  let agentId: bigint;
  let escrowRef: { chainId: number; address: string };

  beforeAll(async () => {
    chain = await createTestChain();
    f = await deployFixture(chain, { protocolFeeBps: Number(FEE_IN_FORCE) });
    [, payer, creator, provider] = chain.wallets as [Wallet, Wallet, Wallet, Wallet];
    treasury = f.deployment.parameters.treasury;
    // The fee is scheduled at deployment and in force after the fee delay.
    await chain.increaseTime(f.deployment.parameters.royaltyDelay + 1);
    agentId = await f.mintAgent(payer, await f.createPersona(creator, { royaltyPerMillion: ROYALTY_IN_FORCE }));
    await f.registerProvider(provider);
    await f.depositAndCommit(payer, provider.address, 10n ** 24n);
    escrowRef = { chainId: f.deployment.chainId, address: f.deployment.contracts.inferenceEscrow };
  });
  afterAll(() => chain?.close());

  /** Random rates the escrow accepts: any provider prices, royalty and fee at least those in force. */
  const randomRates = (): VoucherRates => ({
    priceInputPerMillion: random(10n ** 10n),
    priceOutputPerMillion: random(10n ** 10n),
    royaltyPerMillion: ROYALTY_IN_FORCE + random(10n ** 8n),
    feeBps: FEE_IN_FORCE + random(2_000n),
  });

  /** What the escrow holds of `v`'s session: its totals and what it cost, or nothing for a new session. */
  async function settledFor(v: Voucher): Promise<Required<SettledTotals>> {
    const [session, inputTokens, outputTokens, paid] = await f.contracts.inferenceEscrow.settledOf(v.payer, v.provider, v.agentId);
    return session === v.session ? { inputTokens, outputTokens, paid } : { inputTokens: 0n, outputTokens: 0n, paid: 0n };
  }

  /** Settles `v` as its provider and returns what left the lane and what each party was credited. */
  async function settleAndMeasure(v: Voucher) {
    const escrow = f.as(provider).inferenceEscrow;
    const parties = [provider.address, creator.address, treasury];
    const lane = async () => (await escrow.laneOf(payer.address, provider.address))[0];
    const earnings = () => Promise.all(parties.map((a) => escrow.earningsOf(a)));
    const [laneBefore, before] = [await lane(), await earnings()];
    await (await escrow.settle(v, await signVoucher(payer, v, escrowRef))).wait();
    const [laneAfter, after] = [await lane(), await earnings()];
    const [providerAmount, royaltyAmount, feeAmount] = after.map((x, i) => x - before[i]!) as [bigint, bigint, bigint];
    return { providerAmount, royaltyAmount, feeAmount, total: laneBefore - laneAfter };
  }

  const voucherAt = async (fields: Partial<Voucher>): Promise<Voucher> => ({
    payer: payer.address,
    provider: provider.address,
    agentId,
    session: 1n,
    inputTokens: 1n,
    outputTokens: 1n,
    ...randomRates(),
    expiry: BigInt((await chain.now()) + 3600),
    ...fields,
  });

  it(`equals previewSettle for random totals and rates (seed ${seed})`, async () => {
    const escrow = f.contracts.inferenceEscrow;
    for (let i = 0; i < 60; i++) {
      const v = await voucherAt({
        session: 1_000_000n + BigInt(i),
        inputTokens: random(2n ** 48n - 1n),
        outputTokens: random(2n ** 48n - 1n) + 1n,
      });
      const preview = await escrow.previewSettle(v);
      const cost = voucherCost(v, await settledFor(v));
      expect([preview.providerAmount, preview.royaltyAmount, preview.feeAmount], `seed ${seed}, case ${i}`).toEqual([
        cost.providerAmount,
        cost.royaltyAmount,
        cost.feeAmount,
      ]);
      expect(cost.total, `seed ${seed}, case ${i}`).toBe(sessionCost(v, v));
    }
  });

  it(`takes exactly voucherCost from the lane, settle after settle, and a session costs sessionCost in all (seed ${seed})`, async () => {
    for (let s = 0; s < 4; s++) {
      const rates = randomRates();
      const session = 2_000_000n + BigInt(s);
      let totals = { inputTokens: 0n, outputTokens: 0n };
      let spent = 0n;
      for (let step = 0; step < 6; step++) {
        totals = { inputTokens: totals.inputTokens + random(10n ** 9n), outputTokens: totals.outputTokens + random(10n ** 9n) + 1n };
        const v = await voucherAt({ session, ...totals, ...rates });
        const expected = voucherCost(v, await settledFor(v));
        expect(await settleAndMeasure(v), `seed ${seed}, session ${s}, step ${step}`).toEqual(expected);
        spent += expected.total;
      }
      expect(spent, `seed ${seed}, session ${s}`).toBe(sessionCost(totals, rates));
      expect((await settledFor(await voucherAt({ session })))!.paid).toBe(spent);
    }
  });

  it(`attack 12: a rate changed mid-session never makes the session cost more than its latest voucher (seed ${seed})`, async () => {
    for (let s = 0; s < 8; s++) {
      const session = 3_000_000n + BigInt(s);
      const first = await voucherAt({ session, inputTokens: random(10n ** 9n) + 1n, outputTokens: random(10n ** 9n) + 1n });
      const firstCost = await settleAndMeasure(first);
      expect(firstCost).toEqual(voucherCost(first, { inputTokens: 0n, outputTokens: 0n }));
      // The next voucher of the session carries other rates (cheaper or dearer, at random).
      const second = await voucherAt({
        session,
        inputTokens: first.inputTokens + random(10n ** 9n) + 1n,
        outputTokens: first.outputTokens + random(10n ** 9n),
      });
      const settled = await settledFor(second);
      expect(settled.paid).toBe(firstCost.total);
      const expected = voucherCost(second, settled);
      const measured = await settleAndMeasure(second);
      expect(measured, `seed ${seed}, session ${s}`).toEqual(expected);
      const latest = sessionCost(second, second);
      // The new tokens cost what the new rates price them at, but never more than takes the session to the
      // latest voucher's own cumulative cost; what an earlier voucher already paid is not taken back.
      const plain = voucherCost(second, { inputTokens: first.inputTokens, outputTokens: first.outputTokens });
      const room = latest > firstCost.total ? latest - firstCost.total : 0n;
      expect(measured.total, `seed ${seed}, session ${s}`).toBe(plain.total < room ? plain.total : room);
      expect(firstCost.total + measured.total).toBeLessThanOrEqual(latest > firstCost.total ? latest : firstCost.total);
      // What the excess comes off: the provider's share first, then the royalty, then the fee.
      const excess = plain.total - measured.total;
      const providerCut = excess < plain.providerAmount ? excess : plain.providerAmount;
      expect(measured.providerAmount).toBe(plain.providerAmount - providerCut);
      if (excess <= plain.providerAmount) {
        expect([measured.royaltyAmount, measured.feeAmount]).toEqual([plain.royaltyAmount, plain.feeAmount]);
      }
    }
  });

  it("attack 12: a dearer voucher first, then a cheaper one, costs the cheaper one's cumulative cost, to the unit", async () => {
    const session = 4_000_000n;
    const rates = { royaltyPerMillion: ROYALTY_IN_FORCE, feeBps: FEE_IN_FORCE };
    const dear = await voucherAt({ session, inputTokens: 1_000_000n, outputTokens: 500_000n, ...rates, priceInputPerMillion: 4n * USD, priceOutputPerMillion: 8n * USD });
    const cheap = await voucherAt({ session, inputTokens: 3_000_000n, outputTokens: 1_500_000n, ...rates, priceInputPerMillion: 2n * USD, priceOutputPerMillion: 4n * USD });
    const paidFirst = (await settleAndMeasure(dear)).total;
    const second = await settleAndMeasure(cheap);
    expect(paidFirst + second.total).toBe(sessionCost(cheap, cheap));
    // The royalty and fee of the new tokens are paid in full; the provider's share takes the whole cut.
    const plain = voucherCost(cheap, { inputTokens: dear.inputTokens, outputTokens: dear.outputTokens });
    expect(second.royaltyAmount).toBe(plain.royaltyAmount);
    expect(second.feeAmount).toBe(plain.feeAmount);
    expect(second.providerAmount).toBe(plain.providerAmount - (plain.total - second.total));
    expect(second.providerAmount).toBeLessThan(plain.providerAmount);
  });

  it('binds vouchers to domain version "2": a signature for version "1" is refused on chain', async () => {
    expect(VOUCHER_DOMAIN_VERSION).toBe("2");
    const escrow = f.as(provider).inferenceEscrow;
    const domain = await escrow.eip712Domain();
    expect([domain.name, domain.version, domain.chainId, domain.verifyingContract]).toEqual([
      voucherDomain(escrowRef).name,
      "2",
      BigInt(escrowRef.chainId),
      escrowRef.address,
    ]);
    const v = await voucherAt({ session: 5_000_000n, inputTokens: 1_000n, outputTokens: 1_000n });
    const { VOUCHER_TYPES } = await import("./voucher.js");
    const v1 = await payer.signTypedData({ ...voucherDomain(escrowRef), version: "1" }, VOUCHER_TYPES, v);
    expect(await escrow.isValidVoucherSignature(v, v1)).toBe(false);
    const lane = await escrow.laneOf(payer.address, provider.address);
    const err = await withRevertDecoding(escrow.settle(v, v1)).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ContractRevertError);
    expect((err as ContractRevertError).reason).toBe("Escrow__InvalidSignature");
    expect(await escrow.laneOf(payer.address, provider.address)).toEqual(lane);
    const v2 = await signVoucher(payer, v, escrowRef);
    expect(await escrow.isValidVoucherSignature(v, v2)).toBe(true);
    expect(await settleAndMeasure(v)).toEqual(voucherCost(v, { inputTokens: 0n, outputTokens: 0n }));
  });
});
