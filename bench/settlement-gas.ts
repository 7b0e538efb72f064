/**
 * Gas of Soulmesh's on-chain operations on a real EDR chain: deposit, provider registration, persona and
 * agent mints, one settle, and per voucher in batches of 10 and 100.
 *
 * Batches hold the latest voucher of distinct sessions, each from a distinct payer and agent, so every
 * payer's deposit and every agent's record is a cold storage read. The headline figures are the steady
 * state: the payer has used this provider before, so its channel's slot exists (`settleGas`,
 * `batch…GasPerVoucher`); the `…NewChannel` figures are a payer's very first session with the provider.
 * Prints one JSON line of figures last.
 *
 *   npm run bench -- settlement-gas
 */
import { Wallet } from "ethers";
import type { ContractTransactionResponse } from "ethers";
import { createTestChain } from "../test/helpers/chain.js";
import { deployFixture, USD } from "../test/helpers/soulmesh.js";
import type { Fixture } from "../test/helpers/soulmesh.js";

const log = (msg: string) => process.stderr.write(`${msg}\n`);

async function gasOf(tx: Promise<ContractTransactionResponse>): Promise<number> {
  const receipt = await (await tx).wait();
  return Number(receipt!.gasUsed);
}

/** `count` fresh payers, each with gas, a deposit (made for them by the deployer) and an agent. */
async function payersWithAgents(f: Fixture, count: number, personaId: bigint) {
  const payers: { wallet: Wallet; agentId: bigint }[] = [];
  const total = 10n * USD * BigInt(count);
  await f.fund(f.chain.wallets[0]!.address, total);
  await (await f.contracts.token.approve(f.deployment.contracts.inferenceEscrow, total)).wait();
  for (let i = 0; i < count; i++) {
    const wallet = new Wallet(Wallet.createRandom().privateKey, f.chain.provider);
    await f.chain.provider.send("hardhat_setBalance", [wallet.address, "0x8AC7230489E80000"]);
    await (await f.contracts.inferenceEscrow.depositFor(wallet.address, 10n * USD)).wait();
    payers.push({ wallet, agentId: await f.mintAgent(wallet, personaId) });
  }
  return payers;
}

async function main(): Promise<void> {
  const chain = await createTestChain();
  const f = await deployFixture(chain);
  const [, user, creator, provider] = chain.wallets as [Wallet, Wallet, Wallet, Wallet];

  log("measuring registrations and mints…");
  await f.fund(user.address, 100n * USD);
  await (await f.as(user).token.approve(f.deployment.contracts.inferenceEscrow, 100n * USD)).wait();
  const depositGas = await gasOf(f.as(user).inferenceEscrow.deposit(50n * USD));

  const stake = BigInt(f.deployment.parameters.minStake);
  await f.fund(provider.address, stake);
  await (await f.as(provider).token.approve(f.deployment.contracts.providerRegistry, stake)).wait();
  const providerRegistrationGas = await gasOf(
    f.as(provider).providerRegistry.register(
      "12D3KooWBenchPeerIdBenchPeerIdBenchPeerIdBenchPeerId",
      ["/ip4/127.0.0.1/tcp/4001", "/ip4/127.0.0.1/tcp/4002/ws"],
      ["0x" + "11".repeat(32)],
      500_000n,
      1_500_000n,
      stake,
    ),
  );
  const personaMintGas = await gasOf(
    f.as(creator).personaRegistry.createPersona(
      "bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi",
      "0x" + "22".repeat(32),
      "0x" + "11".repeat(32),
      200_000n,
      5n * USD,
    ),
  );
  const personaId = 1n;
  await f.fund(user.address, 5n * USD);
  await (await f.as(user).token.approve(f.deployment.contracts.agentRegistry, 5n * USD)).wait();
  const agentMintGas = await gasOf(f.as(user).agentRegistry.mint(personaId, 5n * USD));
  const agentId = 1n;

  log("measuring single settles…");
  const escrow = f.as(provider).inferenceEscrow;
  const channel = { provider: provider.address, agentId };
  // The first settle on a new channel, also writing the provider's and creator's earnings from zero.
  const first = await f.voucher(user, { ...channel, session: 1n });
  const settleGasFirstEver = await gasOf(escrow.settle(first.voucher, first.signature));
  // Steady state: a new session on a channel used before; earnings already non-zero.
  const fresh = await f.voucher(user, { ...channel, session: 2n });
  const settleGas = await gasOf(escrow.settle(fresh.voucher, fresh.signature));
  // A later voucher of a session already settled once.
  const later = await f.voucher(user, { ...channel, session: 2n, inputTokens: 2_000n, outputTokens: 1_000n });
  const settleGasSameSession = await gasOf(escrow.settle(later.voucher, later.signature));
  // A payer's first session with the provider, earnings already non-zero.
  const [newcomer] = await payersWithAgents(f, 1, personaId);
  const opening = await f.voucher(newcomer!.wallet, { provider: provider.address, agentId: newcomer!.agentId });
  const settleGasNewChannel = await gasOf(escrow.settle(opening.voucher, opening.signature));

  const batch = async (size: number): Promise<{ newChannel: number; steady: number }> => {
    log(`preparing batches of ${size} (${size} payers, agents and sessions)…`);
    const payers = await payersWithAgents(f, size, personaId);
    const round = async (session: bigint) => {
      const vouchers = await Promise.all(
        payers.map(({ wallet, agentId: id }) => f.voucher(wallet, { provider: provider.address, agentId: id, session })),
      );
      return Math.round((await gasOf(escrow.settleBatch(vouchers))) / size);
    };
    return { newChannel: await round(1n), steady: await round(2n) };
  };
  const batch10 = await batch(10);
  const batch100 = await batch(100);

  await chain.close();
  const figures = {
    settleGas,
    batch10GasPerVoucher: batch10.steady,
    batch100GasPerVoucher: batch100.steady,
    settleGasNewChannel,
    batch10GasPerVoucherNewChannel: batch10.newChannel,
    batch100GasPerVoucherNewChannel: batch100.newChannel,
    settleGasSameSession,
    settleGasFirstEver,
    depositGas,
    providerRegistrationGas,
    personaMintGas,
    agentMintGas,
    goals: { settleGas: 80_000, batch100GasPerVoucher: 40_000 },
  };
  log(
    `settle ${settleGas} gas (goal ≤ 80,000); batch of 100: ${batch100.steady} gas per voucher (goal ≤ 40,000)`,
  );
  console.log(JSON.stringify(figures));
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
