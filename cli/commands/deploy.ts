import { join } from "node:path";
import { Wallet, formatUnits, isAddress, parseUnits } from "ethers";
import type { Command } from "commander";
import { InvalidArgumentError } from "commander";
import { DEFAULT_DEPLOY_PARAMETERS, deploySoulmesh } from "../../sdk/chain/deploy.js";
import type { DeployParameters } from "../../sdk/chain/deploy.js";
import { soulmeshHome, writeDeployment } from "../../sdk/chain/deployment.js";
import { connectRpc } from "../../sdk/chain/rpc.js";
import { SoulmeshError } from "../../sdk/errors.js";
import { createOutput } from "../output.js";
import { InvalidAmountError, money, parseAmountOrZero } from "./escrow.js";
import { globalOptions } from "./options.js";

/** The largest royalty per million tokens a voucher can carry (its `royaltyPerMillion` is a uint96). */
export const MAX_VOUCHER_ROYALTY = (1n << 96n) - 1n;

/** The token's decimals when Soulmesh deploys its own TestStablecoin (tUSD). */
const TEST_STABLECOIN_DECIMALS = 6;

/** A configuration variable the command needs is not set. */
export class MissingConfigError extends SoulmeshError {
  override readonly name = "MissingConfigError";
  constructor(
    readonly variable: string,
    hint: string,
  ) {
    super(`${variable} is not set. ${hint}`);
  }
}

function parseAddress(value: string): string {
  if (!isAddress(value)) throw new InvalidArgumentError("expected a 0x-prefixed 20-byte address.");
  return value;
}

function parseNonNegativeInt(value: string): number {
  if (!/^\d+$/.test(value)) throw new InvalidArgumentError("expected a whole number.");
  return Number(value);
}

/**
 * Parses `--max-royalty`: the highest royalty per million tokens a persona may ask, a decimal amount of the
 * token (0 forbids royalties), exactly: no rounding, at most the token's decimals.
 *
 * @example
 * parseMaxRoyalty("1000", 6) // 1_000_000_000n
 * parseMaxRoyalty("0.5", 6) // 500_000n
 * @throws InvalidAmountError for junk, negatives, more decimals than the token has, or more than a voucher
 * can carry (uint96 base units).
 */
export function parseMaxRoyalty(input: string, decimals: number): bigint {
  const units = parseAmountOrZero(input, decimals);
  if (units > MAX_VOUCHER_ROYALTY) {
    throw new InvalidAmountError(input, `it is above the largest royalty a voucher can carry (${MAX_VOUCHER_ROYALTY} base units)`);
  }
  return units;
}

interface DeployCommandOptions {
  rpc?: string;
  token?: string;
  treasury?: string;
  owner?: string;
  feeBps: number;
  minStake: string;
  maxRoyalty: string;
  voucherLifetime: number;
  withdrawalDelay: number;
  royaltyDelay: number;
  unbondingDelay: number;
  out?: string;
}

/** Registers `soulmesh deploy`. */
export function registerDeploy(program: Command): void {
  const d = DEFAULT_DEPLOY_PARAMETERS;
  program
    .command("deploy")
    .description("Deploy Soulmesh's contracts to any EVM chain (key from SOULMESH_DEPLOYER_KEY, never a file)")
    .option("--token <address>", "an existing ERC-20 to pay with (default: deploy a 6-decimal TestStablecoin)", parseAddress)
    .option("--treasury <address>", "receives protocol fees (default: the deployer)", parseAddress)
    .option("--owner <address>", "owns the escrow's fee and treasury settings (default: the deployer)", parseAddress)
    .option("--fee-bps <bps>", "protocol fee in basis points, at most 1000", parseNonNegativeInt, d.protocolFeeBps)
    .option("--min-stake <amount>", "provider minimum stake, in whole tokens", "100")
    .option(
      "--max-royalty <amount>",
      "the highest royalty per million tokens a persona may ask, in tokens (e.g. 2.5; 0 forbids royalties)",
      formatUnits(d.maxRoyaltyPerMillion, TEST_STABLECOIN_DECIMALS),
    )
    .option("--voucher-lifetime <s>", "longest voucher lifetime, seconds", parseNonNegativeInt, d.maxVoucherLifetime)
    .option("--withdrawal-delay <s>", "deposit withdrawal delay, seconds", parseNonNegativeInt, d.withdrawalDelay)
    .option("--royalty-delay <s>", "royalty and fee change delay, seconds", parseNonNegativeInt, d.royaltyDelay)
    .option("--unbonding-delay <s>", "provider unbonding delay, seconds", parseNonNegativeInt, d.unbondingDelay)
    .option("--out <file>", "where to write the deployment (default: <home>/deployments/<chainId>.json)")
    .addHelpText(
      "after",
      `
The deployer key is read from the SOULMESH_DEPLOYER_KEY environment variable only, so that it never
lands in a file of the repository or in your shell history.

Examples:
  $ export SOULMESH_DEPLOYER_KEY=0x…            # from your secret manager
  $ soulmesh deploy --rpc https://rpc.example.org --token 0xA0b8…eB48 --treasury 0x…
  $ soulmesh deploy --rpc https://rpc.example.org --max-royalty 50   # personas ask at most 50 tokens per 1M tokens
  $ SOULMESH_RPC_URL=http://127.0.0.1:8545 soulmesh deploy --json`,
    )
    .action(async (opts: DeployCommandOptions, cmd: Command) => {
      const g = globalOptions(cmd);
      const out = createOutput({ json: g.json });
      // --rpc is a global option (env SOULMESH_RPC_URL): the program parses it wherever it appears.
      opts.rpc = g.rpc;
      if (!opts.rpc) {
        throw new MissingConfigError("SOULMESH_RPC_URL", "Pass the chain's JSON-RPC URL with --rpc or SOULMESH_RPC_URL.");
      }
      const key = process.env.SOULMESH_DEPLOYER_KEY;
      if (!key) {
        throw new MissingConfigError(
          "SOULMESH_DEPLOYER_KEY",
          "Export the deployer's private key (0x…) in SOULMESH_DEPLOYER_KEY; it needs gas funds on the chain.",
        );
      }
      let wallet: Wallet;
      try {
        wallet = new Wallet(key);
      } catch {
        throw new MissingConfigError("a valid SOULMESH_DEPLOYER_KEY", "It must be a 32-byte hex private key (0x…).");
      }
      // With the default token its decimals are known: a bad amount is refused before the RPC is reached.
      if (!opts.token) parseMaxRoyalty(opts.maxRoyalty, TEST_STABLECOIN_DECIMALS);
      const provider = await connectRpc(opts.rpc);
      try {
        const deployer = wallet.connect(provider);
        const chainId = Number((await provider.getNetwork()).chainId);
        let decimals = TEST_STABLECOIN_DECIMALS;
        if (opts.token) {
          // Stake and royalty cap are amounts of the chosen token, whatever its decimals.
          const { TestStablecoin__factory } = await import("../../sdk/chain/contracts.js");
          decimals = Number(await TestStablecoin__factory.connect(opts.token, provider).decimals());
        }
        const parameters: DeployParameters = {
          maxVoucherLifetime: opts.voucherLifetime,
          withdrawalDelay: opts.withdrawalDelay,
          royaltyDelay: opts.royaltyDelay,
          unbondingDelay: opts.unbondingDelay,
          minStake: parseUnits(opts.minStake, decimals),
          maxRoyaltyPerMillion: parseMaxRoyalty(opts.maxRoyalty, decimals),
          protocolFeeBps: opts.feeBps,
          token: opts.token,
          treasury: opts.treasury,
          owner: opts.owner,
        };
        out.progress(`deploying Soulmesh to chain ${chainId} at ${opts.rpc} from ${deployer.address}…`);
        const deployment = await deploySoulmesh({
          deployer,
          rpcUrl: opts.rpc,
          parameters,
          onProgress: (p) => out.progress(`[${p.step}/${p.steps}] ${p.contract} at ${p.address} (tx ${p.txHash})`),
        });
        const path = opts.out ?? join(g.home ?? soulmeshHome(), "deployments", `${deployment.chainId}.json`);
        await writeDeployment(path, deployment);
        const maxRoyalty = money(parameters.maxRoyaltyPerMillion, { decimals });
        out.result(
          { ...deployment, path, maxRoyaltyPerMillion: maxRoyalty },
          [
            `Soulmesh deployed on chain ${deployment.chainId}:`,
            ...Object.entries(deployment.contracts).map(([n, a]) => `  ${n.padEnd(17)} ${a}`),
            `Personas may ask a royalty of at most ${maxRoyalty.formatted} tokens per million tokens.`,
            `Deployment written to ${path}`,
          ].join("\n"),
        );
      } finally {
        provider.destroy();
      }
    });
}
