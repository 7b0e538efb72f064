import { keccak256, toUtf8Bytes, Wallet } from "ethers";
import type { Signer } from "ethers";
import { connectContracts } from "../../sdk/chain/contracts.js";
import type { SoulmeshContracts } from "../../sdk/chain/contracts.js";
import { deploySoulmesh } from "../../sdk/chain/deploy.js";
import type { DeployParameters } from "../../sdk/chain/deploy.js";
import type { Deployment } from "../../sdk/chain/deployment.js";
import { nextSessionNumber, signVoucher } from "../../sdk/chain/voucher.js";
import type { Voucher } from "../../sdk/chain/voucher.js";
import type { TestChain } from "./chain.js";

/** One tUSD in token units (6 decimals). */
export const USD = 1_000_000n;

/** A deployed Soulmesh with handy actions for tests and benchmarks. */
export interface Fixture {
  chain: TestChain;
  deployment: Deployment;
  /** Connected as the deployer (token owner). */
  contracts: SoulmeshContracts;
  as(signer: Signer): SoulmeshContracts;
  /** Mints tokens to `to`. */
  fund(to: string, amount: bigint): Promise<void>;
  /** Funds `user` and deposits `amount` in escrow for it (its free deposit, in no lane). */
  deposit(user: Wallet, amount: bigint): Promise<void>;
  /**
   * Funds `user`, deposits `amount` and commits it to its lane with `provider` (which must be registered),
   * in one transaction: what a payer does before a provider serves it.
   */
  depositAndCommit(user: Wallet, provider: string, amount: bigint): Promise<void>;
  /** Mints a persona as `creator`; returns its id. */
  createPersona(
    creator: Wallet,
    options?: { royaltyPerMillion?: bigint; adoptionPrice?: bigint; adapterSha256?: string; baseModelHash?: string; manifestCid?: string },
  ): Promise<bigint>;
  /** Adopts `personaId` as `user`, paying its adoption price; returns the agent id. */
  mintAgent(user: Wallet, personaId: bigint): Promise<bigint>;
  /** Registers `provider` with the minimum stake. */
  registerProvider(provider: Wallet, prices?: { input: bigint; output: bigint }): Promise<void>;
  /**
   * A voucher from `payer` to `provider`, with defaults (the royalty of 200,000 per million that
   * `createPersona` gives by default and no fee), and the payer's signature.
   */
  voucher(
    payer: Wallet,
    fields: Partial<Voucher> & Pick<Voucher, "provider" | "agentId">,
  ): Promise<{ voucher: Voucher; signature: string }>;
}

export const BASE_MODEL_HASH = keccak256(toUtf8Bytes("tiny-llama.gguf"));

/**
 * Deploys Soulmesh on `chain` with the SDK's own deployment code.
 *
 * @example
 * const f = await deployFixture(await createTestChain())
 */
export async function deployFixture(chain: TestChain, parameters: Partial<DeployParameters> = {}): Promise<Fixture> {
  const deployer = chain.wallets[0]!;
  const deployment = await deploySoulmesh({ deployer, rpcUrl: "http://127.0.0.1:8545", parameters });
  const contracts = connectContracts(deployment, deployer);
  const escrowRef = { chainId: deployment.chainId, address: deployment.contracts.inferenceEscrow };
  const as = (signer: Signer) => connectContracts(deployment, signer);

  const fixture: Fixture = {
    chain,
    deployment,
    contracts,
    as,
    async fund(to, amount) {
      await (await contracts.token.mint(to, amount)).wait();
    },
    async deposit(user, amount) {
      await fixture.fund(user.address, amount);
      const c = as(user);
      await (await c.token.approve(deployment.contracts.inferenceEscrow, amount)).wait();
      await (await c.inferenceEscrow.deposit(amount)).wait();
    },
    async depositAndCommit(user, provider, amount) {
      await fixture.fund(user.address, amount);
      const c = as(user);
      await (await c.token.approve(deployment.contracts.inferenceEscrow, amount)).wait();
      await (await c.inferenceEscrow.depositAndCommit(provider, amount)).wait();
    },
    async createPersona(creator, options = {}) {
      const c = as(creator);
      const id = (await c.personaRegistry.totalPersonas()) + 1n;
      await (
        await c.personaRegistry.createPersona(
          options.manifestCid ?? `bafy-persona-${id}`,
          options.adapterSha256 ?? keccak256(toUtf8Bytes(`adapter-${id}`)),
          options.baseModelHash ?? BASE_MODEL_HASH,
          options.royaltyPerMillion ?? 200_000n,
          options.adoptionPrice ?? 0n,
        )
      ).wait();
      return id;
    },
    async mintAgent(user, personaId) {
      const c = as(user);
      const [, price] = await c.personaRegistry.adoptionTermsOf(personaId);
      if (price > 0n) {
        await fixture.fund(user.address, price);
        await (await c.token.approve(deployment.contracts.agentRegistry, price)).wait();
      }
      const id = (await c.agentRegistry.totalAgents()) + 1n;
      await (await c.agentRegistry.mint(personaId, price)).wait();
      return id;
    },
    async registerProvider(provider, prices = { input: 500_000n, output: 1_500_000n }) {
      const stake = BigInt(deployment.parameters.minStake);
      await fixture.fund(provider.address, stake);
      const c = as(provider);
      await (await c.token.approve(deployment.contracts.providerRegistry, stake)).wait();
      await (
        await c.providerRegistry.register(
          "12D3KooWTestPeer",
          ["/ip4/127.0.0.1/tcp/4001"],
          [BASE_MODEL_HASH],
          prices.input,
          prices.output,
          stake,
        )
      ).wait();
    },
    async voucher(payer, fields) {
      const voucher: Voucher = {
        payer: payer.address,
        session: nextSessionNumber(),
        inputTokens: 1_000n,
        outputTokens: 500n,
        priceInputPerMillion: 500_000n,
        priceOutputPerMillion: 1_500_000n,
        royaltyPerMillion: 200_000n,
        feeBps: 0n,
        expiry: BigInt((await chain.now()) + 3600),
        ...fields,
      };
      return { voucher, signature: await signVoucher(payer, voucher, escrowRef) };
    },
  };
  return fixture;
}
