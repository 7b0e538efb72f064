import { getAddress } from "ethers";
import type { BaseContract, ContractTransactionResponse, Signer } from "ethers";
import {
  AgentRegistry__factory,
  InferenceEscrow__factory,
  PersonaRegistry__factory,
  ProviderRegistry__factory,
  TestStablecoin__factory,
} from "./contracts.js";
import type { Deployment } from "./deployment.js";
import { DeployError } from "./errors.js";

/** The protocol's parameters, fixed at deployment. Times are in seconds. */
export interface DeployParameters {
  /** The furthest a voucher's expiry may be from the time it settles. */
  maxVoucherLifetime: number;
  /** From a deposit withdrawal request to its completion; must exceed `maxVoucherLifetime`. */
  withdrawalDelay: number;
  /** From a royalty or fee change to its taking effect; must exceed `maxVoucherLifetime`. */
  royaltyDelay: number;
  /** From a provider's unbond request to the stake's release. */
  unbondingDelay: number;
  /** The stake a provider needs to be active, in token units. */
  minStake: bigint;
  /** The highest royalty per million tokens a persona may ask, in token units. */
  maxRoyaltyPerMillion: bigint;
  /** The protocol fee in basis points (at most 1,000), scheduled right after deployment. */
  protocolFeeBps: number;
  /** Receives protocol fees; defaults to the deployer. */
  treasury?: string;
  /** Owns the escrow (fee and treasury); defaults to the deployer. */
  owner?: string;
  /** An existing ERC-20 to pay with; when absent a TestStablecoin is deployed. */
  token?: string;
}

/**
 * Defaults: one-day vouchers, two-day delays, a week of unbonding, 100 tokens of 6 decimals stake, royalties
 * of at most 1,000 tokens per million.
 */
export const DEFAULT_DEPLOY_PARAMETERS: DeployParameters = {
  maxVoucherLifetime: 24 * 3600,
  withdrawalDelay: 2 * 24 * 3600,
  royaltyDelay: 2 * 24 * 3600,
  unbondingDelay: 7 * 24 * 3600,
  minStake: 100_000_000n,
  maxRoyaltyPerMillion: 1_000_000_000n,
  protocolFeeBps: 0,
};

/** A deployment step finished. */
export interface DeployProgress {
  step: number;
  steps: number;
  contract: string;
  address: string;
  txHash: string;
}

/** Options of {@link deploySoulmesh}. */
export interface DeployOptions {
  deployer: Signer;
  /** The RPC URL recorded in the deployment for other processes to use. */
  rpcUrl: string;
  parameters?: Partial<DeployParameters>;
  onProgress?: (progress: DeployProgress) => void;
  signal?: AbortSignal;
}

/**
 * Deploys the payment token (unless one is given), the three registries and the escrow, wired together,
 * and returns the deployment record. Works on any EVM chain the deployer has gas on.
 *
 * @example
 * const deployment = await deploySoulmesh({ deployer: wallet, rpcUrl, onProgress: (p) => console.log(p.contract) })
 * @throws DeployError naming the step that failed.
 */
export async function deploySoulmesh(options: DeployOptions): Promise<Deployment> {
  const { deployer, signal } = options;
  const p = { ...DEFAULT_DEPLOY_PARAMETERS, ...options.parameters };
  const provider = deployer.provider;
  if (!provider) throw new DeployError("setup", new Error("the deployer signer has no provider"));
  const deployerAddress = getAddress(await deployer.getAddress());
  const treasury = getAddress(p.treasury ?? deployerAddress);
  const owner = getAddress(p.owner ?? deployerAddress);
  const chainId = Number((await provider.getNetwork()).chainId);
  const startBlock = await provider.getBlockNumber();
  const steps = (p.token ? 4 : 5) + (p.protocolFeeBps > 0 ? 1 : 0);
  let step = 0;

  async function run<T extends BaseContract>(name: string, deploy: () => Promise<T>): Promise<string> {
    signal?.throwIfAborted();
    try {
      const contract = await deploy();
      await contract.waitForDeployment();
      const address = await contract.getAddress();
      options.onProgress?.({
        step: ++step,
        steps,
        contract: name,
        address,
        txHash: contract.deploymentTransaction()?.hash ?? "",
      });
      return address;
    } catch (err) {
      throw err instanceof DeployError ? err : new DeployError(name, err);
    }
  }

  const token = p.token
    ? getAddress(p.token)
    : await run("TestStablecoin", () => new TestStablecoin__factory(deployer).deploy(deployerAddress));
  const personaRegistry = await run("PersonaRegistry", () =>
    new PersonaRegistry__factory(deployer).deploy(p.royaltyDelay, p.maxRoyaltyPerMillion),
  );
  const agentRegistry = await run("AgentRegistry", () =>
    new AgentRegistry__factory(deployer).deploy(personaRegistry, token),
  );
  const providerRegistry = await run("ProviderRegistry", () =>
    new ProviderRegistry__factory(deployer).deploy(token, p.minStake, p.unbondingDelay),
  );
  const inferenceEscrow = await run("InferenceEscrow", () =>
    new InferenceEscrow__factory(deployer).deploy(
      token,
      agentRegistry,
      personaRegistry,
      providerRegistry,
      p.maxVoucherLifetime,
      p.withdrawalDelay,
      treasury,
      // The deployer owns it until the fee is scheduled, then hands it over.
      p.protocolFeeBps > 0 ? deployerAddress : owner,
    ),
  );
  if (p.protocolFeeBps > 0) {
    signal?.throwIfAborted();
    try {
      const escrow = InferenceEscrow__factory.connect(inferenceEscrow, deployer);
      const tx: ContractTransactionResponse = await escrow.scheduleProtocolFee(p.protocolFeeBps);
      await tx.wait();
      if (owner !== deployerAddress) await (await escrow.transferOwnership(owner)).wait();
      options.onProgress?.({ step: ++step, steps, contract: "protocol fee", address: inferenceEscrow, txHash: tx.hash });
    } catch (err) {
      throw new DeployError("protocol fee", err);
    }
  }

  const erc20 = TestStablecoin__factory.connect(token, provider);
  const [name, symbol, decimals] = await Promise.all([erc20.name(), erc20.symbol(), erc20.decimals()]);
  return {
    format: "soulmesh-deployment/2",
    chainId,
    rpcUrl: options.rpcUrl,
    deployedAt: new Date().toISOString(),
    startBlock,
    contracts: { token, providerRegistry, personaRegistry, agentRegistry, inferenceEscrow },
    token: { name, symbol, decimals: Number(decimals) },
    parameters: {
      maxVoucherLifetime: p.maxVoucherLifetime,
      withdrawalDelay: p.withdrawalDelay,
      royaltyDelay: p.royaltyDelay,
      unbondingDelay: p.unbondingDelay,
      minStake: p.minStake.toString(),
      maxRoyaltyPerMillion: p.maxRoyaltyPerMillion.toString(),
      protocolFeeBps: p.protocolFeeBps,
      treasury,
      owner,
    },
  };
}
