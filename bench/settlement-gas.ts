/**
 * Gas of Soulmesh's on-chain payment path on a real EDR chain, with lanes: what a payer spends to make a new
 * provider payable, and what a provider spends to settle, alone and in batches.
 *
 * The rule measured: vouchers settle only from the payer's lane with their provider, and only their provider
 * settles them, so every figure below is a transaction the provider (or the payer, for deposits and commits)
 * sends itself. Cases, each on state a real network has:
 * - `settleGasWarm`: one voucher of a new session on a channel (payer, provider, agent) used before, the
 *   provider and creator having earned before (the steady state).
 * - `settleGasNewLane`: the first voucher after a payer committed funds to a provider it never used (new
 *   channel), right after its one transaction (`depositWithPermitAndCommit`).
 * - `commitGas`: `commit` of part of the free deposit to a provider the payer never used (a new lane).
 * - `commitTransactionsPerNewProvider`: the transactions a payer holding tokens but no allowance sends before
 *   a new provider can be paid, counted by its nonce (permit path); the free-deposit path (`commit`) is checked
 *   to take as many.
 * - `batch100DistinctGasPerVoucher`: a batch of 100 vouchers of 100 distinct payers, agents, personas and
 *   creators, every channel used before (warm); `batch100DistinctColdGasPerVoucher`: the same, each channel's
 *   first settlement (creators have earned before); `batch100DistinctFirstEverGasPerVoucher`: also every
 *   creator's first earnings.
 * - `batch10/100GasPerVoucher(NewChannel)`: distinct payers and agents of one persona (one creator).
 * `breakdown` splits a warm distinct batch's gas per voucher by operation (calldata, storage, registry calls,
 * signature recovery, logs, the rest), from the transaction's opcode trace.
 *
 * Prints one JSON line of figures last.
 *
 *   npm run bench -- settlement-gas [--opcodes]   (--opcodes: also log where "other" goes, by opcode)
 */
import { Wallet, getBytes } from "ethers";
import type { ContractTransactionResponse, TransactionReceipt } from "ethers";
import { createTestChain } from "../test/helpers/chain.js";
import { deployFixture, USD } from "../test/helpers/soulmesh.js";
import type { Fixture } from "../test/helpers/soulmesh.js";
import type { Voucher } from "../sdk/chain/voucher.js";
import { signPermit } from "../sdk/client/lanes.js";
import { log } from "./_util.js";

type Signed = { voucher: Voucher; signature: string };

async function receiptOf(tx: Promise<ContractTransactionResponse>): Promise<TransactionReceipt> {
  const receipt = await (await tx).wait();
  if (!receipt || receipt.status !== 1) throw new Error("transaction failed");
  return receipt;
}

async function gasOf(tx: Promise<ContractTransactionResponse>): Promise<number> {
  return Number((await receiptOf(tx)).gasUsed);
}

/** A fresh account with ether for gas. */
async function freshWallet(f: Fixture): Promise<Wallet> {
  const wallet = new Wallet(Wallet.createRandom().privateKey, f.chain.provider);
  await f.chain.provider.send("hardhat_setBalance", [wallet.address, "0x8AC7230489E80000"]);
  return wallet;
}

/** A registered provider of its own (a fresh account). */
async function freshProvider(f: Fixture): Promise<Wallet> {
  const provider = await freshWallet(f);
  await f.registerProvider(provider);
  return provider;
}

/** Royalty the voucher of an agent of `personaId` must carry: the one in force. */
async function royaltyOf(f: Fixture, personaId: bigint): Promise<bigint> {
  return (await f.contracts.personaRegistry.royaltyOf(personaId))[1];
}

interface Payer {
  wallet: Wallet;
  agentId: bigint;
  personaId: bigint;
  royaltyPerMillion: bigint;
}

/**
 * `personaIds.length` fresh payers, one per persona, each with an agent of it and a lane of 10 tUSD with
 * `provider` (deposited for it by the deployer, committed by the payer itself).
 */
async function payersWithLanes(f: Fixture, provider: string, personaIds: readonly bigint[]): Promise<Payer[]> {
  const total = 10n * USD * BigInt(personaIds.length);
  await f.fund(f.chain.wallets[0]!.address, total);
  await (await f.contracts.token.approve(f.deployment.contracts.inferenceEscrow, total)).wait();
  const payers: Payer[] = [];
  for (const personaId of personaIds) {
    const wallet = await freshWallet(f);
    await (await f.contracts.inferenceEscrow.depositFor(wallet.address, 10n * USD)).wait();
    await (await f.as(wallet).inferenceEscrow.commit(provider, 10n * USD)).wait();
    payers.push({ wallet, personaId, agentId: await f.mintAgent(wallet, personaId), royaltyPerMillion: await royaltyOf(f, personaId) });
  }
  return payers;
}

/** Gas per voucher of one batch of each payer's voucher for `session`, settled by `provider`. */
async function batchRound(f: Fixture, provider: Wallet, payers: readonly Payer[], session: bigint): Promise<{ perVoucher: number; receipt: TransactionReceipt }> {
  const vouchers: Signed[] = await Promise.all(
    payers.map((p) =>
      f.voucher(p.wallet, { provider: provider.address, agentId: p.agentId, session, royaltyPerMillion: p.royaltyPerMillion }),
    ),
  );
  const receipt = await receiptOf(f.as(provider).inferenceEscrow.settleBatch(vouchers));
  const escrow = f.contracts.inferenceEscrow;
  const skipped = receipt.logs.filter((l) => escrow.interface.parseLog(l)?.name === "SettlementSkipped").length;
  if (skipped > 0) throw new Error(`${skipped} of ${payers.length} vouchers were skipped: the figures would be wrong`);
  return { perVoucher: Math.round(Number(receipt.gasUsed) / payers.length), receipt };
}

/** One step of a `debug_traceTransaction` struct log. */
interface Step {
  op: string;
  gas: number;
  gasCost: number;
  depth: number;
  stack?: string[];
}

/**
 * Splits a settleBatch transaction's gas per voucher by operation, from its opcode trace: intrinsic (base and
 * calldata), storage reads and writes of the escrow, each external call (callee's execution included), logs,
 * hashing, and the rest (ABI decoding, arithmetic, memory).
 */
async function breakdown(f: Fixture, receipt: TransactionReceipt, count: number): Promise<Record<string, number>> {
  const tx = await f.chain.provider.getTransaction(receipt.hash);
  const data = getBytes(tx!.data);
  const zeros = data.filter((b) => b === 0).length;
  const calldata = zeros * 4 + (data.length - zeros) * 16;
  const trace = (await f.chain.provider.send("debug_traceTransaction", [
    receipt.hash,
    { disableMemory: true, disableStorage: true, disableStack: false },
  ])) as { structLogs: Step[] };
  const steps = trace.structLogs;
  const named = new Map<string, string>([
    [f.deployment.contracts.agentRegistry.toLowerCase(), "callAgentRegistryPersonaOf"],
    [f.deployment.contracts.personaRegistry.toLowerCase(), "callPersonaRegistryRoyaltyOf"],
    ["0x0000000000000000000000000000000000000001", "ecrecover"],
  ]);
  const totals: Record<string, number> = {};
  const others = new Map<string, number>();
  const add = (k: string, g: number): void => void (totals[k] = (totals[k] ?? 0) + g);
  for (let i = 0; i < steps.length; i++) {
    const s = steps[i]!;
    if (s.depth !== 1) continue;
    if (s.op === "CALL" || s.op === "STATICCALL" || s.op === "DELEGATECALL") {
      // The call's full cost: gas before it minus gas at the next step back at depth 1.
      let j = i + 1;
      while (j < steps.length && steps[j]!.depth !== 1) j++;
      const after = steps[j]?.gas ?? s.gas - s.gasCost;
      const stack = s.stack ?? [];
      const target = "0x" + BigInt(stack[stack.length - 2] ?? "0x0").toString(16).padStart(40, "0");
      add(named.get(target) ?? `call:${target}`, s.gas - after);
      continue;
    }
    if (s.op === "SLOAD") add(s.gasCost >= 2100 ? "sloadCold" : "sloadWarm", s.gasCost);
    else if (s.op === "SSTORE") add(s.gasCost >= 20_000 ? "sstoreNewSlot" : "sstoreUpdate", s.gasCost);
    else if (s.op.startsWith("LOG")) add("logs", s.gasCost);
    else if (s.op === "KECCAK256" || s.op === "SHA3") add("keccak", s.gasCost);
    else if (s.op === "TLOAD" || s.op === "TSTORE") add("reentrancyGuard", s.gasCost);
    else {
      add("other", s.gasCost);
      others.set(s.op, (others.get(s.op) ?? 0) + s.gasCost);
    }
  }
  if (process.argv.includes("--opcodes")) {
    const top = [...others].sort((a, b) => b[1] - a[1]).slice(0, 25);
    log(`"other" by opcode, per voucher: ${top.map(([op, g]) => `${op} ${Math.round(g / count)}`).join(", ")}`);
  }
  const execution = Number(receipt.gasUsed) - 21_000 - calldata;
  const traced = Object.values(totals).reduce((a, b) => a + b, 0);
  // Refunds and rounding of the trace go to "other", so the parts add up to the receipt's gas.
  add("other", execution - traced);
  const per: Record<string, number> = { txBase: 21_000 / count, calldata: calldata / count };
  for (const [k, v] of Object.entries(totals)) per[k] = v / count;
  for (const k of Object.keys(per)) per[k] = Math.round(per[k]!);
  per.calldataBytesPerVoucher = Math.round(data.length / count);
  return per;
}

async function main(): Promise<void> {
  const chain = await createTestChain();
  const f = await deployFixture(chain);
  const [, user, creator, provider] = chain.wallets as [Wallet, Wallet, Wallet, Wallet];

  log("measuring deposits, registrations and mints…");
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
  const royaltyPerMillion = await royaltyOf(f, personaId);

  log("measuring commits…");
  // A new lane from the free deposit (part of it: the deposit's slot stays non-zero).
  const commitGas = await gasOf(f.as(user).inferenceEscrow.commit(provider.address, 20n * USD));
  // More funds into a lane that exists.
  const commitGasExistingLane = await gasOf(f.as(user).inferenceEscrow.commit(provider.address, 5n * USD));
  const provider2 = await freshProvider(f);
  await (await f.as(user).token.approve(f.deployment.contracts.inferenceEscrow, 10n * USD)).wait();
  const depositAndCommitGas = await gasOf(f.as(user).inferenceEscrow.depositAndCommit(provider2.address, 10n * USD));

  log("measuring single settles…");
  const escrow = f.as(provider).inferenceEscrow;
  const channel = { provider: provider.address, agentId, royaltyPerMillion };
  // The first settle ever: new channel, and the provider's and creator's earnings written from zero.
  const first = await f.voucher(user, { ...channel, session: 1n });
  const settleGasFirstEver = await gasOf(escrow.settle(first.voucher, first.signature));
  // Steady state: a new session on a channel used before; earnings already non-zero.
  const fresh = await f.voucher(user, { ...channel, session: 2n });
  const settleGasWarm = await gasOf(escrow.settle(fresh.voucher, fresh.signature));
  // A later voucher of a session already settled once.
  const later = await f.voucher(user, { ...channel, session: 2n, inputTokens: 2_000n, outputTokens: 1_000n });
  const settleGasSameSession = await gasOf(escrow.settle(later.voucher, later.signature));

  // A payer holding tokens (no allowance, no deposit) makes a provider it never used payable: count its
  // transactions by its nonce, then the provider settles its first voucher.
  const newcomer = await freshWallet(f);
  await f.fund(newcomer.address, 10n * USD);
  // Its agent was adopted before, apart from paying any provider.
  const newcomerAgent = await f.mintAgent(newcomer, personaId);
  const nonceBefore = await chain.provider.getTransactionCount(newcomer.address);
  const deadline = BigInt((await chain.now()) + 3600);
  // Signed as the client signs it (sdk/client/lanes.ts): a permit is no transaction.
  const permit = await signPermit(newcomer, f.deployment.contracts.token, f.deployment.contracts.inferenceEscrow, 10n * USD, deadline);
  const depositWithPermitAndCommitGas = await gasOf(
    f.as(newcomer).inferenceEscrow.depositWithPermitAndCommit(provider.address, 10n * USD, deadline, permit.v, permit.r, permit.s),
  );
  const permitTransactions = (await chain.provider.getTransactionCount(newcomer.address)) - nonceBefore;
  const opening = await f.voucher(newcomer, { ...channel, agentId: newcomerAgent });
  const settleGasNewLane = await gasOf(escrow.settle(opening.voucher, opening.signature));
  // The free-deposit path: a payer with a deposit makes a third provider payable.
  const provider3 = await freshProvider(f);
  const userNonce = await chain.provider.getTransactionCount(user.address);
  await (await f.as(user).inferenceEscrow.commit(provider3.address, 5n * USD)).wait();
  const commitTransactions = (await chain.provider.getTransactionCount(user.address)) - userNonce;
  const check = await f.voucher(user, { ...channel, provider: provider3.address });
  await (await f.as(provider3).inferenceEscrow.settle(check.voucher, check.signature)).wait();
  const commitTransactionsPerNewProvider = Math.max(permitTransactions, commitTransactions);

  const samePersona = async (size: number): Promise<{ newChannel: number; steady: number }> => {
    log(`batches of ${size} of one persona (${size} payers, agents and lanes)…`);
    const payers = await payersWithLanes(f, provider.address, Array(size).fill(personaId));
    return { newChannel: (await batchRound(f, provider, payers, 1n)).perVoucher, steady: (await batchRound(f, provider, payers, 2n)).perVoucher };
  };
  const batch10 = await samePersona(10);
  const batch100 = await samePersona(100);

  log("batches of 100 distinct payers, agents, personas and creators…");
  const personas: bigint[] = [];
  for (let i = 0; i < 100; i++) {
    const c = await freshWallet(f);
    // Distinct royalties too, as distinct creators would set them.
    personas.push(await f.createPersona(c, { royaltyPerMillion: 100_000n + BigInt(i) * 1_000n }));
  }
  const distinctA = await payersWithLanes(f, provider.address, personas);
  const firstEver = await batchRound(f, provider, distinctA, 1n);
  const warm = await batchRound(f, provider, distinctA, 2n);
  const distinctB = await payersWithLanes(f, provider.address, personas);
  const cold = await batchRound(f, provider, distinctB, 1n);
  log("tracing a warm distinct batch for the breakdown…");
  const traced = await batchRound(f, provider, distinctA.slice(0, 10), 3n);
  const warmBreakdown = await breakdown(f, traced.receipt, 10);
  const warm10 = traced.perVoucher;

  await chain.close();
  const figures = {
    settleGasWarm,
    settleGasNewLane,
    commitGas,
    commitTransactionsPerNewProvider,
    batch100DistinctGasPerVoucher: warm.perVoucher,
    batch100DistinctColdGasPerVoucher: cold.perVoucher,
    batch100DistinctFirstEverGasPerVoucher: firstEver.perVoucher,
    batch10DistinctGasPerVoucher: warm10,
    batch10GasPerVoucher: batch10.steady,
    batch100GasPerVoucher: batch100.steady,
    batch10GasPerVoucherNewChannel: batch10.newChannel,
    batch100GasPerVoucherNewChannel: batch100.newChannel,
    settleGasSameSession,
    settleGasFirstEver,
    commitGasExistingLane,
    depositAndCommitGas,
    depositWithPermitAndCommitGas,
    depositGas,
    providerRegistrationGas,
    personaMintGas,
    agentMintGas,
    breakdownBatch10DistinctWarmPerVoucher: warmBreakdown,
    goals: { settleGasWarm: 80_000, batch100DistinctGasPerVoucher: 40_000, commitTransactionsPerNewProvider: 1 },
    met: {
      settleGasWarm: settleGasWarm <= 80_000,
      batch100DistinctGasPerVoucher: warm.perVoucher <= 40_000,
      commitTransactionsPerNewProvider: commitTransactionsPerNewProvider <= 1,
    },
  };
  log(
    `settle (warm) ${settleGasWarm} gas (goal ≤ 80,000); batch of 100 distinct: ${warm.perVoucher} gas per voucher ` +
      `(goal ≤ 40,000), ${cold.perVoucher} cold; ${commitTransactionsPerNewProvider} transaction(s) per new provider (goal ≤ 1)`,
  );
  console.log(JSON.stringify(figures));
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
