import { createRequire } from "node:module";
import { defineConfig } from "hardhat/config";
import hardhatEthers from "@nomicfoundation/hardhat-ethers";
import hardhatTypechain from "@nomicfoundation/hardhat-typechain";
import { DEV_ACCOUNT_COUNT, DEV_MNEMONIC } from "./sdk/chain/dev-accounts.js";

const require = createRequire(import.meta.url);

/**
 * Solidity comes from the `solc` npm package (WASM), so a build never downloads a compiler:
 * machines that only reach the npm registry compile the same bytes as any other.
 */
const SOLC_VERSION = "0.8.30";

export default defineConfig({
  plugins: [hardhatEthers, hardhatTypechain],
  solidity: {
    version: SOLC_VERSION,
    path: require.resolve("solc/soljson.js"),
    settings: {
      optimizer: { enabled: true, runs: 10_000 },
      evmVersion: "prague",
      viaIR: true,
    },
  },
  paths: {
    sources: "./contracts",
    tests: { solidity: "./contracts" },
  },
  test: {
    solidity: {
      // The seed is fixed by Hardhat, so runs are reproducible; raise the budgets locally to hunt harder.
      fuzz: { runs: 256 },
      invariant: { runs: 128, depth: 64, failOnRevert: false },
    },
  },
  typechain: {
    outDir: "types/ethers-contracts",
  },
  networks: {
    // In-process EDR chain for tests and for `soulmesh devnet`.
    default: {
      type: "edr-simulated",
      chainType: "l1",
      chainId: 31337,
      accounts: { mnemonic: DEV_MNEMONIC, count: DEV_ACCOUNT_COUNT },
    },
    localhost: {
      type: "http",
      chainType: "l1",
      url: "http://127.0.0.1:8545",
    },
  },
});
