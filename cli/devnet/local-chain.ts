import { fileURLToPath } from "node:url";
import { BrowserProvider } from "ethers";
import type { Eip1193Provider } from "ethers";
import { createHardhatRuntimeEnvironment } from "hardhat/hre";
import config from "../../hardhat.config.js";

const projectRoot = fileURLToPath(new URL("../..", import.meta.url));

/** A Hardhat (EDR) chain running in this process. */
export interface LocalChain {
  /** The chain's EIP-1193 provider: what the JSON-RPC server serves. */
  eip1193: Eip1193Provider;
  /** ethers on top of it, with receipts polled every 20 ms (blocks are mined on each transaction). */
  provider: BrowserProvider;
  chainId: number;
  close(): Promise<void>;
}

/**
 * Starts a fresh EDR chain in this process with the devnet's accounts (see dev-accounts.ts) funded with
 * ether. Each call is a separate chain.
 *
 * @example
 * const chain = await startLocalChain()
 * const block = await chain.provider.getBlockNumber()
 */
export async function startLocalChain(): Promise<LocalChain> {
  const hre = await createHardhatRuntimeEnvironment(config, {}, projectRoot);
  const connection = await hre.network.create();
  const eip1193 = connection.provider as unknown as Eip1193Provider;
  const provider = new BrowserProvider(eip1193, undefined, { cacheTimeout: -1, pollingInterval: 20 });
  const chainId = Number((await provider.getNetwork()).chainId);
  return {
    eip1193,
    provider,
    chainId,
    async close() {
      provider.destroy();
      await connection.close();
    },
  };
}
