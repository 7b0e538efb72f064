import { HDNodeWallet, Mnemonic } from "ethers";

/**
 * The mnemonic of the local devnet's accounts: Hardhat's well-known test mnemonic. Its keys are public;
 * never send real funds to them.
 */
export const DEV_MNEMONIC = "test test test test test test test test test test test junk";

/** The local devnet's chain id (Hardhat's). */
export const DEVNET_CHAIN_ID = 31337;

/** How many dev accounts the devnet funds. */
export const DEV_ACCOUNT_COUNT = 10;

/** A devnet account, with the role the local network gives it. */
export interface DevAccount {
  address: string;
  privateKey: string;
  label: string;
}

const LABELS = ["deployer", "user", "creator", "provider", "provider-2", "user-2", "creator-2"];

/**
 * Derives the devnet's accounts from {@link DEV_MNEMONIC} along the standard Ethereum path.
 *
 * @example
 * const [deployer, user] = devAccounts(2) // deployer.address === "0xf39F…2266"
 */
export function devAccounts(count: number = DEV_ACCOUNT_COUNT): DevAccount[] {
  const mnemonic = Mnemonic.fromPhrase(DEV_MNEMONIC);
  return Array.from({ length: count }, (_, i) => {
    const wallet = HDNodeWallet.fromMnemonic(mnemonic, `m/44'/60'/0'/0/${i}`);
    return { address: wallet.address, privateKey: wallet.privateKey, label: LABELS[i] ?? `account-${i}` };
  });
}
