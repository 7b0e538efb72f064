import { Wallet } from "ethers";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { MockERC1271Wallet__factory } from "../../types/ethers-contracts/index.js";
import { ContractRevertError } from "../../sdk/chain/errors.js";
import { decodeRevert, withRevertDecoding } from "../../sdk/chain/revert.js";
import { hashVoucher, signVoucher, verifyVoucher, voucherCost } from "../../sdk/chain/voucher.js";
import type { Voucher } from "../../sdk/chain/voucher.js";
import { createTestChain } from "../helpers/chain.js";
import type { TestChain } from "../helpers/chain.js";
import { deployFixture, USD } from "../helpers/soulmesh.js";
import type { Fixture } from "../helpers/soulmesh.js";

let chain: TestChain;
let f: Fixture;
let user: Wallet, creator: Wallet, provider: Wallet, stranger: Wallet;
let personaId: bigint, agentId: bigint;
let escrowRef: { chainId: number; address: string };

beforeAll(async () => {
  chain = await createTestChain();
  f = await deployFixture(chain);
  [, user, creator, provider, stranger] = chain.wallets as [Wallet, Wallet, Wallet, Wallet, Wallet];
  personaId = await f.createPersona(creator, { royaltyPerMillion: 250_000n });
  agentId = await f.mintAgent(user, personaId);
  await f.registerProvider(provider);
  await f.deposit(user, 100n * USD);
  escrowRef = { chainId: f.deployment.chainId, address: f.deployment.contracts.inferenceEscrow };
});
afterAll(() => chain?.close());

describe("SDK vouchers against the escrow's own verification", () => {
  it("hash the same digest as the contract, for many vouchers", async () => {
    for (let i = 0; i < 20; i++) {
      const { voucher } = await f.voucher(user, {
        provider: provider.address,
        agentId: BigInt(i + 1),
        session: BigInt(Math.floor(Math.random() * 2 ** 48)),
        inputTokens: BigInt(Math.floor(Math.random() * 1e9)),
        outputTokens: BigInt(Math.floor(Math.random() * 1e9)),
        priceInputPerMillion: BigInt(Math.floor(Math.random() * 1e12)),
      });
      expect(hashVoucher(voucher, escrowRef)).toBe(await f.contracts.inferenceEscrow.hashVoucher(voucher));
    }
  });

  it("are accepted by the contract exactly when the SDK accepts them", async () => {
    const { voucher, signature } = await f.voucher(user, { provider: provider.address, agentId });
    expect(verifyVoucher(voucher, escrowRef, signature)).toBe(true);
    expect(await f.contracts.inferenceEscrow.isValidVoucherSignature(voucher, signature)).toBe(true);

    const forged = await signVoucher(stranger, { ...voucher, payer: stranger.address }, escrowRef);
    expect(verifyVoucher(voucher, escrowRef, forged)).toBe(false);
    expect(await f.contracts.inferenceEscrow.isValidVoucherSignature(voucher, forged)).toBe(false);

    const otherChain = await signVoucher(user, voucher, { ...escrowRef, chainId: 1 });
    expect(verifyVoucher(voucher, escrowRef, otherChain)).toBe(false);
    expect(await f.contracts.inferenceEscrow.isValidVoucherSignature(voucher, otherChain)).toBe(false);
  });

  it("settle and pay every party what voucherCost predicts, to the unit", async () => {
    const escrow = f.as(provider).inferenceEscrow;
    const before = {
      user: await escrow.depositOf(user.address),
      provider: await escrow.earningsOf(provider.address),
      creator: await escrow.earningsOf(creator.address),
    };
    const { voucher, signature } = await f.voucher(user, {
      provider: provider.address,
      agentId,
      session: 10n,
      inputTokens: 12_345n,
      outputTokens: 6_789n,
    });
    const cost = voucherCost(voucher, { inputTokens: 0n, outputTokens: 0n }, 250_000n, 0n);
    const preview = await escrow.previewSettle(voucher);
    expect([preview.providerAmount, preview.royaltyAmount, preview.feeAmount]).toEqual([
      cost.providerAmount,
      cost.royaltyAmount,
      cost.feeAmount,
    ]);
    await (await escrow.settle(voucher, signature)).wait();
    expect(await escrow.depositOf(user.address)).toBe(before.user - cost.total);
    expect(await escrow.earningsOf(provider.address)).toBe(before.provider + cost.providerAmount);
    expect(await escrow.earningsOf(creator.address)).toBe(before.creator + cost.royaltyAmount);
    expect(await escrow.settledOf(user.address, provider.address, agentId)).toEqual([10n, 12_345n, 6_789n]);
  });

  it("rejects a replayed voucher with a decoded, typed error and changes nothing", async () => {
    const escrow = f.as(provider).inferenceEscrow;
    const { voucher, signature } = await f.voucher(user, { provider: provider.address, agentId, session: 20n });
    await (await escrow.settle(voucher, signature)).wait();
    const deposit = await escrow.depositOf(user.address);
    const err = await withRevertDecoding(escrow.settle(voucher, signature)).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ContractRevertError);
    expect((err as ContractRevertError).reason).toBe("Escrow__AlreadySettled");
    expect(await escrow.depositOf(user.address)).toBe(deposit);
  });

  it("decodes a user-fixable revert with what to do next", async () => {
    const err = await f
      .as(stranger)
      .inferenceEscrow.requestWithdrawal(1n)
      .catch((e: unknown) => e);
    const decoded = decodeRevert(err);
    expect(decoded?.reason).toBe("Escrow__InsufficientDeposit");
    expect(decoded?.args).toEqual([stranger.address, 1n, 0n]);
    expect(decoded?.message).toContain("soulmesh deposit");
    expect(decodeRevert(new Error("not a revert"))).toBeUndefined();
  });
});

describe("smart-contract wallets (ERC-1271)", () => {
  it("pay with vouchers their owner key signs", async () => {
    const owner = new Wallet(Wallet.createRandom().privateKey, chain.provider);
    await chain.provider.send("hardhat_setBalance", [owner.address, "0x56BC75E2D63100000"]);
    const wallet = await new MockERC1271Wallet__factory(owner).deploy(owner.address);
    await wallet.waitForDeployment();
    const walletAddress = await wallet.getAddress();
    await (await f.contracts.token.approve(f.deployment.contracts.inferenceEscrow, 5n * USD)).wait();
    await f.fund(chain.wallets[0]!.address, 5n * USD);
    await (await f.contracts.inferenceEscrow.depositFor(walletAddress, 5n * USD)).wait();

    const voucher: Voucher = {
      payer: walletAddress,
      provider: provider.address,
      agentId,
      session: 1n,
      inputTokens: 1_000n,
      outputTokens: 1_000n,
      priceInputPerMillion: 500_000n,
      priceOutputPerMillion: 1_500_000n,
      expiry: BigInt((await chain.now()) + 600),
    };
    // The owner key signs the digest the escrow computes for the wallet as payer.
    const signature = owner.signingKey.sign(hashVoucher(voucher, escrowRef)).serialized;
    expect(verifyVoucher(voucher, escrowRef, signature)).toBe(false); // not an EOA signature for the payer
    expect(await f.contracts.inferenceEscrow.isValidVoucherSignature(voucher, signature)).toBe(true);
    await (await f.as(provider).inferenceEscrow.settle(voucher, signature)).wait();
    expect(await f.contracts.inferenceEscrow.depositOf(walletAddress)).toBeLessThan(5n * USD);

    const stranger = Wallet.createRandom().signingKey.sign(hashVoucher({ ...voucher, session: 2n }, escrowRef));
    const err = await withRevertDecoding(
      f.as(provider).inferenceEscrow.settle({ ...voucher, session: 2n }, stranger.serialized),
    ).catch((e: unknown) => e);
    expect((err as ContractRevertError).reason).toBe("Escrow__InvalidSignature");
  });
});
