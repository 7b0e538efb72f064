import { resolve } from "node:path";
import type { Command } from "commander";
import type { ContractRunner, JsonRpcProvider, Wallet } from "ethers";
import { connectContracts } from "../sdk/chain/contracts.js";
import type { SoulmeshContracts } from "../sdk/chain/contracts.js";
import { devnetDeploymentPath, readDeployment, soulmeshHome } from "../sdk/chain/deployment.js";
import type { Deployment } from "../sdk/chain/deployment.js";
import { DeploymentNotFoundError } from "../sdk/chain/errors.js";
import { connectDeployment } from "../sdk/chain/rpc.js";
import { SoulmeshError } from "../sdk/errors.js";
import { describeAccount, resolveAccount, unlockAccount } from "./accounts/resolve.js";
import { openLocalIpfs } from "./ipfs/local-ipfs.js";
import type { LocalIpfs } from "./ipfs/local-ipfs.js";
import type { Account } from "./accounts/resolve.js";
import type { SecretIo } from "./accounts/secrets.js";
import { globalOptions } from "./commands/options.js";
import { abortable } from "../sdk/time.js";
import { createOutput } from "./output.js";
import type { Output } from "./output.js";

/** Ctrl-C (or SIGTERM) arrived while a command was working. */
export class InterruptedError extends SoulmeshError {
  override readonly name = "InterruptedError";
  constructor() {
    super("Interrupted. A transaction already sent may still be mined: check with `soulmesh balance` before retrying.");
  }
}

/** The deployment file is absent: said the way a CLI user can act on. */
export class NoDeploymentError extends DeploymentNotFoundError {
  constructor(path: string, explicit: boolean) {
    super(path);
    this.message = explicit
      ? `No Soulmesh deployment at ${path} (from --deployment). Check the path, or leave --deployment out to use the local devnet.`
      : `No Soulmesh deployment at ${path}: no devnet is running for this home. Start one with \`soulmesh devnet\` ` +
        "(or `npm start`), or pass --deployment FILE (and --home or SOULMESH_HOME if it lives elsewhere).";
  }
}

/** Everything a command needs, from the global options: created lazily, cached, closed once. */
export interface CommandContext {
  readonly out: Output;
  readonly home: string;
  readonly json: boolean;
  /** Aborted on SIGINT/SIGTERM when the context handles signals (its reason is an InterruptedError). */
  readonly signal: AbortSignal;
  /** The deployment file: --deployment, else the devnet's in home. */
  readonly deploymentPath: string;
  deployment(): Promise<Deployment>;
  /** The chain, at --rpc when given, else at the deployment's rpcUrl; its chain id checked. */
  provider(): Promise<JsonRpcProvider>;
  /** The contracts connected to `runner`, by default the provider (reads). */
  contracts(runner?: ContractRunner): Promise<SoulmeshContracts>;
  /** The account acting (--account, SOULMESH_ACCOUNT or the default), without unlocking it. */
  account(): Promise<Account>;
  /** The account's wallet, unlocked and connected to the provider. */
  signer(): Promise<Wallet>;
  /** The account's address, without unlocking when the keystore declares it. */
  address(): Promise<string>;
  /**
   * The IPFS blocks this home uses: --ipfs-api (SOULMESH_IPFS_API), else the running `soulmesh up`/`devnet`'s
   * service, else the repository in <home>/ipfs opened by this process. Closed by `close()`.
   */
  ipfs(): Promise<LocalIpfs>;
  /** Rejects with the interruption as soon as the signal aborts; otherwise settles like `promise`. */
  abortable<T>(promise: Promise<T>): Promise<T>;
  /** Destroys the provider, closes IPFS and removes the signal handlers. */
  close(): Promise<void>;
}

/** Options of {@link commandContext}. */
export interface CommandContextOptions {
  /**
   * Turn SIGINT/SIGTERM into an abort of `signal` (a second one exits at once). Default true; a command that
   * wants Ctrl-C for itself (chat) passes false.
   */
  handleSignals?: boolean;
  /** Where passwords are read from (tests). */
  io?: SecretIo;
}

/**
 * The context of a command, from its global options (--json, --home, --rpc, --deployment, --account).
 *
 * @example
 * .action(async (opts, cmd: Command) => {
 *   const ctx = commandContext(cmd)
 *   try {
 *     const { inferenceEscrow } = await ctx.contracts(await ctx.signer())
 *   } finally { ctx.close() }
 * })
 */
export function commandContext(cmd: Command, options: CommandContextOptions = {}): CommandContext {
  const g = globalOptions(cmd);
  const home = resolve(g.home ?? soulmeshHome());
  const out = createOutput({ json: g.json });
  const deploymentPath = g.deployment !== undefined ? resolve(g.deployment) : devnetDeploymentPath(home);
  // A command that handles Ctrl-C itself still gets a signal, one that never aborts.
  const stops = (options.handleSignals ?? true) ? stopSignals(() => new InterruptedError()) : undefined;
  const signal = stops?.signal ?? new AbortController().signal;

  let deployment: Promise<Deployment> | undefined;
  let provider: Promise<JsonRpcProvider> | undefined;
  let account: Promise<Account> | undefined;
  let signer: Promise<Wallet> | undefined;
  let ipfs: Promise<LocalIpfs> | undefined;
  let closed = false;

  const ctx: CommandContext = {
    out,
    home,
    json: g.json,
    signal,
    deploymentPath,
    deployment() {
      deployment ??= readDeployment(deploymentPath, { signal }).catch((err: unknown) => {
        deployment = undefined;
        if (err instanceof DeploymentNotFoundError) throw new NoDeploymentError(deploymentPath, g.deployment !== undefined);
        throw err;
      });
      return deployment;
    },
    provider() {
      provider ??= ctx.deployment().then((d) => connectDeployment(d, { rpcUrl: g.rpc, signal }));
      return provider;
    },
    async contracts(runner) {
      return connectContracts(await ctx.deployment(), runner ?? (await ctx.provider()));
    },
    account() {
      account ??= resolveAccount({ home, account: g.account, deployment: () => ctx.deployment(), signal }).then(
        ({ account: a, defaulted }) => {
          if (defaulted === "devnet-user") {
            out.progress(`using the devnet's ${describeAccount(a)}; create your own with \`soulmesh wallet create\``);
          }
          return a;
        },
      );
      return account;
    },
    signer() {
      signer ??= (async () => {
        const wallet = await unlockAccount(await ctx.account(), options.io, signal);
        return wallet.connect(await ctx.provider());
      })();
      return signer;
    },
    async address() {
      return (await ctx.account()).address;
    },
    ipfs() {
      ipfs ??= openLocalIpfs({ home, ...(g.ipfsApi !== undefined && { api: g.ipfsApi }), signal }).catch((err: unknown) => {
        ipfs = undefined;
        throw err;
      });
      return ipfs;
    },
    abortable(promise) {
      // The work itself goes on, which is why the interruption message says to check the outcome.
      return abortable(promise, signal);
    },
    async close() {
      if (closed) return;
      closed = true;
      stops?.release();
      void provider?.then((p) => p.destroy()).catch(() => {});
      await ipfs?.then((i) => i.close()).catch(() => {});
    },
  };
  return ctx;
}

/** The abort that SIGINT/SIGTERM trigger, from {@link stopSignals}. */
export interface StopSignals {
  /** Aborted by the first SIGINT or SIGTERM. */
  readonly signal: AbortSignal;
  /**
   * Stops listening to SIGINT only, so that Ctrl-C goes to whoever else listens (an interactive chat); SIGTERM
   * still aborts. Idempotent.
   */
  releaseSigint(): void;
  /** Stops listening to both signals. Idempotent. */
  release(): void;
}

/**
 * Turns the first SIGINT or SIGTERM into an abort, so that a long-running command stops cleanly; a second one
 * exits at once (code 130), for when stopping cleanly hangs. Call `release()` when the command ends.
 *
 * @param reason the abort's reason, made when the first signal arrives (default: the AbortSignal's own AbortError)
 * @example
 * const stops = stopSignals(() => new InterruptedError())
 * try {
 *   await work({ signal: stops.signal })
 * } finally { stops.release() }
 */
export function stopSignals(reason?: () => unknown): StopSignals {
  const abort = new AbortController();
  let signals = 0;
  const onSignal = (): void => {
    if (++signals === 1) {
      if (reason === undefined) abort.abort();
      else abort.abort(reason());
    } else {
      process.stderr.write("stopping at once (second signal)\n");
      process.exit(130);
    }
  };
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);
  return {
    signal: abort.signal,
    releaseSigint() {
      process.off("SIGINT", onSignal);
    },
    release() {
      process.off("SIGINT", onSignal);
      process.off("SIGTERM", onSignal);
    },
  };
}

/**
 * Runs `fn` with a command's context and closes it afterwards, whatever happens.
 *
 * @example
 * .action((opts, cmd: Command) => withContext(cmd, async (ctx) => ctx.out.result({}, "done")))
 */
export async function withContext<T>(
  cmd: Command,
  fn: (ctx: CommandContext) => Promise<T>,
  options: CommandContextOptions = {},
): Promise<T> {
  const ctx = commandContext(cmd, options);
  try {
    return await fn(ctx);
  } finally {
    await ctx.close();
  }
}
