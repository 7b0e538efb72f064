/**
 * Seeds a devnet with creator usage for the dashboard's browser tests: personas published through the SDK
 * (cards and a LoRA on IPFS), providers, adoptions, deposits, and vouchers settled on two UTC days, all
 * over the devnet's JSON-RPC with the dev accounts' wallets, as real clients would.
 */
import { JsonRpcProvider, Wallet } from "ethers";
import type { TransactionReceipt } from "ethers";
import { connectContracts } from "../../sdk/chain/contracts.js";
import type { SoulmeshContracts } from "../../sdk/chain/contracts.js";
import type { Deployment } from "../../sdk/chain/deployment.js";
import { decodeRevert } from "../../sdk/chain/revert.js";
import { signVoucher } from "../../sdk/chain/voucher.js";
import type { Voucher } from "../../sdk/chain/voucher.js";
import { publishPersona } from "../../sdk/memory/persona/publish.js";
import type { BlockStore } from "../../sdk/vault/types.js";

/** One tUSD in token units (6 decimals). */
export const USD = 1_000_000n;

/** The dev accounts the seed uses, by role (sdk/chain/dev-accounts.ts labels). */
export interface SeedAccounts {
  deployer: Wallet;
  user: Wallet;
  creator: Wallet;
  provider: Wallet;
  provider2: Wallet;
  user2: Wallet;
  creator2: Wallet;
}

/** What {@link seedUsage} created. */
export interface Seeded {
  accounts: SeedAccounts;
  /** The creator's personas: p1 with a LoRA adapter, p2 without; p3 is creator-2's. */
  p1: bigint;
  p2: bigint;
  p3: bigint;
  /** Royalty scheduled on p2 by the seed. */
  scheduledRoyalty: bigint;
  /** The adopted agents: a1 (user, p1), a2 (user, p2), a3 (user-2, p3), a4 (user-2, p1). */
  agents: { a1: bigint; a2: bigint; a3: bigint; a4: bigint };
  /** The last block the seed mined. */
  block: number;
  /** A reading provider over the devnet's RPC. */
  provider: JsonRpcProvider;
  /** Read-only handles over `provider`. */
  contracts: SoulmeshContracts;
  as(wallet: Wallet): SoulmeshContracts;
  /**
   * Settles one voucher of `payer` for `agentId` with provider 0 ("provider") or 1 ("provider-2"), on a session
   * of its own, as that provider would; returns the receipt.
   */
  settle(payer: Wallet, agentId: bigint, providerIndex: number, inputTokens: bigint, outputTokens: bigint): Promise<TransactionReceipt>;
}

/** Options of {@link seedUsage}. */
export interface SeedOptions {
  rpcUrl: string;
  deployment: Deployment;
  store: BlockStore;
  /** A GGUF LoRA adapter file for p1. */
  adapterPath: string;
  baseModelHash: string;
  signal?: AbortSignal;
}

/** A Character Card V2 as JSON bytes. */
export function cardJson(name: string, description: string): Uint8Array {
  return new TextEncoder().encode(
    JSON.stringify({
      spec: "chara_card_v2",
      spec_version: "2.0",
      data: { name, description, personality: "", scenario: "", first_mes: `Hello, I am ${name}.`, mes_example: "" },
    }),
  );
}

/**
 * An ethers provider over a devnet's HTTP JSON-RPC that polls fast (blocks are mined per transaction).
 *
 * @example
 * const provider = rpcProvider(devnet.rpc.url, 31337)
 */
export function rpcProvider(rpcUrl: string, chainId: number): JsonRpcProvider {
  return new JsonRpcProvider(rpcUrl, chainId, { staticNetwork: true, pollingInterval: 20, cacheTimeout: -1 });
}

/**
 * Publishes three personas, registers two providers, commits each payer's funds to a lane with each provider,
 * adopts four agents and settles vouchers (as their providers) on two UTC days
 * (moving the chain's clock a day between them), then schedules a royalty change on p2.
 *
 * @example
 * const seeded = await seedUsage({ rpcUrl: devnet.rpc.url, deployment: devnet.deployment, store, adapterPath, baseModelHash })
 */
export async function seedUsage(options: SeedOptions): Promise<Seeded> {
  const { deployment, store, signal } = options;
  const provider = rpcProvider(options.rpcUrl, deployment.chainId);
  const keys = new Map((deployment.devAccounts ?? []).map((a) => [a.label, a.privateKey]));
  const wallet = (label: string): Wallet => {
    const key = keys.get(label);
    if (key === undefined) throw new Error(`the devnet's deployment has no dev account "${label}"`);
    return new Wallet(key, provider);
  };
  const accounts: SeedAccounts = {
    deployer: wallet("deployer"),
    user: wallet("user"),
    creator: wallet("creator"),
    provider: wallet("provider"),
    provider2: wallet("provider-2"),
    user2: wallet("user-2"),
    creator2: wallet("creator-2"),
  };
  const as = (w: Wallet): SoulmeshContracts => connectContracts(deployment, w);
  const escrowRef = { chainId: deployment.chainId, address: deployment.contracts.inferenceEscrow };
  const base = { store, baseModelHash: options.baseModelHash, signal };

  const p1 = (
    await publishPersona({
      ...base,
      registry: as(accounts.creator).personaRegistry,
      card: cardJson("Ada Lighthouse", "A keeper of lights and logs."),
      adapter: { path: options.adapterPath },
      royaltyPerMillion: 300_000n,
      adoptionPrice: 2n * USD,
    })
  ).personaId;
  const p2 = (
    await publishPersona({
      ...base,
      registry: as(accounts.creator).personaRegistry,
      card: cardJson("Bram Gardener", "Grows moss and opinions."),
      royaltyPerMillion: 120_000n,
      adoptionPrice: 0n,
    })
  ).personaId;
  const p3 = (
    await publishPersona({
      ...base,
      registry: as(accounts.creator2).personaRegistry,
      card: cardJson("Cleo Other", "Someone else's persona."),
      royaltyPerMillion: 50_000n,
      adoptionPrice: USD / 2n,
    })
  ).personaId;

  const stake = BigInt(deployment.parameters.minStake);
  const prices = [
    { input: 500_000n, output: 1_500_000n },
    { input: 700_000n, output: 2_100_001n },
  ];
  for (const [i, p] of [accounts.provider, accounts.provider2].entries()) {
    const c = as(p);
    await (await c.token.approve(deployment.contracts.providerRegistry, stake)).wait();
    await (
      await c.providerRegistry.register("12D3KooWDashboardPeer", ["/ip4/127.0.0.1/tcp/4001"], [options.baseModelHash], prices[i]!.input, prices[i]!.output, stake)
    ).wait();
  }
  // Each payer commits funds to a lane with each provider: vouchers settle only from the lane with their provider.
  for (const u of [accounts.user, accounts.user2]) {
    const c = as(u);
    await (await c.token.approve(deployment.contracts.inferenceEscrow, 50n * USD)).wait();
    for (const p of [accounts.provider, accounts.provider2]) await (await c.inferenceEscrow.depositAndCommit(p.address, 25n * USD)).wait();
  }

  const adopt = async (user: Wallet, personaId: bigint): Promise<bigint> => {
    const c = as(user);
    const [, price] = await c.personaRegistry.adoptionTermsOf(personaId);
    if (price > 0n) await (await c.token.approve(deployment.contracts.agentRegistry, price)).wait();
    const id = (await c.agentRegistry.totalAgents()) + 1n;
    await (await c.agentRegistry.mint(personaId, price)).wait();
    return id;
  };
  const a1 = await adopt(accounts.user, p1);
  const a2 = await adopt(accounts.user, p2);
  const a3 = await adopt(accounts.user2, p3);
  const a4 = await adopt(accounts.user2, p1);

  /**
   * Settles `batch` as `settler` and checks that every voucher settled: settleBatch skips a failing entry
   * (SettlementSkipped) instead of reverting, and a seed that silently skipped would make every figure wrong.
   */
  const settleAll = async (settler: Wallet, batch: { voucher: Voucher; signature: string }[]): Promise<TransactionReceipt> => {
    const escrow = as(settler).inferenceEscrow;
    const receipt = await (await escrow.settleBatch(batch)).wait();
    if (!receipt || receipt.status !== 1) throw new Error("the settlement batch failed");
    for (const log of receipt.logs) {
      const parsed = escrow.interface.parseLog(log);
      if (parsed?.name === "SettlementSkipped") {
        const reason = decodeRevert({ data: parsed.args.reason as string });
        throw new Error(`the seed's voucher of agent ${parsed.args.agentId} was skipped: ${reason?.reason ?? parsed.args.reason}`);
      }
    }
    return receipt;
  };

  let session = 1n;
  const reader = connectContracts(deployment, provider);
  const voucher = async (payer: Wallet, agentId: bigint, providerIndex: number, input: bigint, output: bigint) => {
    const now = (await provider.getBlock("latest"))!.timestamp;
    // A client signs the royalty and fee in force when its session opens.
    const [, royaltyPerMillion] = await reader.personaRegistry.royaltyOf(await reader.agentRegistry.personaOf(agentId));
    const [feeBps] = await reader.inferenceEscrow.protocolFee();
    const v: Voucher = {
      payer: payer.address,
      provider: [accounts.provider, accounts.provider2][providerIndex]!.address,
      agentId,
      session: session++,
      inputTokens: input,
      outputTokens: output,
      priceInputPerMillion: prices[providerIndex]!.input,
      priceOutputPerMillion: prices[providerIndex]!.output,
      royaltyPerMillion,
      feeBps,
      expiry: BigInt(now + 3600),
    };
    return { voucher: v, signature: await signVoucher(payer, v, escrowRef) };
  };
  for (let day = 0; day < 2; day++) {
    for (const [i, p] of [accounts.provider, accounts.provider2].entries()) {
      const n = BigInt(day * 10 + i + 1) * 100n;
      const batch = [
        await voucher(accounts.user, a1, i, 1_000n * n, 333n * n),
        await voucher(accounts.user, a2, i, 2_000n * n + 7n, 111n * n),
        await voucher(accounts.user2, a3, i, 900n * n, 400n * n),
        ...(i === 0 ? [await voucher(accounts.user2, a4, i, 5_000n * n + 1n, 2_000n)] : []),
      ];
      // One transaction per provider and day, sent by that provider: fewer blocks, same events as single settles.
      await settleAll(p, batch);
    }
    await provider.send("evm_increaseTime", [86_400]);
    await provider.send("evm_mine", []);
  }
  const settle = async (payer: Wallet, agentId: bigint, providerIndex: number, input: bigint, output: bigint): Promise<TransactionReceipt> => {
    const signed = await voucher(payer, agentId, providerIndex, input, output);
    const provider = [accounts.provider, accounts.provider2][providerIndex]!;
    return settleAll(provider, [signed]);
  };
  const scheduledRoyalty = 80_000n;
  await (await as(accounts.creator).personaRegistry.scheduleRoyalty(p2, scheduledRoyalty)).wait();
  signal?.throwIfAborted();
  return {
    accounts,
    p1,
    p2,
    p3,
    scheduledRoyalty,
    agents: { a1, a2, a3, a4 },
    block: await provider.getBlockNumber(),
    provider,
    contracts: connectContracts(deployment, provider),
    as,
    settle,
  };
}

