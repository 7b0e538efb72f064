/**
 * The escrow commands: `deposit`, `withdraw request|complete|cancel`, `balance` and `earnings`. A payer's money
 * in escrow is its free deposit plus its lanes, one per provider it chatted with (the client commits to a lane
 * at the first use of a provider; only that provider's vouchers draw on it). Withdrawing takes both out: the
 * free deposit by a withdrawal, each lane by a release, each after the escrow's delay.
 */
import type { Command } from "commander";
import { InvalidArgumentError } from "commander";
import { getAddress, isAddress } from "ethers";
import type { ContractTransactionResponse, Log, TransactionReceipt } from "ethers";
import type { InferenceEscrow, SoulmeshContracts } from "../../sdk/chain/contracts.js";
import { ContractRevertError } from "../../sdk/chain/errors.js";
import { findEvent } from "../../sdk/chain/receipt.js";
import { withRevertDecoding } from "../../sdk/chain/revert.js";
import { personaTransferOf, settlementsPaidTo } from "../../sdk/chain/creator-report.js";
import type { PersonaTransfer } from "../../sdk/chain/creator-report.js";
import { readSettlements } from "../../sdk/chain/usage.js";
import type { Settlement } from "../../sdk/chain/usage.js";
import { SoulmeshError } from "../../sdk/errors.js";
import { describeAccount } from "../accounts/resolve.js";
import type { Account } from "../accounts/resolve.js";
import { withContext } from "../context.js";
import type { CommandContext } from "../context.js";
import { plural } from "../output.js";
import { formatUnitsFixed } from "../../sdk/chain/units.js";
import { sendTransaction } from "../transactions.js";

/** An amount that is not a positive decimal number of tokens with at most the token's decimals. */
export class InvalidAmountError extends SoulmeshError {
  override readonly name = "InvalidAmountError";
  constructor(
    readonly input: string,
    reason: string,
  ) {
    super(
      `${input.trim() === "" ? "No amount given" : `"${input}" is not a usable amount`}: ${reason}. ` +
        "Give a positive number of tokens such as 10 or 2.5.",
    );
  }
}

/** The wallet holds fewer tokens than the deposit asks for. */
export class InsufficientTokensError extends SoulmeshError {
  override readonly name = "InsufficientTokensError";
  constructor(
    readonly address: string,
    readonly required: bigint,
    readonly available: bigint,
    token: TokenInfo,
    devnet: boolean,
  ) {
    super(
      `${address} holds ${formatUnitsFixed(available, token.decimals)} ${token.symbol} but the deposit needs ` +
        `${formatUnitsFixed(required, token.decimals)} ${token.symbol}. ` +
        (devnet
          ? "On the devnet each dev account holds 10000 tUSD: use one with --account user, or send tokens to this one from it."
          : `Get ${token.symbol} (token ${token.address}) into this account first, or deposit less.`),
    );
  }
}

/** The account has no native coin to pay gas with. */
export class NoGasError extends SoulmeshError {
  override readonly name = "NoGasError";
  constructor(readonly address: string) {
    super(`${address} has no native coin (ETH) to pay transaction gas with. Send it a little ETH for gas first.`);
  }
}

/** A withdrawal asks for more than the free deposit holds. */
export class InsufficientDepositError extends SoulmeshError {
  override readonly name = "InsufficientDepositError";
  constructor(
    readonly requested: bigint,
    readonly deposit: bigint,
    token: TokenInfo,
    /** What the account's lanes with providers hold (not part of the free deposit). */
    readonly committed: bigint = 0n,
  ) {
    super(
      deposit === 0n && committed === 0n
        ? "Nothing is deposited in escrow for this account, so there is nothing to withdraw. Deposit with `soulmesh deposit AMOUNT`."
        : `The escrow's free deposit holds ${formatUnitsFixed(deposit, token.decimals)} ${token.symbol} for this account` +
            (committed > 0n ? ` (and its lanes with providers ${formatUnitsFixed(committed, token.decimals)} more)` : "") +
            `; you asked to withdraw ${formatUnitsFixed(requested, token.decimals)}. Withdraw at most the free deposit, ` +
            "or use --all to take out everything, lanes included.",
    );
  }
}

/** `withdraw complete` or `withdraw cancel` with nothing pending. */
export class NothingPendingError extends SoulmeshError {
  override readonly name = "NothingPendingError";
  constructor(readonly action: "complete" | "cancel") {
    super(
      `There is no pending withdrawal nor lane release to ${action}: start one with \`soulmesh withdraw request --all\` ` +
        "(see what the escrow holds with `soulmesh balance`).",
    );
  }
}

/** `withdraw complete` before the withdrawal delay (of the withdrawal or of every lane release) has passed. */
export class WithdrawalNotReadyError extends SoulmeshError {
  override readonly name = "WithdrawalNotReadyError";
  constructor(
    readonly availableAt: number,
    readonly secondsLeft: number,
  ) {
    super(
      `The withdrawal can be completed at ${isoTime(availableAt)} (chain time), in ${formatDuration(secondsLeft)}. ` +
        "Run `soulmesh withdraw complete` again then; until then the deposit still pays for vouchers.",
    );
  }
}

/** The payment token, as the chain reports it. */
export interface TokenInfo {
  address: string;
  symbol: string;
  decimals: number;
}

/** An amount in JSON: base units as a decimal string, and formatted with the token's decimals. */
export interface Money {
  units: string;
  formatted: string;
}

/**
 * An amount for JSON output.
 *
 * @example
 * money(2_500_000n, { decimals: 6 }) // { units: "2500000", formatted: "2.5" }
 */
export function money(amount: bigint, token: Pick<TokenInfo, "decimals">): Money {
  return { units: amount.toString(), formatted: formatUnitsFixed(amount, token.decimals) };
}

/**
 * An amount for text output.
 *
 * @example
 * showMoney(2_500_000n, { decimals: 6, symbol: "tUSD" }) // "2.5 tUSD"
 */
export function showMoney(amount: bigint, token: Pick<TokenInfo, "decimals" | "symbol">): string {
  return `${formatUnitsFixed(amount, token.decimals)} ${token.symbol}`;
}

/**
 * Parses a positive decimal amount of tokens into base units, exactly.
 *
 * @example
 * parseTokenAmount("2.5", 6) // 2_500_000n
 * @throws InvalidAmountError for junk, zero, negatives, exponents and more decimals than the token has.
 */
export function parseTokenAmount(input: string, decimals: number): bigint {
  const text = input.trim();
  if (text.startsWith("-")) throw new InvalidAmountError(input, "it is negative");
  const m = /^(\d+)(?:\.(\d*))?$|^\.(\d+)$/.exec(text);
  if (!m) throw new InvalidAmountError(input, "it is not a decimal number");
  const whole = m[1] ?? "0";
  const frac = m[2] ?? m[3] ?? "";
  const significant = frac.replace(/0+$/, "");
  if (significant.length > decimals) {
    throw new InvalidAmountError(input, `the token has ${decimals} decimals, this amount has ${significant.length}`);
  }
  const units = BigInt(whole) * 10n ** BigInt(decimals) + BigInt(significant.padEnd(decimals, "0") || "0");
  if (units === 0n) throw new InvalidAmountError(input, "it is zero");
  return units;
}

/**
 * Parses a token amount where zero is meaningful (a free persona, no royalty, a faucet sending one asset only).
 *
 * @example
 * parseAmountOrZero("0", 6) // 0n
 * parseAmountOrZero("0.2", 6) // 200_000n
 * @throws InvalidAmountError for junk, negatives and more decimals than the token has.
 */
export function parseAmountOrZero(input: string, decimals: number): bigint {
  if (/^\s*(0+(\.0*)?|\.0+)\s*$/.test(input)) return 0n;
  return parseTokenAmount(input, decimals);
}

/**
 * A duration for people.
 *
 * @example
 * formatDuration(90061) // "1d 1h 1m 1s"
 */
export function formatDuration(seconds: number): string {
  let s = Math.max(0, Math.round(seconds));
  const parts: string[] = [];
  for (const [unit, size] of [["d", 86_400], ["h", 3_600], ["m", 60]] as const) {
    if (s >= size) {
      parts.push(`${Math.floor(s / size)}${unit}`);
      s %= size;
    }
  }
  if (s > 0 || parts.length === 0) parts.push(`${s}s`);
  return parts.join(" ");
}

/**
 * A Unix time as ISO 8601.
 *
 * @example
 * isoTime(0) // "1970-01-01T00:00:00.000Z"
 */
export function isoTime(unixSeconds: number): string {
  return new Date(unixSeconds * 1000).toISOString();
}

/**
 * The payment token's address, symbol and decimals, read from the token itself.
 *
 * @example
 * const token = await tokenInfo(await ctx.contracts()) // { symbol: "tUSD", decimals: 6, … }
 */
export async function tokenInfo(contracts: SoulmeshContracts): Promise<TokenInfo> {
  const [symbol, decimals, address] = await Promise.all([
    contracts.token.symbol(),
    contracts.token.decimals(),
    contracts.token.getAddress(),
  ]);
  return { address, symbol, decimals: Number(decimals) };
}

/** A payer's lane with one provider: funds only that provider's vouchers draw on. */
export interface LaneBalance {
  provider: string;
  amount: bigint;
  /** When a requested release can complete (chain time, Unix seconds); 0 when none is pending. */
  releaseAt: number;
}

/** An account's money: in its wallet and in escrow. */
export interface Funds {
  /** Native coin, in wei. */
  native: bigint;
  tokens: bigint;
  /** The free deposit: in no lane. */
  deposit: bigint;
  /** Every non-empty lane, by provider. */
  lanes: LaneBalance[];
  /** What the lanes hold together. */
  committed: bigint;
  /** Zero amount and time when none is pending. */
  pending: { amount: bigint; availableAt: number };
  earnings: bigint;
  /** The latest block's timestamp. */
  chainTime: number;
}

/**
 * The payer's non-empty lanes: every provider the registry lists (active or not: a lane outlives its
 * provider's stake), with what the lane holds and its pending release.
 *
 * @example
 * const lanes = await readLanes(await ctx.contracts(), "0x7099…79C8")
 */
export async function readLanes(contracts: Pick<SoulmeshContracts, "providerRegistry" | "inferenceEscrow">, payer: string): Promise<LaneBalance[]> {
  const registry = contracts.providerRegistry;
  const count = await registry.providerCount();
  const providers: string[] = [];
  for (let offset = 0n; offset < count; offset += 100n) providers.push(...(await registry.providers(offset, 100n)));
  const lanes = await Promise.all(
    providers.map(async (provider): Promise<LaneBalance> => {
      const [amount, releaseAt] = await contracts.inferenceEscrow.laneOf(payer, provider);
      return { provider: getAddress(provider), amount, releaseAt: Number(releaseAt) };
    }),
  );
  return lanes.filter((l) => l.amount > 0n);
}

/**
 * Reads an account's balances, free deposit, lanes, pending withdrawal and earnings.
 *
 * @example
 * const funds = await readFunds(await ctx.contracts(), "0x7099…79C8")
 */
export async function readFunds(contracts: SoulmeshContracts, address: string): Promise<Funds> {
  const provider = contracts.inferenceEscrow.runner!.provider!;
  const escrow = contracts.inferenceEscrow;
  const [native, tokens, deposit, lanes, [amount, availableAt], earnings, block] = await Promise.all([
    provider.getBalance(address),
    contracts.token.balanceOf(address),
    escrow.depositOf(address),
    readLanes(contracts, address),
    escrow.pendingWithdrawalOf(address),
    escrow.earningsOf(address),
    provider.getBlock("latest"),
  ]);
  return {
    native,
    tokens,
    deposit,
    lanes,
    committed: lanes.reduce((sum, l) => sum + l.amount, 0n),
    pending: { amount, availableAt: Number(availableAt) },
    earnings,
    chainTime: block?.timestamp ?? Math.floor(Date.now() / 1000),
  };
}

/** A pending withdrawal in JSON: null when none. */
export function pendingJson(
  funds: Pick<Funds, "pending" | "chainTime">,
  token: TokenInfo,
): { amount: Money; availableAt: string; availableAtUnix: number; inSeconds: number } | null {
  if (funds.pending.availableAt === 0) return null;
  return {
    amount: money(funds.pending.amount, token),
    availableAt: isoTime(funds.pending.availableAt),
    availableAtUnix: funds.pending.availableAt,
    inSeconds: Math.max(0, funds.pending.availableAt - funds.chainTime),
  };
}

/** The lanes in JSON, each with its pending release (null when none). */
export function lanesJson(funds: Pick<Funds, "lanes" | "chainTime">, token: TokenInfo): Record<string, unknown>[] {
  return funds.lanes.map((l) => ({
    provider: l.provider,
    amount: money(l.amount, token),
    release:
      l.releaseAt === 0
        ? null
        : { availableAt: isoTime(l.releaseAt), availableAtUnix: l.releaseAt, inSeconds: Math.max(0, l.releaseAt - funds.chainTime) },
  }));
}

/** One line per lane for text output (none when there is no lane). */
export function lanesText(funds: Pick<Funds, "lanes" | "chainTime">, token: TokenInfo): string[] {
  return funds.lanes.map((l) => {
    const left = l.releaseAt - funds.chainTime;
    const release =
      l.releaseAt === 0
        ? ""
        : `, release ${left > 0 ? `at ${isoTime(l.releaseAt)} (in ${formatDuration(left)})` : "ready (`soulmesh withdraw complete`)"}`;
    return `lane      ${showMoney(l.amount, token)} with provider ${l.provider}${release}`;
  });
}

/** A pending withdrawal for text output. */
export function pendingText(funds: Pick<Funds, "pending" | "chainTime">, token: TokenInfo): string {
  const p = funds.pending;
  if (p.availableAt === 0) return "none";
  const left = p.availableAt - funds.chainTime;
  return (
    `${showMoney(p.amount, token)}, available ${isoTime(p.availableAt)} ` +
    (left > 0 ? `(in ${formatDuration(left)})` : "(now: `soulmesh withdraw complete`)")
  );
}

/**
 * An account in JSON: its address and where its key comes from.
 *
 * @example
 * accountJson(account) // { address: "0x…", source: "keystore", name: "savings" }
 */
export function accountJson(account: Account): Record<string, unknown> {
  switch (account.kind) {
    case "keystore":
      return { address: account.address, source: "keystore", name: account.name, path: account.path };
    case "dev":
      return { address: account.address, source: "dev", index: account.index, label: account.label };
    case "address":
      return { address: account.address, source: "address" };
  }
}

function eventArgs(escrow: InferenceEscrow, logs: readonly Log[], event: string): Record<string, unknown> | undefined {
  return findEvent(escrow, logs, event)?.args.toObject() as Record<string, unknown> | undefined;
}

async function runDeposit(ctx: CommandContext, amountText: string): Promise<void> {
  const read = await ctx.contracts();
  const token = await tokenInfo(read);
  const amount = parseTokenAmount(amountText, token.decimals);
  const signer = await ctx.signer();
  const address = signer.address;
  const c = await ctx.contracts(signer);
  const escrowAddress = await c.inferenceEscrow.getAddress();
  const [balance, allowance, native] = await Promise.all([
    c.token.balanceOf(address),
    c.token.allowance(address, escrowAddress),
    signer.provider!.getBalance(address),
  ]);
  if (balance < amount) {
    throw new InsufficientTokensError(address, amount, balance, token, (await ctx.deployment()).devAccounts !== undefined);
  }
  if (native === 0n) throw new NoGasError(address);
  const txHashes: string[] = [];
  if (allowance < amount) {
    const r = await sendTransaction(ctx, `approving the escrow to take ${showMoney(amount, token)}…`, () =>
      c.token.approve(escrowAddress, amount),
    );
    txHashes.push(r.hash);
  }
  const r = await sendTransaction(ctx, `depositing ${showMoney(amount, token)} from ${address}…`, () => c.inferenceEscrow.deposit(amount));
  txHashes.push(r.hash);
  const deposit = await c.inferenceEscrow.depositOf(address);
  ctx.out.result(
    { account: address, amount: money(amount, token), deposit: money(deposit, token), txHashes },
    `Deposited ${showMoney(amount, token)}; the escrow now holds ${showMoney(deposit, token)} for ${address}.`,
  );
}

async function runWithdrawRequest(ctx: CommandContext, amountText: string | undefined, all: boolean): Promise<void> {
  if ((amountText === undefined) === !all) {
    throw new InvalidAmountError(amountText ?? "", all ? "pass AMOUNT or --all, not both" : "pass AMOUNT, or --all for the whole deposit");
  }
  const token = await tokenInfo(await ctx.contracts());
  const requested = amountText !== undefined ? parseTokenAmount(amountText, token.decimals) : undefined;
  const signer = await ctx.signer();
  const c = await ctx.contracts(signer);
  const [deposit, [pendingAmount, pendingAt], lanes] = await Promise.all([
    c.inferenceEscrow.depositOf(signer.address),
    c.inferenceEscrow.pendingWithdrawalOf(signer.address),
    ctx.abortable(readLanes(c, signer.address)),
  ]);
  const committed = lanes.reduce((sum, l) => sum + l.amount, 0n);
  const amount = requested ?? deposit;
  // An amount comes from the free deposit alone; --all takes the lanes too, which release after the delay.
  if (requested !== undefined && (amount === 0n || amount > deposit)) throw new InsufficientDepositError(amount, deposit, token, committed);
  if (requested === undefined && deposit === 0n && committed === 0n) throw new InsufficientDepositError(0n, 0n, token);
  const txHashes: string[] = [];
  let withdrawal: { amount: bigint; availableAt: number } | undefined;
  if (amount > 0n) {
    if (pendingAt !== 0n) ctx.out.progress(`this replaces the pending withdrawal of ${showMoney(pendingAmount, token)}`);
    const receipt = await sendTransaction(ctx, `requesting to withdraw ${showMoney(amount, token)} of the free deposit…`, () =>
      c.inferenceEscrow.requestWithdrawal(amount),
    );
    txHashes.push(receipt.hash);
    withdrawal = { amount, availableAt: Number(eventArgs(c.inferenceEscrow, receipt.logs, "WithdrawalRequested")?.availableAt ?? 0n) };
  }
  const releases: { provider: string; amount: bigint; releaseAt: number; txHash: string }[] = [];
  if (all) {
    // A lane already being released keeps its date: asking again would restart its delay.
    for (const lane of lanes.filter((l) => l.releaseAt === 0)) {
      const receipt = await sendTransaction(ctx, `asking for the lane of ${showMoney(lane.amount, token)} with provider ${lane.provider} back…`, () =>
        c.inferenceEscrow.requestRelease(lane.provider),
      );
      txHashes.push(receipt.hash);
      const releaseAt = Number(eventArgs(c.inferenceEscrow, receipt.logs, "LaneReleaseRequested")?.releaseAt ?? 0n);
      releases.push({ provider: lane.provider, amount: lane.amount, releaseAt, txHash: receipt.hash });
    }
  }
  const chainTime = (await signer.provider!.getBlock("latest"))?.timestamp ?? Math.floor(Date.now() / 1000);
  const readyAt = Math.max(withdrawal?.availableAt ?? 0, ...releases.map((r) => r.releaseAt));
  const releasing = releases.reduce((sum, r) => sum + r.amount, 0n);
  const parts = [
    ...(withdrawal !== undefined ? [`a withdrawal of ${showMoney(withdrawal.amount, token)} of the free deposit`] : []),
    ...(releases.length > 0 ? [`the release of ${plural(releases.length, "lane")} holding ${showMoney(releasing, token)}`] : []),
  ];
  if (parts.length === 0) parts.push("nothing new (every lane is already being released)");
  ctx.out.result(
    {
      account: signer.address,
      requested: money(amount, token),
      ...(withdrawal !== undefined && pendingJson({ pending: withdrawal, chainTime }, token)),
      releases: releases.map((r) => ({ provider: r.provider, amount: money(r.amount, token), availableAt: isoTime(r.releaseAt), availableAtUnix: r.releaseAt, txHash: r.txHash })),
      ...(withdrawal !== undefined && { txHash: txHashes[0] }),
      txHashes,
    },
    `Requested ${parts.join(" and ")}; complete with \`soulmesh withdraw complete\` at ${isoTime(readyAt)} ` +
      `(chain time, in ${formatDuration(readyAt - chainTime)}). Until then the funds still pay for vouchers` +
      (all && releases.length > 0
        ? "; the released lanes return to the free deposit, which `withdraw complete` then pays out when it is part of the withdrawal."
        : (lanes.length > 0 ? `; the lanes with providers (${showMoney(committed, token)}) stay: \`--all\` releases them too.` : ".")),
  );
}

async function chainNow(ctx: CommandContext): Promise<number> {
  const signer = await ctx.signer();
  return (await signer.provider!.getBlock("latest"))?.timestamp ?? Math.floor(Date.now() / 1000);
}

async function runWithdrawComplete(ctx: CommandContext): Promise<void> {
  const token = await tokenInfo(await ctx.contracts());
  const signer = await ctx.signer();
  const c = await ctx.contracts(signer);
  const [lanes, [pendingAmount, pendingAt], now] = await Promise.all([
    ctx.abortable(readLanes(c, signer.address)),
    c.inferenceEscrow.pendingWithdrawalOf(signer.address),
    chainNow(ctx),
  ]);
  const releasing = lanes.filter((l) => l.releaseAt !== 0);
  if (releasing.length === 0 && pendingAt === 0n) throw new NothingPendingError("complete");
  const ready = releasing.filter((l) => l.releaseAt <= now);
  const waiting = [...releasing.filter((l) => l.releaseAt > now).map((l) => l.releaseAt), ...(pendingAt > BigInt(now) ? [Number(pendingAt)] : [])];
  if (ready.length === 0 && (pendingAt === 0n || pendingAt > BigInt(now))) {
    const next = Math.min(...waiting);
    throw new WithdrawalNotReadyError(next, next - now);
  }
  const txHashes: string[] = [];
  const released: { provider: string; amount: bigint; txHash: string }[] = [];
  // A released lane has waited the withdrawal delay already: its remainder goes straight to the wallet, rather
  // than into the free deposit where it would need a second request and a second delay.
  for (const lane of ready) {
    const receipt = await sendTransaction(ctx, `paying out the lane with provider ${lane.provider}…`, () =>
      c.inferenceEscrow.completeReleaseAndWithdraw(lane.provider),
    );
    txHashes.push(receipt.hash);
    const amount = (eventArgs(c.inferenceEscrow, receipt.logs, "LaneWithdrawn")?.amount as bigint | undefined) ?? 0n;
    released.push({ provider: lane.provider, amount, txHash: receipt.hash });
  }
  let withdrawn = released.reduce((sum, r) => sum + r.amount, 0n);
  if (pendingAt !== 0n && pendingAt <= BigInt(now)) {
    let receipt: TransactionReceipt;
    try {
      receipt = await sendTransaction(ctx, `completing the withdrawal of ${showMoney(pendingAmount, token)}…`, () => c.inferenceEscrow.completeWithdrawal());
    } catch (err) {
      if (err instanceof ContractRevertError && err.reason === "Escrow__WithdrawalNotReady") {
        const availableAt = Number(err.args[0] as bigint);
        throw new WithdrawalNotReadyError(availableAt, availableAt - (await chainNow(ctx)));
      }
      throw err;
    }
    txHashes.push(receipt.hash);
    withdrawn += (eventArgs(c.inferenceEscrow, receipt.logs, "WithdrawalCompleted")?.amount as bigint | undefined) ?? 0n;
  }
  const [deposit, tokens] = await Promise.all([c.inferenceEscrow.depositOf(signer.address), c.token.balanceOf(signer.address)]);
  const releasedTotal = released.reduce((sum, r) => sum + r.amount, 0n);
  const lines = [
    ...(released.length > 0 ? [`Released ${plural(released.length, "lane")}: ${showMoney(releasedTotal, token)} paid out.`] : []),
    withdrawn > 0n || pendingAt !== 0n
      ? `Withdrew ${showMoney(withdrawn, token)} to ${signer.address}; the wallet holds ${showMoney(tokens, token)}, the free deposit ${showMoney(deposit, token)}.`
      : `The free deposit holds ${showMoney(deposit, token)}.`,
    ...(waiting.length > 0 ? [`Still pending until ${isoTime(Math.max(...waiting))}: run \`soulmesh withdraw complete\` again then.`] : []),
    ...(deposit > 0n && waiting.length === 0 ? ["Take what is left in the free deposit out with `soulmesh withdraw request --all`."] : []),
  ];
  ctx.out.result(
    {
      account: signer.address,
      released: released.map((r) => ({ provider: r.provider, amount: money(r.amount, token), txHash: r.txHash })),
      withdrawn: money(withdrawn, token),
      deposit: money(deposit, token),
      tokens: money(tokens, token),
      stillPending: waiting.length,
      ...(txHashes.length > 0 && { txHash: txHashes.at(-1) }),
      txHashes,
    },
    lines.join("\n"),
  );
}

async function runWithdrawCancel(ctx: CommandContext): Promise<void> {
  const token = await tokenInfo(await ctx.contracts());
  const signer = await ctx.signer();
  const c = await ctx.contracts(signer);
  const [[amount, pendingAt], lanes] = await Promise.all([
    c.inferenceEscrow.pendingWithdrawalOf(signer.address),
    ctx.abortable(readLanes(c, signer.address)),
  ]);
  const releasing = lanes.filter((l) => l.releaseAt !== 0);
  if (pendingAt === 0n && releasing.length === 0) throw new NothingPendingError("cancel");
  const txHashes: string[] = [];
  if (pendingAt !== 0n) {
    const receipt = await sendTransaction(ctx, "cancelling the pending withdrawal…", () => c.inferenceEscrow.cancelWithdrawal());
    txHashes.push(receipt.hash);
  }
  for (const lane of releasing) {
    const receipt = await sendTransaction(ctx, `cancelling the release of the lane with provider ${lane.provider}…`, () =>
      c.inferenceEscrow.cancelRelease(lane.provider),
    );
    txHashes.push(receipt.hash);
  }
  const deposit = await c.inferenceEscrow.depositOf(signer.address);
  const kept = releasing.reduce((sum, l) => sum + l.amount, 0n);
  ctx.out.result(
    {
      account: signer.address,
      cancelled: money(pendingAt !== 0n ? amount : 0n, token),
      lanesKept: releasing.map((l) => ({ provider: l.provider, amount: money(l.amount, token) })),
      deposit: money(deposit, token),
      ...(txHashes.length > 0 && { txHash: txHashes[0] }),
      txHashes,
    },
    [
      ...(pendingAt !== 0n ? [`Cancelled the withdrawal of ${showMoney(amount, token)}; the free deposit holds ${showMoney(deposit, token)}.`] : []),
      ...(releasing.length > 0 ? [`Kept ${plural(releasing.length, "lane")} (${showMoney(kept, token)}) with providers: chats use them again.`] : []),
    ].join("\n"),
  );
}

async function runBalance(ctx: CommandContext): Promise<void> {
  const account = await ctx.account();
  const contracts = await ctx.contracts();
  const [token, funds] = await Promise.all([tokenInfo(contracts), readFunds(contracts, account.address)]);
  ctx.out.result(
    {
      ...accountJson(account),
      token,
      tokens: money(funds.tokens, token),
      deposit: money(funds.deposit, token),
      lanes: lanesJson(funds, token),
      committed: money(funds.committed, token),
      pendingWithdrawal: pendingJson(funds, token),
      earnings: money(funds.earnings, token),
    },
    [
      `account   ${describeAccount(account)}`,
      `wallet    ${showMoney(funds.tokens, token)}`,
      `deposit   ${showMoney(funds.deposit, token)} free (committed to a provider at its first chat)`,
      ...lanesText(funds, token),
      `pending   ${pendingText(funds, token)}`,
      `earnings  ${showMoney(funds.earnings, token)}`,
    ].join("\n"),
  );
}

/** What an account earned, from the chain's logs. */
export interface EarningsReport {
  pending: bigint;
  withdrawn: bigint;
  asProvider: { settlements: number; inputTokens: bigint; outputTokens: bigint; amount: bigint; payers: PayerTotal[] };
  asCreator: { settlements: number; inputTokens: bigint; outputTokens: bigint; amount: bigint; personas: PersonaTotal[] };
  /** Earned otherwise (protocol fees, when the account is the treasury): pending + withdrawn − the two above. */
  other: bigint;
  fromBlock: number;
  toBlock: number;
}

/** A provider's settled revenue from one payer. */
export interface PayerTotal {
  payer: string;
  settlements: number;
  amount: bigint;
}

/** A creator's settled royalties from one persona. */
export interface PersonaTotal {
  personaId: bigint;
  settlements: number;
  inputTokens: bigint;
  outputTokens: bigint;
  amount: bigint;
}

async function queryChunked<T>(from: number, to: number, fetchChunk: (a: number, b: number) => Promise<T[]>): Promise<T[]> {
  const out: T[] = [];
  for (let a = from; a <= to; a += 10_000) out.push(...(await fetchChunk(a, Math.min(to, a + 9_999))));
  return out;
}

/**
 * Reads what `address` earned: pending on chain, withdrawn (EarningsWithdrawn logs), and what settled vouchers
 * paid it as provider and as persona holder (the holder at the settlement, from the persona's transfers).
 *
 * @example
 * const report = await readEarnings(contracts, "0x3C44…93BC", deployment.startBlock)
 */
export async function readEarnings(contracts: SoulmeshContracts, address: string, fromBlock: number): Promise<EarningsReport> {
  const escrow = contracts.inferenceEscrow;
  const personas = contracts.personaRegistry;
  const provider = escrow.runner!.provider!;
  const toBlock = await provider.getBlockNumber();
  const range = { fromBlock, toBlock };
  const [pending, withdrawals, asProvider, transfersIn, transfersOut] = await Promise.all([
    escrow.earningsOf(address, { blockTag: toBlock }),
    queryChunked(fromBlock, toBlock, (a, b) => escrow.queryFilter(escrow.filters.EarningsWithdrawn(address), a, b)),
    readSettlements(escrow, range, { provider: address }),
    queryChunked(fromBlock, toBlock, (a, b) => personas.queryFilter(personas.filters.Transfer(undefined, address), a, b)),
    queryChunked(fromBlock, toBlock, (a, b) => personas.queryFilter(personas.filters.Transfer(address), a, b)),
  ]);
  const withdrawn = withdrawals.reduce((sum, log) => sum + log.args.amount, 0n);

  const payers = new Map<string, PayerTotal>();
  for (const s of asProvider) {
    const p = payers.get(s.payer) ?? { payer: s.payer, settlements: 0, amount: 0n };
    p.settlements += 1;
    p.amount += s.providerAmount;
    payers.set(s.payer, p);
  }

  // Royalties go to whoever held the persona when the voucher settled: follow this account's holdings.
  const transfers: PersonaTransfer[] = [...transfersIn, ...transfersOut].map(personaTransferOf);
  const creatorSettlements: Settlement[] = [];
  for (const personaId of new Set(transfersIn.map((l) => l.args.tokenId))) {
    const settled = await readSettlements(escrow, range, { personaId });
    creatorSettlements.push(...settlementsPaidTo(address, transfers, settled).filter((s) => s.royaltyAmount > 0n));
  }
  const byPersona = new Map<bigint, PersonaTotal>();
  for (const s of creatorSettlements) {
    const t = byPersona.get(s.personaId) ?? { personaId: s.personaId, settlements: 0, inputTokens: 0n, outputTokens: 0n, amount: 0n };
    t.settlements += 1;
    t.inputTokens += s.inputTokens;
    t.outputTokens += s.outputTokens;
    t.amount += s.royaltyAmount;
    byPersona.set(s.personaId, t);
  }

  const sum = <T>(xs: readonly T[], f: (x: T) => bigint): bigint => xs.reduce((a, x) => a + f(x), 0n);
  const providerAmount = sum(asProvider, (s) => s.providerAmount);
  const creatorAmount = sum(creatorSettlements, (s) => s.royaltyAmount);
  const other = pending + withdrawn - providerAmount - creatorAmount;
  return {
    pending,
    withdrawn,
    asProvider: {
      settlements: asProvider.length,
      inputTokens: sum(asProvider, (s) => s.inputTokens),
      outputTokens: sum(asProvider, (s) => s.outputTokens),
      amount: providerAmount,
      payers: [...payers.values()].sort((a, b) => (b.amount > a.amount ? 1 : b.amount < a.amount ? -1 : 0)),
    },
    asCreator: {
      settlements: creatorSettlements.length,
      inputTokens: sum(creatorSettlements, (s) => s.inputTokens),
      outputTokens: sum(creatorSettlements, (s) => s.outputTokens),
      amount: creatorAmount,
      personas: [...byPersona.values()].sort((a, b) => (a.personaId < b.personaId ? -1 : 1)),
    },
    other: other > 0n ? other : 0n,
    fromBlock,
    toBlock,
  };
}

function earningsJson(r: EarningsReport, token: TokenInfo): Record<string, unknown> {
  return {
    pending: money(r.pending, token),
    withdrawnSoFar: money(r.withdrawn, token),
    asProvider: {
      ...r.asProvider,
      amount: money(r.asProvider.amount, token),
      payerCount: r.asProvider.payers.length,
      payers: r.asProvider.payers.map((p) => ({ ...p, amount: money(p.amount, token) })),
    },
    asCreator: {
      ...r.asCreator,
      amount: money(r.asCreator.amount, token),
      personas: r.asCreator.personas.map((p) => ({ ...p, amount: money(p.amount, token) })),
    },
    other: money(r.other, token),
    blocks: { from: r.fromBlock, to: r.toBlock },
  };
}

function earningsText(r: EarningsReport, token: TokenInfo): string[] {
  const p = r.asProvider;
  const c = r.asCreator;
  return [
    `pending    ${showMoney(r.pending, token)} (withdraw with \`soulmesh earnings --withdraw\`)`,
    `withdrawn  ${showMoney(r.withdrawn, token)} so far`,
    `provider   ${showMoney(p.amount, token)} from ${plural(p.settlements, "settlement")}, ${plural(p.payers.length, "payer")} ` +
      `(${p.inputTokens} input / ${p.outputTokens} output tokens)`,
    `creator    ${showMoney(c.amount, token)} from ${plural(c.settlements, "settlement")}`,
    ...c.personas.map(
      (x) => `  persona ${x.personaId}: ${showMoney(x.amount, token)}, ${plural(x.settlements, "settlement")}, ` +
        `${x.inputTokens} input / ${x.outputTokens} output tokens`,
    ),
    ...(r.other > 0n ? [`other      ${showMoney(r.other, token)} (protocol fees)`] : []),
  ];
}

function parseAddress(value: string): string {
  if (!isAddress(value)) throw new InvalidArgumentError("expected a 0x-prefixed 20-byte address.");
  return getAddress(value);
}

async function runEarnings(ctx: CommandContext, opts: { withdraw: boolean; to?: string }): Promise<void> {
  const deployment = await ctx.deployment();
  const contracts = await ctx.contracts();
  const token = await tokenInfo(contracts);
  const account = await ctx.account();
  ctx.out.progress(`reading settlements since block ${deployment.startBlock}…`);
  const report = await ctx.abortable(readEarnings(contracts, account.address, deployment.startBlock));
  if (!opts.withdraw) {
    ctx.out.result(
      { ...accountJson(account), token, ...earningsJson(report, token) },
      [`account    ${describeAccount(account)}`, ...earningsText(report, token)].join("\n"),
    );
    return;
  }
  const signer = await ctx.signer();
  const to = opts.to ?? signer.address;
  const c = await ctx.contracts(signer);
  const receipt = await sendTransaction(ctx, `withdrawing ${showMoney(report.pending, token)} of earnings to ${to}…`, () =>
    c.inferenceEscrow.withdrawEarnings(to),
  );
  const amount = (eventArgs(c.inferenceEscrow, receipt.logs, "EarningsWithdrawn")?.amount as bigint | undefined) ?? 0n;
  ctx.out.result(
    { ...accountJson(account), token, ...earningsJson(report, token), withdrawn: money(amount, token), to, txHash: receipt.hash },
    [`account    ${describeAccount(account)}`, ...earningsText(report, token), `Withdrew ${showMoney(amount, token)} to ${to}.`].join(
      "\n",
    ),
  );
}

/** Registers `deposit`, `withdraw request|complete|cancel`, `balance` and `earnings`. */
export function registerEscrow(program: Command): void {
  program
    .command("deposit")
    .description("Deposit tokens in escrow to pay for chats (approves the escrow first when needed)")
    .argument("<amount>", "tokens to deposit, as a decimal number (10, 2.5)")
    .addHelpText(
      "after",
      `
Examples:
  $ soulmesh deposit 10
  $ soulmesh deposit 2.5 --account savings --json
  $ soulmesh deposit 25 --account user          # on the devnet, from its funded "user" account`,
    )
    .action((amount: string, _opts: unknown, cmd: Command) => withContext(cmd, (ctx) => runDeposit(ctx, amount)));

  const withdraw = program
    .command("withdraw")
    .description("Take tokens back out of escrow (the free deposit and, with --all, every lane): request, wait the delay, complete");
  withdraw
    .command("request")
    .description("Ask to withdraw part of the free deposit, or --all: the free deposit and a release of every lane; usable for vouchers until completed")
    .argument("[amount]", "tokens to withdraw from the free deposit, as a decimal number")
    .option("--all", "withdraw everything: the free deposit, and a release of every lane with a provider (paid out with it)", false)
    .addHelpText(
      "after",
      `
Examples:
  $ soulmesh withdraw request 5
  $ soulmesh withdraw request --all --json`,
    )
    .action((amount: string | undefined, opts: { all: boolean }, cmd: Command) =>
      withContext(cmd, (ctx) => runWithdrawRequest(ctx, amount, opts.all)),
    );
  withdraw
    .command("complete")
    .description("Pay out the lane releases and the withdrawal whose delay has passed")
    .addHelpText(
      "after",
      `
Examples:
  $ soulmesh withdraw complete
  $ soulmesh withdraw complete --account savings --json`,
    )
    .action((_opts: unknown, cmd: Command) => withContext(cmd, runWithdrawComplete));
  withdraw
    .command("cancel")
    .description("Cancel the pending withdrawal and every pending lane release")
    .addHelpText(
      "after",
      `
Examples:
  $ soulmesh withdraw cancel`,
    )
    .action((_opts: unknown, cmd: Command) => withContext(cmd, runWithdrawCancel));

  program
    .command("balance")
    .description("Tokens in the wallet, free deposit and lanes with providers in escrow, pending withdrawal and releases, earnings")
    .addHelpText(
      "after",
      `
Examples:
  $ soulmesh balance
  $ soulmesh balance --account 0x70997970C51812dc3A010C7d01b50e0d17dc79C8 --json   # any address, no key needed`,
    )
    .action((_opts: unknown, cmd: Command) => withContext(cmd, runBalance));

  program
    .command("earnings")
    .description("What the account earned as provider and as persona creator; --withdraw sends it to a wallet")
    .option("--withdraw", "withdraw all pending earnings", false)
    .option("--to <address>", "with --withdraw: where to send them (default the account itself)", parseAddress)
    .addHelpText(
      "after",
      `
Examples:
  $ soulmesh earnings
  $ soulmesh earnings --account creator --json
  $ soulmesh earnings --withdraw --to 0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC`,
    )
    .action((opts: { withdraw: boolean; to?: string }, cmd: Command) => withContext(cmd, (ctx) => runEarnings(ctx, opts)));
}

