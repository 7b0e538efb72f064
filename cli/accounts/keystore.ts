import { chmod, mkdir, open, readdir, readFile, rename, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { Wallet, getAddress, isAddress } from "ethers";
import type { HDNodeWallet } from "ethers";
import { SoulmeshError } from "../../sdk/errors.js";

/** A wallet name that cannot be a file name, or that would be read as an address or a dev account. */
export class InvalidAccountNameError extends SoulmeshError {
  override readonly name = "InvalidAccountNameError";
  constructor(readonly accountName: string) {
    super(
      `"${accountName}" is not a usable wallet name: use 1 to 64 letters, digits, "-", "_" or ".", starting with a ` +
        `letter or digit (not an address, not dev:N). Pass another one with --name.`,
    );
  }
}

/** A wallet of that name already exists; keystores are never overwritten. */
export class KeystoreExistsError extends SoulmeshError {
  override readonly name = "KeystoreExistsError";
  constructor(
    readonly accountName: string,
    readonly path: string,
  ) {
    super(`A wallet named "${accountName}" already exists (${path}); it is never overwritten. Pick another name with --name.`);
  }
}

/** A keystore file that cannot be read as an encrypted wallet. It is left as it is. */
export class KeystoreCorruptError extends SoulmeshError {
  override readonly name = "KeystoreCorruptError";
  constructor(
    readonly path: string,
    problem: string,
    cause?: unknown,
  ) {
    super(
      `The keystore ${path} is not a valid encrypted wallet (${problem}). It was left untouched: restore it from a ` +
        `backup, or re-import the key under another name with \`soulmesh wallet import --name NAME\`.`,
      { cause },
    );
  }
}

/** The password does not decrypt the keystore. */
export class WrongPasswordError extends SoulmeshError {
  override readonly name = "WrongPasswordError";
  constructor(readonly path: string) {
    super(`Wrong password for the keystore ${path}. Check SOULMESH_PASSWORD (or what you typed) and try again.`);
  }
}

/** `<home>/config.json` is not what Soulmesh writes. */
export class InvalidConfigError extends SoulmeshError {
  override readonly name = "InvalidConfigError";
  constructor(
    readonly path: string,
    problem: string,
  ) {
    super(`${path} is not a valid Soulmesh config (${problem}). Fix or delete it; \`soulmesh wallet create --default\` writes a new one.`);
  }
}

/** A keystore found in `<home>/wallets`. */
export interface KeystoreEntry {
  name: string;
  path: string;
  /** Read from the file without decrypting it; undefined when the file is corrupt. */
  address?: string;
  /** Why the file cannot be used, when it cannot. */
  error?: KeystoreCorruptError;
}

/** What `<home>/config.json` holds. */
export interface SoulmeshConfig {
  defaultAccount?: string;
}

const NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;

/**
 * Whether `name` can name a wallet: a plain file name that reads neither as an address nor as `dev:N`.
 *
 * @example
 * isValidAccountName("savings") // true
 * isValidAccountName("0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266") // false
 */
export function isValidAccountName(name: string): boolean {
  return NAME.test(name) && !isAddress(name) && !/^0x[0-9a-fA-F]*$/.test(name);
}

/**
 * The folder holding the keystores.
 *
 * @example
 * walletsDir("/home/ada/.soulmesh") // "/home/ada/.soulmesh/wallets"
 */
export function walletsDir(home: string): string {
  return join(home, "wallets");
}

/**
 * The keystore file of wallet `name`.
 *
 * @example
 * keystorePath("/tmp/sm", "savings") // "/tmp/sm/wallets/savings.json"
 */
export function keystorePath(home: string, name: string): string {
  if (!isValidAccountName(name)) throw new InvalidAccountNameError(name);
  return join(walletsDir(home), `${name}.json`);
}

/**
 * The address a keystore declares, read without decrypting it.
 *
 * @example
 * keystoreAddress(await readFile(path, "utf8"), path) // "0xf39F…2266"
 * @throws KeystoreCorruptError when the text is not a version 3 keystore with an address.
 */
export function keystoreAddress(text: string, path: string): string {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    throw new KeystoreCorruptError(path, "not JSON", err);
  }
  const o = json as { address?: unknown; version?: unknown; crypto?: unknown; Crypto?: unknown };
  if (typeof o !== "object" || o === null || o.version !== 3 || typeof (o.crypto ?? o.Crypto) !== "object") {
    throw new KeystoreCorruptError(path, "not a version 3 keystore");
  }
  const raw = typeof o.address === "string" ? (o.address.startsWith("0x") ? o.address : `0x${o.address}`) : "";
  if (!isAddress(raw)) throw new KeystoreCorruptError(path, "no valid address field");
  return getAddress(raw);
}

/**
 * Lists the keystores in `<home>/wallets`, sorted by name; corrupt ones are listed with their problem.
 *
 * @example
 * await listKeystores(home) // [{ name: "savings", path: "…/wallets/savings.json", address: "0x…" }]
 */
export async function listKeystores(home: string, options: { signal?: AbortSignal } = {}): Promise<KeystoreEntry[]> {
  let files: string[];
  try {
    files = await readdir(walletsDir(home));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return [];
    throw err;
  }
  const names = files
    .filter((f) => f.endsWith(".json"))
    .map((f) => f.slice(0, -".json".length))
    .filter(isValidAccountName)
    .sort();
  return Promise.all(
    names.map(async (name): Promise<KeystoreEntry> => {
      const path = keystorePath(home, name);
      try {
        return { name, path, address: keystoreAddress(await readFile(path, { encoding: "utf8", signal: options.signal }), path) };
      } catch (err) {
        if (err instanceof KeystoreCorruptError) return { name, path, error: err };
        throw err;
      }
    }),
  );
}

/**
 * Encrypts `wallet` with `password` (scrypt, ethers' keystore v3) into `<home>/wallets/<name>.json`: folder
 * 0700, file 0600, created exclusively so that an existing wallet is never overwritten.
 *
 * @example
 * const path = await saveKeystore(home, "savings", Wallet.createRandom(), password)
 * @throws KeystoreExistsError when the name is taken; InvalidAccountNameError for a bad name.
 */
export async function saveKeystore(
  home: string,
  name: string,
  wallet: Wallet | HDNodeWallet,
  password: string,
  options: { signal?: AbortSignal } = {},
): Promise<string> {
  const path = keystorePath(home, name);
  await mkdir(walletsDir(home), { recursive: true, mode: 0o700 });
  await chmod(walletsDir(home), 0o700);
  // Claim the name before the slow encryption, so that two creations cannot both win it.
  let handle;
  try {
    handle = await open(path, "wx", 0o600);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "EEXIST") throw new KeystoreExistsError(name, path);
    throw err;
  }
  try {
    options.signal?.throwIfAborted();
    const json = await wallet.encrypt(password);
    await handle.writeFile(`${json}\n`, "utf8");
    await handle.close();
    return path;
  } catch (err) {
    await handle.close().catch(() => {});
    // The file is ours and unfinished: remove it so the name stays free.
    await rm(path, { force: true });
    throw err;
  }
}

/**
 * Decrypts the keystore at `path`.
 *
 * @example
 * const wallet = await unlockKeystore(keystorePath(home, "savings"), password)
 * @throws WrongPasswordError; KeystoreCorruptError when the file is not a keystore.
 */
export async function unlockKeystore(path: string, password: string, options: { signal?: AbortSignal } = {}): Promise<Wallet> {
  const text = await readFile(path, { encoding: "utf8", signal: options.signal });
  const address = keystoreAddress(text, path);
  let wallet: Wallet | HDNodeWallet;
  try {
    wallet = await Wallet.fromEncryptedJson(text, password);
  } catch (err) {
    if (err instanceof Error && /incorrect password/.test(err.message)) throw new WrongPasswordError(path);
    throw new KeystoreCorruptError(path, err instanceof Error ? err.message : String(err), err);
  }
  if (wallet.address !== address) throw new KeystoreCorruptError(path, `it decrypts to ${wallet.address}, not ${address}`);
  // A plain Wallet: an HD wallet's mnemonic has no use past this point.
  return new Wallet(wallet.privateKey);
}

/**
 * The path of `<home>/config.json`.
 *
 * @example
 * configPath("/tmp/sm") // "/tmp/sm/config.json"
 */
export function configPath(home: string): string {
  return join(home, "config.json");
}

/**
 * Reads `<home>/config.json`; an absent file is an empty config.
 *
 * @example
 * (await readConfig(home)).defaultAccount // "savings"
 * @throws InvalidConfigError when the file is not a config.
 */
export async function readConfig(home: string, options: { signal?: AbortSignal } = {}): Promise<SoulmeshConfig> {
  const path = configPath(home);
  let text: string;
  try {
    text = await readFile(path, { encoding: "utf8", signal: options.signal });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return {};
    throw err;
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    throw new InvalidConfigError(path, "not JSON");
  }
  if (typeof json !== "object" || json === null || Array.isArray(json)) throw new InvalidConfigError(path, "not an object");
  const d = (json as { defaultAccount?: unknown }).defaultAccount;
  if (d !== undefined && typeof d !== "string") throw new InvalidConfigError(path, "defaultAccount is not a string");
  return json as SoulmeshConfig;
}

/**
 * Merges `changes` into `<home>/config.json`, atomically, keeping keys it does not know.
 *
 * @example
 * await updateConfig(home, { defaultAccount: "savings" })
 */
export async function updateConfig(home: string, changes: Partial<SoulmeshConfig>): Promise<void> {
  const current = await readConfig(home);
  const path = configPath(home);
  await mkdir(home, { recursive: true, mode: 0o700 });
  const tmp = `${path}.${process.pid}.tmp`;
  await writeFile(tmp, `${JSON.stringify({ ...current, ...changes }, null, 2)}\n`, { mode: 0o600 });
  await rename(tmp, path);
}
