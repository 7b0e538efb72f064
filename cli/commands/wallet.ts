import { readFile } from "node:fs/promises";
import type { Command } from "commander";
import { HDNodeWallet, Mnemonic, Wallet, formatEther } from "ethers";
import { SoulmeshError } from "../../sdk/errors.js";
import {
  isValidAccountName,
  KeystoreExistsError,
  listKeystores,
  readConfig,
  saveKeystore,
  updateConfig,
  InvalidAccountNameError,
} from "../accounts/keystore.js";
import { AccountNotFoundError, describeAccount } from "../accounts/resolve.js";
import { readNewPassword, readSecretFromStdin } from "../accounts/secrets.js";
import { withContext } from "../context.js";
import type { CommandContext } from "../context.js";
import { accountJson, money, pendingJson, pendingText, readFunds, showMoney, tokenInfo } from "./escrow.js";

/** A key or mnemonic that cannot be imported, or a source of it that cannot be read. */
export class InvalidKeyError extends SoulmeshError {
  override readonly name = "InvalidKeyError";
  constructor(
    readonly source: string,
    problem: string,
  ) {
    super(
      `Cannot import from ${source}: ${problem}. Give a 32-byte hex private key (0x…) or a BIP-39 mnemonic ` +
        "(--mnemonic-env), from a file (--key-file), an environment variable (--key-env) or standard input.",
    );
  }
}

interface ImportOptions {
  name?: string;
  default: boolean;
  keyFile?: string;
  keyEnv?: string;
  mnemonicEnv?: string;
  index: number;
}

/** The first free name of the form wallet-N. */
async function freeName(home: string): Promise<string> {
  const taken = new Set((await listKeystores(home)).map((w) => w.name));
  for (let i = 1; ; i++) if (!taken.has(`wallet-${i}`)) return `wallet-${i}`;
}

async function chooseName(home: string, name: string | undefined): Promise<string> {
  if (name === undefined) return freeName(home);
  if (!isValidAccountName(name)) throw new InvalidAccountNameError(name);
  return name;
}

/** Encrypts and saves the wallet; the first wallet of a home (or --default) becomes the default. */
async function store(
  ctx: CommandContext,
  wallet: Wallet | HDNodeWallet,
  opts: { name?: string; default: boolean },
  verb: string,
): Promise<void> {
  const name = await chooseName(ctx.home, opts.name);
  // Refuse a taken name before asking for a password.
  const existing = (await listKeystores(ctx.home)).find((w) => w.name === name);
  if (existing) throw new KeystoreExistsError(name, existing.path);
  const password = await readNewPassword(`encrypt wallet "${name}"`, undefined, ctx.signal);
  ctx.out.progress(`encrypting wallet "${name}" (scrypt)…`);
  const path = await saveKeystore(ctx.home, name, wallet, password, { signal: ctx.signal });
  const config = await readConfig(ctx.home);
  const makeDefault = opts.default || config.defaultAccount === undefined;
  if (makeDefault) await updateConfig(ctx.home, { defaultAccount: name });
  ctx.out.result(
    { name, address: wallet.address, path, default: makeDefault },
    [
      `${verb} wallet "${name}": ${wallet.address}`,
      `  keystore ${path} (encrypted; back it up with its password)`,
      makeDefault ? "  it is the default account" : `  use it with --account ${name}`,
    ].join("\n"),
  );
}

function walletFromSecret(secret: string, source: string, index: number): Wallet | HDNodeWallet {
  const text = secret.trim();
  if (text === "") throw new InvalidKeyError(source, "it is empty");
  const hex = /^(0x)?[0-9a-fA-F]{64}$/.test(text) ? (text.startsWith("0x") ? text : `0x${text}`) : undefined;
  if (hex !== undefined) {
    try {
      return new Wallet(hex);
    } catch {
      throw new InvalidKeyError(source, "the key is out of range for secp256k1");
    }
  }
  if (/\s/.test(text)) return walletFromMnemonic(text, source, index);
  throw new InvalidKeyError(source, "it is neither a 32-byte hex key nor a mnemonic");
}

function walletFromMnemonic(phrase: string, source: string, index: number): HDNodeWallet {
  const words = phrase.trim().split(/\s+/).join(" ");
  if (!Mnemonic.isValidMnemonic(words)) throw new InvalidKeyError(source, "not a valid BIP-39 mnemonic (word or checksum wrong)");
  return HDNodeWallet.fromMnemonic(Mnemonic.fromPhrase(words), `m/44'/60'/0'/0/${index}`);
}

async function runImport(ctx: CommandContext, opts: ImportOptions): Promise<void> {
  const sources = [opts.keyFile, opts.keyEnv, opts.mnemonicEnv].filter((s) => s !== undefined);
  if (sources.length > 1) throw new InvalidKeyError("several sources", "pass one of --key-file, --key-env, --mnemonic-env");
  let wallet: Wallet | HDNodeWallet;
  if (opts.keyFile !== undefined) {
    let text: string;
    try {
      text = await readFile(opts.keyFile, { encoding: "utf8", signal: ctx.signal });
    } catch (err) {
      throw new InvalidKeyError(opts.keyFile, (err as Error).message);
    }
    wallet = walletFromSecret(text, opts.keyFile, opts.index);
  } else if (opts.keyEnv !== undefined) {
    wallet = walletFromSecret(process.env[opts.keyEnv] ?? "", `$${opts.keyEnv}`, opts.index);
  } else if (opts.mnemonicEnv !== undefined) {
    wallet = walletFromMnemonic(process.env[opts.mnemonicEnv] ?? "", `$${opts.mnemonicEnv}`, opts.index);
  } else {
    wallet = walletFromSecret(await readSecretFromStdin("Private key (0x…) or mnemonic: ", undefined, ctx.signal), "standard input", opts.index);
  }
  const same = (await listKeystores(ctx.home)).find((w) => w.address === wallet.address);
  if (same) ctx.out.progress(`note: wallet "${same.name}" already holds this key`);
  await store(ctx, wallet, opts, "Imported");
}

async function runShow(ctx: CommandContext): Promise<void> {
  const account = await ctx.account();
  const contracts = await ctx.contracts();
  const [token, funds] = await Promise.all([tokenInfo(contracts), readFunds(contracts, account.address)]);
  ctx.out.result(
    {
      ...accountJson(account),
      chainId: (await ctx.deployment()).chainId,
      token,
      native: { units: funds.native.toString(), formatted: formatEther(funds.native), symbol: "ETH" },
      tokens: money(funds.tokens, token),
      deposit: money(funds.deposit, token),
      pendingWithdrawal: pendingJson(funds, token),
      earnings: money(funds.earnings, token),
      chainTime: funds.chainTime,
    },
    [
      `account   ${describeAccount(account)}`,
      `gas       ${formatEther(funds.native)} ETH`,
      `wallet    ${showMoney(funds.tokens, token)}`,
      `deposit   ${showMoney(funds.deposit, token)} in escrow`,
      `pending   ${pendingText(funds, token)}`,
      `earnings  ${showMoney(funds.earnings, token)}`,
    ].join("\n"),
  );
}

async function runList(ctx: CommandContext): Promise<void> {
  const [wallets, config] = await Promise.all([listKeystores(ctx.home), readConfig(ctx.home)]);
  const rows = wallets.map((w) => ({
    name: w.name,
    address: w.address ?? null,
    path: w.path,
    default: w.name === config.defaultAccount,
    ...(w.error && { problem: w.error.message }),
  }));
  ctx.out.result(
    { wallets: rows, defaultAccount: config.defaultAccount ?? null },
    rows.length === 0
      ? "No wallets yet: create one with `soulmesh wallet create` or import one with `soulmesh wallet import`."
      : rows
          .map((r) => `${r.default ? "*" : " "} ${r.name.padEnd(16)} ${r.address ?? `unreadable: ${r.problem ?? ""}`}`)
          .join("\n"),
  );
}

async function runDefault(ctx: CommandContext, name: string): Promise<void> {
  const wallets = await listKeystores(ctx.home);
  const wallet = wallets.find((w) => w.name === name);
  if (!wallet) throw new AccountNotFoundError(name, wallets.map((w) => w.name), "the command line");
  await updateConfig(ctx.home, { defaultAccount: name });
  ctx.out.result({ defaultAccount: name, address: wallet.address ?? null }, `"${name}" is now the default account.`);
}

/** Registers `soulmesh wallet create|import|show|list|default`. */
export function registerWallet(program: Command): void {
  const wallet = program.command("wallet").description("Your accounts: encrypted keystores in <home>/wallets").addHelpText(
    "after",
    `
The account a command acts as: --account (or SOULMESH_ACCOUNT) as a wallet name, an address, dev:N or a
devnet label ("user", "creator", "provider"); else the default wallet (config.json); else the only wallet;
else, on the local devnet, its funded "user" account. Passwords come from SOULMESH_PASSWORD or a prompt.`,
  );

  wallet
    .command("create")
    .description("Create a new random wallet, encrypted with a password")
    .option("--name <name>", "its name (default wallet-N)")
    .option("--default", "make it the default account (the first wallet always is)", false)
    .addHelpText(
      "after",
      `
Examples:
  $ soulmesh wallet create --name savings
  $ SOULMESH_PASSWORD=… soulmesh wallet create --name bot --default --json`,
    )
    .action((opts: { name?: string; default: boolean }, cmd: Command) =>
      withContext(cmd, (ctx) => store(ctx, Wallet.createRandom(), opts, "Created")),
    );

  wallet
    .command("import")
    .description("Import a private key or mnemonic (never from the command line: from a file, a variable or stdin)")
    .option("--name <name>", "its name (default wallet-N)")
    .option("--default", "make it the default account", false)
    .option("--key-file <file>", "a file holding the hex private key")
    .option("--key-env <var>", "an environment variable holding the hex private key")
    .option("--mnemonic-env <var>", "an environment variable holding a BIP-39 mnemonic")
    .option("--index <n>", "with a mnemonic: the account index on m/44'/60'/0'/0/N", (v) => {
      if (!/^\d+$/.test(v)) throw new InvalidKeyError("--index", "expected a whole number");
      return Number(v);
    }, 0)
    .addHelpText(
      "after",
      `
Without --key-file, --key-env or --mnemonic-env the key is read from standard input (hidden on a terminal).

Examples:
  $ soulmesh wallet import --name savings --key-file ./key.txt
  $ soulmesh wallet import --name hw --mnemonic-env MY_MNEMONIC --index 2
  $ pass show eth/key | SOULMESH_PASSWORD=… soulmesh wallet import --name bot --json`,
    )
    .action((opts: ImportOptions, cmd: Command) => withContext(cmd, (ctx) => runImport(ctx, opts)));

  wallet
    .command("show")
    .description("The account's address, gas, tokens, deposit, pending withdrawal and earnings (no password needed)")
    .addHelpText(
      "after",
      `
Examples:
  $ soulmesh wallet show
  $ soulmesh wallet show --account dev:3 --json`,
    )
    .action((_opts: unknown, cmd: Command) => withContext(cmd, runShow));

  wallet
    .command("list")
    .description("The wallets in this home, the default marked *")
    .addHelpText(
      "after",
      `
Examples:
  $ soulmesh wallet list
  $ soulmesh wallet list --home /srv/soulmesh --json`,
    )
    .action((_opts: unknown, cmd: Command) => withContext(cmd, runList));

  wallet
    .command("default")
    .description("Make a wallet the default account")
    .argument("<name>", "the wallet's name")
    .addHelpText(
      "after",
      `
Examples:
  $ soulmesh wallet default savings`,
    )
    .action((name: string, _opts: unknown, cmd: Command) => withContext(cmd, (ctx) => runDefault(ctx, name)));
}
