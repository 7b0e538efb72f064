import { Wallet } from "ethers";
import { describe, expect, it } from "vitest";
import { InvalidVoucherError } from "./errors.js";
import {
  hashVoucher,
  nextSessionNumber,
  recoverVoucherSigner,
  signVoucher,
  validateVoucher,
  verifyVoucher,
  voucherCost,
} from "./voucher.js";
import type { Voucher } from "./voucher.js";

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
  it("pays prices per million tokens, royalty on all tokens and the fee on both", () => {
    const cost = voucherCost(
      voucher({ inputTokens: 2_000_000n, outputTokens: 1_000_000n }),
      { inputTokens: 0n, outputTokens: 0n },
      100_000n,
      250n,
    );
    expect(cost.providerAmount).toBe(2n * 500_000n + 1_500_000n);
    expect(cost.royaltyAmount).toBe(300_000n);
    expect(cost.feeAmount).toBe(((2_500_000n + 300_000n) * 250n) / 10_000n);
    expect(cost.total).toBe(cost.providerAmount + cost.royaltyAmount + cost.feeAmount);
  });

  it("never drifts: settling in many steps costs what settling once does", () => {
    const final = voucher({ inputTokens: 9_999n, outputTokens: 3_333n, priceInputPerMillion: 777n });
    const once = voucherCost(final, { inputTokens: 0n, outputTokens: 0n }, 1_234n, 333n).total;
    let stepped = 0n;
    let settled = { inputTokens: 0n, outputTokens: 0n };
    for (let i = 1n; i <= 33n; i++) {
      const next = { inputTokens: (final.inputTokens * i) / 33n, outputTokens: (final.outputTokens * i) / 33n };
      stepped += voucherCost({ ...final, ...next }, settled, 1_234n, 333n).total;
      settled = next;
    }
    expect(stepped).toBe(once);
  });
});

describe("nextSessionNumber", () => {
  it("follows the clock, and stays above the last session seen", () => {
    expect(nextSessionNumber(0n, 1_000)).toBe(1_000n);
    expect(nextSessionNumber(5_000n, 1_000)).toBe(5_001n);
  });
});
