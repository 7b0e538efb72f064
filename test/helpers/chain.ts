import { Wallet } from "ethers";
import type { BrowserProvider } from "ethers";
import { startLocalChain } from "../../cli/devnet/local-chain.js";
import { devAccounts } from "../../sdk/chain/dev-accounts.js";
import type { DevAccount } from "../../sdk/chain/dev-accounts.js";

/** A fresh in-process EDR chain, with ethers on top and the dev accounts as wallets. */
export interface TestChain {
  provider: BrowserProvider;
  chainId: number;
  accounts: DevAccount[];
  wallets: Wallet[];
  /** Moves the chain's clock forward and mines a block. */
  increaseTime(seconds: number): Promise<void>;
  /** The timestamp of the latest block. */
  now(): Promise<number>;
  close(): Promise<void>;
}

/**
 * Starts a real Hardhat (EDR) chain in this process. Each call is a separate chain.
 *
 * @example
 * const chain = await createTestChain()
 * const [deployer, user] = chain.wallets
 */
export async function createTestChain(): Promise<TestChain> {
  const chain = await startLocalChain();
  const { provider } = chain;
  const accounts = devAccounts();
  return {
    provider,
    chainId: chain.chainId,
    accounts,
    wallets: accounts.map((a) => new Wallet(a.privateKey, provider)),
    async increaseTime(seconds) {
      await provider.send("evm_increaseTime", [seconds]);
      await provider.send("evm_mine", []);
    },
    async now() {
      const block = await provider.getBlock("latest");
      return block!.timestamp;
    },
    close: () => chain.close(),
  };
}
