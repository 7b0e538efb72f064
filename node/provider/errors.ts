import { SoulmeshError } from "../../sdk/errors.js";
import { formatUnitsFixed } from "../../sdk/chain/units.js";

/**
 * The provider's wallet holds fewer stake tokens than registration (or a stake top-up) needs.
 *
 * @example
 * catch (err) { if (err instanceof InsufficientStakeTokensError) console.error(err.message) }
 */
export class InsufficientStakeTokensError extends SoulmeshError {
  override readonly name = "InsufficientStakeTokensError";
  constructor(
    readonly address: string,
    readonly needed: bigint,
    readonly balance: bigint,
  ) {
    super(
      `The provider wallet ${address} holds ${balance} stake token units but needs ${needed} to stake. ` +
        `Send it tokens, or on the devnet start with a funded dev account (\`--dev-account 3\`, the "provider" ` +
        `account) or mint test tokens to it from the deployer (TestStablecoin.mint).`,
    );
  }
}

/** The stake asked for is below the registry's minimum. */
export class StakeBelowMinimumError extends SoulmeshError {
  override readonly name = "StakeBelowMinimumError";
  constructor(
    readonly stake: bigint,
    readonly minStake: bigint,
    /** The stake token's decimals, to word the amounts as `--stake` takes them. */
    readonly decimals: number,
  ) {
    const tokens = (units: bigint): string => formatUnitsFixed(units, decimals);
    super(
      `A stake of ${tokens(stake)} tokens is below the registry's minimum of ${tokens(minStake)}. ` +
        `Pass --stake ${tokens(minStake)} or more.`,
    );
  }
}

/** What the provider would announce does not fit the registry's limits (no address, no model, too many). */
export class InvalidProviderRecordError extends SoulmeshError {
  override readonly name = "InvalidProviderRecordError";
  constructor(reason: string) {
    super(`The provider record cannot be registered: ${reason}.`);
  }
}

/** The provider daemon's configuration is incomplete or inconsistent. */
export class ProviderConfigError extends SoulmeshError {
  override readonly name = "ProviderConfigError";
}

/** Another provider process already runs on the same data folder. */
export class ProviderAlreadyRunningError extends SoulmeshError {
  override readonly name = "ProviderAlreadyRunningError";
  constructor(
    readonly dataDir: string,
    readonly pid: number,
  ) {
    super(
      `A provider (pid ${pid}) already runs on ${dataDir}. Stop it first (kill -TERM ${pid}), ` +
        `or start this one with another --data-dir.`,
    );
  }
}

/** The metrics port is taken or cannot be bound. */
export class MetricsPortError extends SoulmeshError {
  override readonly name = "MetricsPortError";
  constructor(
    readonly port: number,
    cause: unknown,
  ) {
    super(`Cannot serve metrics on 127.0.0.1:${port} (${(cause as Error)?.message ?? cause}). Pick another with --metrics-port (0 = any free port).`, {
      cause,
    });
  }
}
