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
  // Vouchers settle only from the payer's lane with their provider.
  await f.depositAndCommit(user, provider.address, 100n * USD);
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
    const lane = async () => (await escrow.laneOf(user.address, provider.address))[0];
    const before = {
      user: await lane(),
      provider: await escrow.earningsOf(provider.address),
      creator: await escrow.earningsOf(creator.address),
    };
    const { voucher, signature } = await f.voucher(user, {
      provider: provider.address,
      agentId,
      session: 10n,
      inputTokens: 12_345n,
      outputTokens: 6_789n,
      royaltyPerMillion: 250_000n,
    });
    const cost = voucherCost(voucher, { inputTokens: 0n, outputTokens: 0n });
    const preview = await escrow.previewSettle(voucher);
    expect([preview.providerAmount, preview.royaltyAmount, preview.feeAmount]).toEqual([
      cost.providerAmount,
      cost.royaltyAmount,
      cost.feeAmount,
    ]);
    await (await escrow.settle(voucher, signature)).wait();
    expect(await lane()).toBe(before.user - cost.total);
    expect(await escrow.earningsOf(provider.address)).toBe(before.provider + cost.providerAmount);
    expect(await escrow.earningsOf(creator.address)).toBe(before.creator + cost.royaltyAmount);
    expect(await escrow.settledOf(user.address, provider.address, agentId)).toEqual([10n, 12_345n, 6_789n, cost.total]);
  });

  it("rejects a replayed voucher with a decoded, typed error and changes nothing", async () => {
    const escrow = f.as(provider).inferenceEscrow;
    const { voucher, signature } = await f.voucher(user, { provider: provider.address, agentId, session: 20n, royaltyPerMillion: 250_000n });
    await (await escrow.settle(voucher, signature)).wait();
    const lane = await escrow.laneOf(user.address, provider.address);
    const err = await withRevertDecoding(escrow.settle(voucher, signature)).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ContractRevertError);
    expect((err as ContractRevertError).reason).toBe("Escrow__AlreadySettled");
    expect(await escrow.laneOf(user.address, provider.address)).toEqual(lane);
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
    // The wallet commits its deposit to the provider's lane itself, as any payer must.
    const commit = f.contracts.inferenceEscrow.interface.encodeFunctionData("commit", [provider.address, 5n * USD]);
    await (await wallet.execute(f.deployment.contracts.inferenceEscrow, commit)).wait();

    const voucher: Voucher = {
      payer: walletAddress,
      provider: provider.address,
      agentId,
      session: 1n,
      inputTokens: 1_000n,
      outputTokens: 1_000n,
      priceInputPerMillion: 500_000n,
      priceOutputPerMillion: 1_500_000n,
      royaltyPerMillion: 250_000n,
      feeBps: 0n,
      expiry: BigInt((await chain.now()) + 600),
    };
    // The owner key signs the digest the escrow computes for the wallet as payer.
    const signature = owner.signingKey.sign(hashVoucher(voucher, escrowRef)).serialized;
    expect(verifyVoucher(voucher, escrowRef, signature)).toBe(false); // not an EOA signature for the payer
    expect(await f.contracts.inferenceEscrow.isValidVoucherSignature(voucher, signature)).toBe(true);
    await (await f.as(provider).inferenceEscrow.settle(voucher, signature)).wait();
    expect((await f.contracts.inferenceEscrow.laneOf(walletAddress, provider.address))[0]).toBe(
      5n * USD - voucherCost(voucher, { inputTokens: 0n, outputTokens: 0n }).total,
    );

    const stranger = Wallet.createRandom().signingKey.sign(hashVoucher({ ...voucher, session: 2n }, escrowRef));
    const err = await withRevertDecoding(
      f.as(provider).inferenceEscrow.settle({ ...voucher, session: 2n }, stranger.serialized),
    ).catch((e: unknown) => e);
    expect((err as ContractRevertError).reason).toBe("Escrow__InvalidSignature");
  });
});

/**
 * The payment attacks of issue 14 that reach the escrow, as the SDK meets them: each must fail on chain with
 * a typed, decodable error and leave the honest provider's vouchers payable in full.
 */
describe("attacks on the payment path, through the SDK", () => {
  const reasonOf = async (p: Promise<unknown>): Promise<string | undefined> => {
    const err = await withRevertDecoding(p).catch((e: unknown) => e);
    return err instanceof ContractRevertError ? err.reason : undefined;
  };

  it("attack 1: a payer cannot settle its own voucher to void the provider's, at any session number", async () => {
    const escrow = f.as(provider).inferenceEscrow;
    const honest = await f.voucher(user, { provider: provider.address, agentId, session: 100n, royaltyPerMillion: 250_000n });
    // The payer signs a voucher for the last session number at price 0 and tries to settle it first.
    const voiding = await f.voucher(user, {
      provider: provider.address,
      agentId,
      session: (1n << 64n) - 1n,
      priceInputPerMillion: 0n,
      priceOutputPerMillion: 0n,
      royaltyPerMillion: 250_000n,
    });
    expect(await reasonOf(f.as(user).inferenceEscrow.settle(voiding.voucher, voiding.signature))).toBe("Escrow__NotProviderOrSettler");
    expect(await reasonOf(f.as(stranger).inferenceEscrow.settle(voiding.voucher, voiding.signature))).toBe("Escrow__NotProviderOrSettler");
    const cost = voucherCost(honest.voucher, await settledTotals(honest.voucher));
    const lane = (await escrow.laneOf(user.address, provider.address))[0];
    await (await escrow.settle(honest.voucher, honest.signature)).wait();
    expect((await escrow.laneOf(user.address, provider.address))[0]).toBe(lane - cost.total);
  });

  it("attack 2: a payer cannot pay an address of its own that is not a registered provider", async () => {
    await f.deposit(stranger, 5n * USD);
    expect(await reasonOf(f.as(stranger).inferenceEscrow.commit(user.address, 5n * USD))).toBe("Escrow__NotAProvider");
    // With no lane, its own voucher to itself settles nothing, and the free deposit waits out the delay.
    const self = await f.voucher(stranger, { provider: stranger.address, agentId, royaltyPerMillion: 250_000n });
    expect(await reasonOf(f.as(stranger).inferenceEscrow.settle(self.voucher, self.signature))).toBe("Escrow__InsufficientLane");
    expect(await f.contracts.inferenceEscrow.depositOf(stranger.address)).toBe(5n * USD);
  });

  it("attack 4: a copied batch entry settled first is skipped with its reason; the rest of the batch settles", async () => {
    const escrow = f.as(provider).inferenceEscrow;
    const agents = [agentId, await f.mintAgent(user, personaId), await f.mintAgent(user, personaId)];
    const batch = await Promise.all(
      agents.map((id) => f.voucher(user, { provider: provider.address, agentId: id, session: 200n, royaltyPerMillion: 250_000n })),
    );
    // A front-runner cannot take an entry; the provider itself settling one first is the worst case left.
    expect(await reasonOf(f.as(stranger).inferenceEscrow.settle(batch[1]!.voucher, batch[1]!.signature))).toBe(
      "Escrow__NotProviderOrSettler",
    );
    await (await escrow.settle(batch[1]!.voucher, batch[1]!.signature)).wait();
    const receipt = await (await escrow.settleBatch(batch)).wait();
    expect(receipt!.status).toBe(1);
    const events = receipt!.logs.map((l) => escrow.interface.parseLog(l)).filter((e) => e !== null);
    expect(events.filter((e) => e.name === "VoucherSettled").map((e) => e.args.agentId)).toEqual([agents[0], agents[2]]);
    const skipped = events.filter((e) => e.name === "SettlementSkipped");
    expect(skipped.map((e) => [e.args.agentId, e.args.session])).toEqual([[agents[1], 200n]]);
    // The reason is the custom error `settle` would revert with, decodable like any revert.
    expect(decodeRevert({ data: skipped[0]!.args.reason })?.reason).toBe("Escrow__AlreadySettled");
  });

  it("attack 11: a voucher signed below the royalty in force is refused, and the cap bounds any royalty", async () => {
    const low = await f.voucher(user, { provider: provider.address, agentId, session: 300n, royaltyPerMillion: 249_999n });
    expect(await reasonOf(f.as(provider).inferenceEscrow.settle(low.voucher, low.signature))).toBe("Escrow__RoyaltyBelowRate");
    const max = await f.contracts.personaRegistry.maxRoyaltyPerMillion();
    expect(max).toBe(BigInt(f.deployment.parameters.maxRoyaltyPerMillion));
    const personaId2 = await f.createPersona(creator, { royaltyPerMillion: max });
    expect(await reasonOf(f.as(creator).personaRegistry.scheduleRoyalty(personaId2, max + 1n))).toBe("Persona__RoyaltyTooHigh");
    expect(await reasonOf(f.createPersona(creator, { royaltyPerMillion: max + 1n }))).toBe("Persona__RoyaltyTooHigh");
  });

  async function settledTotals(v: Voucher) {
    const [session, inputTokens, outputTokens, paid] = await f.contracts.inferenceEscrow.settledOf(v.payer, v.provider, v.agentId);
    return session === v.session ? { inputTokens, outputTokens, paid } : { inputTokens: 0n, outputTokens: 0n };
  }
});
