import { readFile } from "node:fs/promises";
import type { Command } from "commander";
import { HDNodeWallet, Mnemonic, Wallet, formatEther } from "ethers";
import type { TransactionReceipt } from "ethers";
import type { SoulmeshContracts } from "../../sdk/chain/contracts.js";
import type { Deployment } from "../../sdk/chain/deployment.js";
import { DEVNET_CHAIN_ID } from "../../sdk/chain/dev-accounts.js";
import { withRevertDecoding } from "../../sdk/chain/revert.js";
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
import { AccountNotFoundError, describeAccount, resolveAccount } from "../accounts/resolve.js";
import type { Account } from "../accounts/resolve.js";
import { readNewPassword, readSecretFromStdin } from "../accounts/secrets.js";
import { withContext } from "../context.js";
import type { CommandContext } from "../context.js";
import { TransactionDroppedError, sendTransaction } from "../transactions.js";
import {
  InvalidAmountError,
  accountJson,
  money,
  parseAmountOrZero,
  lanesJson,
  lanesText,
  pendingJson,
  pendingText,
  readFunds,
  showMoney,
  tokenInfo,
} from "./escrow.js";
import type { Money, TokenInfo } from "./escrow.js";

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
      lanes: lanesJson(funds, token),
      committed: money(funds.committed, token),
      pendingWithdrawal: pendingJson(funds, token),
      earnings: money(funds.earnings, token),
      chainTime: funds.chainTime,
    },
    [
      `account   ${describeAccount(account)}`,
      `gas       ${formatEther(funds.native)} ETH`,
      `wallet    ${showMoney(funds.tokens, token)}`,
      `deposit   ${showMoney(funds.deposit, token)} free in escrow`,
      ...lanesText(funds, token),
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

/** `wallet fund` on a deployment that is not the local devnet, whose faucet mints nothing real. */
export class FaucetDevnetOnlyError extends SoulmeshError {
  override readonly name = "FaucetDevnetOnlyError";
  constructor(
    readonly chainId: number,
    reason: string,
    token: Pick<TokenInfo, "address" | "symbol">,
  ) {
    super(
      `The faucet only funds accounts on the local devnet (chain ${DEVNET_CHAIN_ID}, started by \`soulmesh devnet\` or ` +
        `\`npm start\`), and ${reason}. On chain ${chainId}, get its native coin for gas from that chain's faucet or ` +
        `an exchange, and the payment token ${token.symbol} (${token.address}) from its issuer, then send both to ` +
        "your address (`soulmesh wallet show` prints it).",
    );
  }
}

/** `wallet fund` with both amounts zero. */
export class NothingToFundError extends SoulmeshError {
  override readonly name = "NothingToFundError";
  constructor() {
    super("Nothing to send: --tusd and --eth are both zero. Give a positive amount for at least one, e.g. --tusd 100.");
  }
}

/** The devnet's deployer holds less ETH than the faucet was asked to send plus the gas. */
export class FaucetEmptyError extends SoulmeshError {
  override readonly name = "FaucetEmptyError";
  constructor(
    readonly deployer: string,
    readonly available: bigint,
    readonly required: bigint,
  ) {
    super(
      `The devnet's deployer ${deployer} holds ${formatEther(available)} ETH, less than the ${formatEther(required)} ETH ` +
        "this needs (amount and gas). Ask for less with --eth, or restart the devnet (`soulmesh devnet`) for a fresh chain.",
    );
  }
}

/** Options of `wallet fund`, as commander passes them. */
interface FundOptions {
  tusd: string;
  eth: string;
}

/** What `wallet fund` sent and what the account holds afterwards. */
export interface FundResult {
  address: string;
  tusd: Money;
  eth: Money;
  balances: { tusd: Money; eth: Money };
  txHashes: string[];
}

const ETH = { decimals: 18, symbol: "ETH" } as const;

/**
 * The dev accounts of a deployment that is the local devnet's, judged from the file alone (chain id, dev
 * accounts), so that a foreign deployment is refused before its RPC is ever contacted.
 *
 * @example
 * const devs = devnetAccounts(await ctx.deployment()) // [{ label: "deployer", … }, …]
 * @throws FaucetDevnetOnlyError on another chain or without dev accounts.
 */
export function devnetAccounts(deployment: Deployment): NonNullable<Deployment["devAccounts"]> {
  const token = { address: deployment.contracts.token, symbol: deployment.token.symbol };
  if (deployment.chainId !== DEVNET_CHAIN_ID) {
    throw new FaucetDevnetOnlyError(deployment.chainId, `this deployment is for chain ${deployment.chainId}`, token);
  }
  const devs = deployment.devAccounts ?? [];
  if (devs.length === 0) {
    throw new FaucetDevnetOnlyError(deployment.chainId, "this deployment lists no dev accounts (it is not a devnet's)", token);
  }
  return devs;
}

/**
 * The dev account that may mint the deployment's token: only the local devnet, whose TestStablecoin is owned
 * by its deployer (a public test key), can mint freely.
 *
 * @example
 * const deployer = await devnetMinter(deployment, await ctx.contracts(), token) // dev account 0, "deployer"
 * @throws FaucetDevnetOnlyError on another chain, without dev accounts, or when no dev account owns the token.
 */
export async function devnetMinter(
  deployment: Deployment,
  contracts: SoulmeshContracts,
  token: Pick<TokenInfo, "address" | "symbol">,
): Promise<{ address: string; privateKey: string; label: string }> {
  const devs = devnetAccounts(deployment);
  let owner: string;
  try {
    owner = await contracts.token.owner();
  } catch {
    throw new FaucetDevnetOnlyError(deployment.chainId, `its token ${token.address} is not the devnet's TestStablecoin`, token);
  }
  const minter = devs.find((d) => d.address === owner);
  if (minter === undefined) {
    throw new FaucetDevnetOnlyError(deployment.chainId, `its token is owned by ${owner}, not by a dev account`, token);
  }
  return minter;
}

/** The account to fund: ACCOUNT when given (resolved like --account), else the command's account. */
async function fundedAccount(ctx: CommandContext, spec: string | undefined): Promise<Account> {
  if (spec === undefined) return ctx.account();
  try {
    const { account } = await resolveAccount({ home: ctx.home, account: spec, deployment: () => ctx.deployment(), signal: ctx.signal });
    return account;
  } catch (err) {
    if (!(err instanceof AccountNotFoundError)) throw err;
    const known = (await listKeystores(ctx.home)).map((w) => w.name);
    throw new AccountNotFoundError(spec, known, "the ACCOUNT argument");
  }
}

/** A plain ETH transfer, waited for like {@link sendTransaction} does for contract calls. */
async function sendEth(ctx: CommandContext, from: Wallet, to: string, value: bigint): Promise<TransactionReceipt> {
  ctx.signal.throwIfAborted();
  ctx.out.progress(`sending ${formatEther(value)} ETH for gas from the devnet's deployer…`);
  const response = await ctx.abortable(withRevertDecoding(from.sendTransaction({ to, value })));
  const receipt = await ctx.abortable(withRevertDecoding(response.wait()));
  if (receipt === null) throw new TransactionDroppedError(response.hash);
  return receipt;
}

async function runFund(ctx: CommandContext, spec: string | undefined, opts: FundOptions): Promise<void> {
  const eth = parseAmountOrZero(opts.eth, ETH.decimals);
  const deployment = await ctx.deployment();
  // Refuse a foreign deployment before connecting: its RPC may be far away, or on another chain altogether.
  devnetAccounts(deployment);
  const account = await fundedAccount(ctx, spec);
  const read = await ctx.contracts();
  const token = await tokenInfo(read);
  const tusd = parseAmountOrZero(opts.tusd, token.decimals);
  if (tusd === 0n && eth === 0n) throw new NothingToFundError();
  const minter = await devnetMinter(deployment, read, token);

  const deployer = new Wallet(minter.privateKey, await ctx.provider());
  const c = await ctx.contracts(deployer);
  const fees = await deployer.provider!.getFeeData();
  const mintGas = tusd > 0n ? await withRevertDecoding(c.token.mint.estimateGas(account.address, tusd)) : 0n;
  const gasCost = (mintGas + (eth > 0n ? 21_000n : 0n)) * (fees.maxFeePerGas ?? fees.gasPrice ?? 0n);
  const available = await deployer.provider!.getBalance(deployer.address);
  if (available < eth + gasCost) throw new FaucetEmptyError(deployer.address, available, eth + gasCost);

  ctx.out.progress(`funding ${describeAccount(account)} from the devnet's ${minter.label} ${deployer.address}`);
  const txHashes: string[] = [];
  if (tusd > 0n) {
    const r = await sendTransaction(ctx, `minting ${showMoney(tusd, token)}…`, () => c.token.mint(account.address, tusd));
    txHashes.push(r.hash);
  }
  if (eth > 0n) txHashes.push((await sendEth(ctx, deployer, account.address, eth)).hash);

  const [tokens, native] = await Promise.all([c.token.balanceOf(account.address), deployer.provider!.getBalance(account.address)]);
  const result: FundResult = {
    address: account.address,
    tusd: money(tusd, token),
    eth: money(eth, ETH),
    balances: { tusd: money(tokens, token), eth: money(native, ETH) },
    txHashes,
  };
  ctx.out.result(
    { ...accountJson(account), ...result },
    [
      `Funded ${describeAccount(account)} with ${showMoney(tusd, token)} and ${showMoney(eth, ETH)}.`,
      `  it now holds ${showMoney(tokens, token)} and ${formatEther(native)} ETH`,
      `  next: \`soulmesh deposit AMOUNT${spec === undefined ? "" : ` --account ${spec}`}\` to pay for chats`,
    ].join("\n"),
  );
}

/** Registers `soulmesh wallet create|import|show|list|default|fund`. */
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

  wallet
    .command("fund")
    .description("Devnet faucet: mint test tUSD and send ETH for gas to an account (local devnet only)")
    .argument("[account]", "a wallet name, an address, dev:N or a devnet label (default: --account, else the default account)")
    .option("--tusd <amount>", "test tokens to mint, 0 for none", "100")
    .option("--eth <amount>", "ETH for gas to send, 0 for none", "1")
    .addHelpText(
      "after",
      `
Only on the local devnet (chain ${DEVNET_CHAIN_ID}, \`soulmesh devnet\` or \`npm start\`): its deployer (dev account 0,
the owner of the TestStablecoin) mints the tokens and sends the ETH in a plain transfer. No password is needed: the
recipient signs nothing. Elsewhere the command refuses; fund the address from that chain's own sources.

Examples:
  $ soulmesh wallet create --name alice && soulmesh wallet fund
  $ soulmesh wallet fund alice --tusd 250 --eth 0.5
  $ soulmesh wallet fund 0x90F79bf6EB2c4f870365E785982E1f101E93b906 --eth 0 --json`,
    )
    .action((account: string | undefined, opts: FundOptions, cmd: Command) =>
      withContext(cmd, (ctx) => runFund(ctx, account, opts)),
    );
}
