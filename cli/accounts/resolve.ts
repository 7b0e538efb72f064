import { Wallet, getAddress, isAddress } from "ethers";
import type { Deployment } from "../../sdk/chain/deployment.js";
import { DeploymentNotFoundError } from "../../sdk/chain/errors.js";
import { SoulmeshError } from "../../sdk/errors.js";
import { KeystoreCorruptError, configPath, listKeystores, readConfig, unlockKeystore } from "./keystore.js";
import type { KeystoreEntry } from "./keystore.js";
import { readPassword } from "./secrets.js";
import type { SecretIo } from "./secrets.js";

/** Where an account's key comes from. */
export type Account =
  | { kind: "keystore"; name: string; path: string; address: string }
  | { kind: "dev"; index: number; label: string; address: string; privateKey: string }
  /** An address with no key here: it can be looked at, not used to sign. */
  | { kind: "address"; address: string };

/** Why the account was chosen when --account was not given. */
export type DefaultReason = "config" | "only-wallet" | "devnet-user";

/** No --account, and no default to fall back on. */
export class NoAccountError extends SoulmeshError {
  override readonly name = "NoAccountError";
  constructor(wallets: number) {
    super(
      wallets === 0
        ? "No account: create one with `soulmesh wallet create` or import one with `soulmesh wallet import`."
        : `No account: there are ${wallets} wallets and none is the default. Pick one with --account NAME ` +
            "(or SOULMESH_ACCOUNT), or make one the default with `soulmesh wallet default NAME`.",
    );
  }
}

/** --account (or the config's default) names nothing known. */
export class AccountNotFoundError extends SoulmeshError {
  override readonly name = "AccountNotFoundError";
  constructor(
    readonly account: string,
    known: string[],
    from: string,
  ) {
    super(
      `No account "${account}" (from ${from}). ` +
        (known.length > 0 ? `Known here: ${known.join(", ")}. ` : "") +
        "Use a wallet name (`soulmesh wallet list`), an address, dev:N or a devnet label, " +
        "or create it with `soulmesh wallet create --name NAME`.",
    );
  }
}

/** dev:N or a devnet label, on a deployment that lists no dev accounts (or not that one). */
export class DevAccountUnavailableError extends SoulmeshError {
  override readonly name = "DevAccountUnavailableError";
  constructor(
    readonly account: string,
    available: number,
  ) {
    super(
      available === 0
        ? `"${account}" is a devnet account, but this deployment lists none (it is not a local devnet). ` +
            "Use your own wallet: `soulmesh wallet create` or `soulmesh wallet import`."
        : `"${account}": the devnet has dev accounts dev:0 to dev:${available - 1} ` +
            '(labels "deployer", "user", "creator", "provider", …).',
    );
  }
}

/** Signing was asked of an address that has no key here. */
export class WatchOnlyAccountError extends SoulmeshError {
  override readonly name = "WatchOnlyAccountError";
  constructor(readonly address: string) {
    super(
      `No key for ${address} here: it can be looked at, not used to sign. Import its key with ` +
        "`soulmesh wallet import`, or pass --account with one of your wallets.",
    );
  }
}

/** How to find the account. */
export interface ResolveAccountOptions {
  home: string;
  /** --account or SOULMESH_ACCOUNT. */
  account?: string;
  /** The deployment; it may throw DeploymentNotFoundError, which only matters for dev accounts. */
  deployment: () => Promise<Deployment>;
  signal?: AbortSignal;
}

/**
 * Finds the account a command acts as. `--account` is a wallet name, an address, `dev:N` or a devnet label
 * ("user", "creator", …), tried in that order. Without it: the config's default, else the only wallet,
 * else on a devnet its "user" account.
 *
 * @example
 * const { account, defaulted } = await resolveAccount({ home, account: "dev:1", deployment: () => readDeployment(path) })
 * @throws NoAccountError, AccountNotFoundError, DevAccountUnavailableError; KeystoreCorruptError for a named
 * keystore that is not one.
 */
export async function resolveAccount(
  options: ResolveAccountOptions,
): Promise<{ account: Account; defaulted?: DefaultReason }> {
  const wallets = await listKeystores(options.home, { signal: options.signal });
  if (options.account !== undefined && options.account !== "") {
    return { account: await resolveNamed(options.account, wallets, options, "--account") };
  }
  const config = await readConfig(options.home, { signal: options.signal });
  if (config.defaultAccount !== undefined) {
    const account = await resolveNamed(config.defaultAccount, wallets, options, `defaultAccount in ${configPath(options.home)}`);
    return { account, defaulted: "config" };
  }
  if (wallets.length === 1) return { account: fromKeystore(wallets[0]!), defaulted: "only-wallet" };
  if (wallets.length === 0) {
    const deployment = await optionalDeployment(options);
    const user = deployment?.devAccounts?.findIndex((a) => a.label === "user") ?? -1;
    if (user >= 0) return { account: devAccount(deployment!, user), defaulted: "devnet-user" };
  }
  throw new NoAccountError(wallets.length);
}

async function resolveNamed(
  spec: string,
  wallets: KeystoreEntry[],
  options: ResolveAccountOptions,
  from: string,
): Promise<Account> {
  const byName = wallets.find((w) => w.name === spec);
  if (byName) return fromKeystore(byName);
  if (isAddress(spec)) {
    const address = getAddress(spec);
    const byAddress = wallets.find((w) => w.address === address);
    if (byAddress) return fromKeystore(byAddress);
    const deployment = await optionalDeployment(options);
    const dev = deployment?.devAccounts?.findIndex((a) => a.address === address) ?? -1;
    return dev >= 0 ? devAccount(deployment!, dev) : { kind: "address", address };
  }
  const devIndex = /^dev:(\d+)$/.exec(spec);
  if (devIndex) {
    const deployment = await options.deployment();
    const index = Number(devIndex[1]);
    if (deployment.devAccounts?.[index] === undefined) {
      throw new DevAccountUnavailableError(spec, deployment.devAccounts?.length ?? 0);
    }
    return devAccount(deployment, index);
  }
  const deployment = await optionalDeployment(options);
  const labelled = deployment?.devAccounts?.findIndex((a) => a.label === spec) ?? -1;
  if (labelled >= 0) return devAccount(deployment!, labelled);
  throw new AccountNotFoundError(
    spec,
    wallets.map((w) => w.name),
    from,
  );
}

function fromKeystore(entry: KeystoreEntry): Account {
  // A corrupt keystore is named, never skipped: silently acting as another account would be worse.
  if (entry.address === undefined) throw entry.error ?? new KeystoreCorruptError(entry.path, "unreadable");
  return { kind: "keystore", name: entry.name, path: entry.path, address: entry.address };
}

function devAccount(deployment: Deployment, index: number): Account {
  const a = deployment.devAccounts![index]!;
  return { kind: "dev", index, label: a.label, address: a.address, privateKey: a.privateKey };
}

async function optionalDeployment(options: ResolveAccountOptions): Promise<Deployment | undefined> {
  try {
    return await options.deployment();
  } catch (err) {
    if (err instanceof DeploymentNotFoundError) return undefined;
    throw err;
  }
}

/**
 * The account's wallet, decrypting a keystore with SOULMESH_PASSWORD or a hidden prompt.
 *
 * @example
 * const wallet = (await unlockAccount(account)).connect(provider)
 * @throws WatchOnlyAccountError for a bare address; WrongPasswordError; PasswordRequiredError; KeystoreCorruptError.
 */
export async function unlockAccount(account: Account, io?: SecretIo, signal?: AbortSignal): Promise<Wallet> {
  switch (account.kind) {
    case "dev":
      return new Wallet(account.privateKey);
    case "address":
      throw new WatchOnlyAccountError(account.address);
    case "keystore": {
      const password = await readPassword(`unlock wallet "${account.name}"`, io, signal);
      return unlockKeystore(account.path, password, { signal });
    }
  }
}

/**
 * A short description of an account for progress lines.
 *
 * @example
 * describeAccount({ kind: "dev", index: 1, label: "user", address: "0x7099…", privateKey: "0x…" }) // 'dev account "user" (dev:1) 0x7099…'
 */
export function describeAccount(account: Account): string {
  switch (account.kind) {
    case "keystore":
      return `wallet "${account.name}" ${account.address}`;
    case "dev":
      return `dev account "${account.label}" (dev:${account.index}) ${account.address}`;
    case "address":
      return `address ${account.address} (no key here)`;
  }
}
