import type { ContractRunner } from "ethers";
import {
  AgentRegistry__factory,
  InferenceEscrow__factory,
  PersonaRegistry__factory,
  ProviderRegistry__factory,
  TestStablecoin__factory,
} from "../../types/ethers-contracts/index.js";
import type {
  AgentRegistry,
  InferenceEscrow,
  PersonaRegistry,
  ProviderRegistry,
  TestStablecoin,
} from "../../types/ethers-contracts/index.js";
import type { Deployment } from "./deployment.js";

export type { AgentRegistry, InferenceEscrow, PersonaRegistry, ProviderRegistry, TestStablecoin };
export {
  AgentRegistry__factory,
  InferenceEscrow__factory,
  PersonaRegistry__factory,
  ProviderRegistry__factory,
  TestStablecoin__factory,
};

/**
 * Typed handles on every Soulmesh contract of a deployment. The token is typed as the devnet's
 * TestStablecoin; on other chains only its ERC-20 and EIP-2612 functions exist.
 */
export interface SoulmeshContracts {
  token: TestStablecoin;
  providerRegistry: ProviderRegistry;
  personaRegistry: PersonaRegistry;
  agentRegistry: AgentRegistry;
  inferenceEscrow: InferenceEscrow;
}

/**
 * Connects typed contract handles for `deployment` to a provider (reads) or signer (writes).
 *
 * @example
 * const { inferenceEscrow } = connectContracts(deployment, wallet)
 * await inferenceEscrow.deposit(10_000_000n)
 */
export function connectContracts(deployment: Deployment, runner: ContractRunner): SoulmeshContracts {
  const c = deployment.contracts;
  return {
    token: TestStablecoin__factory.connect(c.token, runner),
    providerRegistry: ProviderRegistry__factory.connect(c.providerRegistry, runner),
    personaRegistry: PersonaRegistry__factory.connect(c.personaRegistry, runner),
    agentRegistry: AgentRegistry__factory.connect(c.agentRegistry, runner),
    inferenceEscrow: InferenceEscrow__factory.connect(c.inferenceEscrow, runner),
  };
}
