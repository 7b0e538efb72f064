import { InvalidArgumentError, Option } from "commander";
import type { Command } from "commander";

/** Options every command takes. */
export interface GlobalOptions {
  json: boolean;
  home?: string;
  /** The chain's JSON-RPC URL, overriding the deployment's. */
  rpc?: string;
  /** The deployment file, instead of the devnet's in home. */
  deployment?: string;
  /** Wallet name, address, dev:N or devnet label. */
  account?: string;
  /** A Kubo-compatible IPFS RPC API, instead of the local IPFS service or repository. */
  ipfsApi?: string;
}

/**
 * Declares the global options on the program. Commander reads them before or after the subcommand, so a
 * subcommand must not declare an option of the same name: it would never see its value.
 *
 * @example
 * addGlobalOptions(new Command().name("soulmesh"))
 */
export function addGlobalOptions(program: Command): Command {
  return program
    .option("--json", "print the result as one JSON object on stdout", false)
    .addOption(new Option("--home <dir>", "Soulmesh's data folder (default ~/.soulmesh)").env("SOULMESH_HOME"))
    .addOption(new Option("--rpc <url>", "the chain's JSON-RPC URL (default the deployment's)").env("SOULMESH_RPC_URL"))
    .addOption(
      new Option("--deployment <file>", "the deployment file (default <home>/devnet.json, the local devnet's)").env(
        "SOULMESH_DEPLOYMENT",
      ),
    )
    .addOption(
      new Option("--account <name|address|dev:N|label>", "the account to act as (default: see `soulmesh wallet --help`)").env(
        "SOULMESH_ACCOUNT",
      ),
    )
    .addOption(
      new Option(
        "--ipfs-api <url>",
        "an IPFS RPC API (a Kubo daemon's, e.g. http://127.0.0.1:5001; default: the running `soulmesh up`/`devnet`'s, else <home>/ipfs)",
      ).env("SOULMESH_IPFS_API"),
    );
}

/** The global options as seen from a (sub)command. */
export function globalOptions(cmd: Command): GlobalOptions {
  const o = cmd.optsWithGlobals<{
    json?: boolean;
    home?: string;
    rpc?: string;
    deployment?: string;
    account?: string;
    ipfsApi?: string;
  }>();
  const set = (v: string | undefined): string | undefined => (v === undefined || v === "" ? undefined : v);
  return {
    json: o.json === true,
    home: set(o.home),
    rpc: set(o.rpc),
    deployment: set(o.deployment),
    account: set(o.account),
    ipfsApi: set(o.ipfsApi),
  };
}

/**
 * Parses a TCP port (0 to 65535) for commander.
 *
 * @example
 * parsePort("8545") // 8545
 */
export function parsePort(value: string): number {
  const port = Number(value);
  if (!/^\d+$/.test(value) || port > 65_535) {
    throw new InvalidArgumentError("expected a port number from 0 to 65535.");
  }
  return port;
}
