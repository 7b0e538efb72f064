/**
 * The settlement worker: turns the voucher book's latest vouchers into `settleBatch` transactions, sent by
 * the provider (only a voucher's provider, or a settler it authorised, may settle it).
 *
 * Why it cannot pay twice nor lose a voucher, across crashes:
 * - the escrow pays a session only the difference between a voucher's totals and the session's settled
 *   totals, so even a resubmitted voucher never pays twice;
 * - before every pass it reconciles the book with the chain's `settledOf` for each channel: totals mined but
 *   not yet recorded (a crash between the mined transaction and `markSettled`) are recorded, not resent;
 * - a channel's sessions go in increasing order, all in one batch or the later ones held back with the
 *   earlier, so the chain moving past a session means that session settled in the same transaction;
 * - each voucher is previewed (`previewSettle`) and budgeted against its payer's lane with this provider
 *   (`laneOf`), which only this provider's settlements draw on;
 * - `settleBatch` does not revert when an entry cannot settle: it skips it with a `SettlementSkipped` log. A
 *   batch entry is recorded as settled only when the receipt holds its `VoucherSettled` log (whose amounts are
 *   what the book records as earned); a skipped one is dropped when its reason is permanent, else tried again.
 */
import { getAddress } from "ethers";
import type { InferenceEscrow } from "../../sdk/chain/contracts.js";
import { decodeRevert } from "../../sdk/chain/revert.js";
import { SettlementFailedError, SettlerNotAuthorisedError, UnknownSessionError } from "./errors.js";
import type { BookEntry, VoucherBook } from "./voucher-book.js";
import { TypedEventTarget } from "../../sdk/events.js";
import { sleep } from "../../sdk/time.js";

// ---------------------------------------------------------------------------------------------------------
// Types

/** When and how much to settle. */
export interface SettlementPolicy {
  /** Settle everything outstanding this often (0: no timer). Must be well under the vouchers' lifetime. */
  intervalMs: number;
  /** Settle as soon as the provider's unsettled share reaches this (token units; 0n: no amount trigger). */
  amountThreshold: bigint;
  /** The most vouchers in one `settleBatch` transaction. */
  maxBatch: number;
}

/** Options of {@link SettlementWorker}. */
export interface SettlementWorkerOptions {
  book: VoucherBook;
  /** The escrow, connected to the provider's signer (it pays the gas). */
  escrow: InferenceEscrow;
  policy: SettlementPolicy;
  /** Unix seconds on the chain; defaults to the latest block's timestamp. */
  now?: () => number | Promise<number>;
  /** A voucher expiring within this many seconds is not sent (it could expire before mining); default 30. */
  expiryMarginSeconds?: number;
  /** Retries of a pass that failed for a reason other than a revert (RPC down, timeout); default 3 attempts. */
  retry?: { attempts: number; baseDelayMs: number };
}

/** Why a pass ran. */
export type SettlementTrigger = "manual" | "timer" | "close" | "amount";

export interface SettlementSentDetail {
  txHash: string;
  keys: string[];
  trigger: SettlementTrigger;
}
export interface SettlementConfirmedDetail {
  txHash: string;
  /** The sessions the transaction settled: each has a VoucherSettled log in the receipt. */
  keys: string[];
  /** Batch entries the escrow skipped (a SettlementSkipped log), by session key, with the escrow's error name. */
  skipped: { key: string; reason: string }[];
  blockNumber: number;
  /** Taken from lanes, as the receipt's VoucherSettled logs say: provider, royalty and fee shares. */
  paid: bigint;
  /** This provider's share of `paid`, as the logs say: what it actually earned. */
  providerAmount: bigint;
}
export interface SettlementFailedDetail {
  keys: string[];
  error: unknown;
  attempt: number;
  willRetry: boolean;
}
export interface SettlementDroppedDetail {
  key: string;
  /** The escrow's revert name, or "expiring" / "lane". */
  reason: string;
  /** Permanent drops leave the book's `latest()`; others are tried again on the next pass. */
  permanent: boolean;
}
export interface SettlementReconciledDetail {
  key: string;
  inputTokens: bigint;
  outputTokens: bigint;
  /** The chain moved past this session: it settled with a later one, or can no longer settle. */
  superseded: boolean;
}

export interface SettlementWorkerEvents {
  "settlement:sent": CustomEvent<SettlementSentDetail>;
  "settlement:confirmed": CustomEvent<SettlementConfirmedDetail>;
  "settlement:failed": CustomEvent<SettlementFailedDetail>;
  "settlement:dropped": CustomEvent<SettlementDroppedDetail>;
  "settlement:reconciled": CustomEvent<SettlementReconciledDetail>;
}

/** What one `settleNow` did. */
export interface SettlementReport {
  txHashes: string[];
  settled: string[];
  reconciled: string[];
  dropped: string[];
  skipped: string[];
}

// Reverts after which the voucher can never settle. Not here, on purpose: InsufficientLane (the payer may
// commit more), ExpiryTooFar (time passes), RoyaltyBelowRate / FeeBelowRate (a rate may come down again
// before the voucher expires; it is dropped as expired otherwise), AlreadySettled (reconciled from settledOf
// on the next pass) and NotProviderOrSettler: that is this node's own misconfiguration (its settlement key is
// neither the provider nor an authorised settler), not the voucher's fault; dropping would throw away every
// voucher it holds, so the pass fails loudly instead and the vouchers wait for the key to be fixed.
const PERMANENT = new Set([
  "Escrow__VoucherExpired",
  "Escrow__SessionSuperseded",
  "Escrow__CumulativeBelowSettled",
  "Escrow__EmptyVoucher",
  "Escrow__InvalidSignature",
  "Escrow__VoucherTooLarge",
]);

// ---------------------------------------------------------------------------------------------------------
// The worker

/**
 * Settles the book's vouchers: at session close, on a timer and when the unsettled amount passes a
 * threshold; soonest expiry first, a channel's sessions in order, only each session's latest voucher.
 *
 * @example
 * const worker = new SettlementWorker({
 *   book,
 *   escrow: connectContracts(deployment, providerWallet).inferenceEscrow,
 *   policy: { intervalMs: 60_000, amountThreshold: 5_000_000n, maxBatch: 50 },
 * })
 * worker.addEventListener("settlement:confirmed", (e) => log(e.detail.txHash, e.detail.paid))
 * worker.start()
 * // … when a chat session ends:
 * await worker.closeSession(sessionKeyOf(voucher))
 * await worker.stop()
 */
export class SettlementWorker extends TypedEventTarget<SettlementWorkerEvents> {
  readonly book: VoucherBook;
  readonly escrow: InferenceEscrow;
  readonly policy: SettlementPolicy;
  readonly #now: () => number | Promise<number>;
  readonly #margin: bigint;
  readonly #retry: { attempts: number; baseDelayMs: number };
  #timer: ReturnType<typeof setInterval> | undefined;
  #stopping = new AbortController();
  #running: Promise<SettlementReport> | undefined;
  #queued: Promise<SettlementReport> | undefined;
  #started = false;
  readonly #onAccepted = () => void this.#checkAmount();

  constructor(options: SettlementWorkerOptions) {
    super();
    if (!Number.isSafeInteger(options.policy.maxBatch) || options.policy.maxBatch < 1) {
      throw new RangeError(`maxBatch must be a positive integer, not ${options.policy.maxBatch}`);
    }
    this.book = options.book;
    this.escrow = options.escrow;
    this.policy = options.policy;
    this.#now = options.now ?? (() => this.#chainTime());
    this.#margin = BigInt(options.expiryMarginSeconds ?? 30);
    this.#retry = options.retry ?? { attempts: 3, baseDelayMs: 500 };
  }

  /** Starts the timer and the amount trigger. The book must be started. */
  start(): void {
    if (this.#started) return;
    this.#started = true;
    this.#stopping = new AbortController();
    if (this.policy.intervalMs > 0) {
      this.#timer = setInterval(() => void this.#trigger("timer"), this.policy.intervalMs);
      this.#timer.unref?.();
    }
    if (this.policy.amountThreshold > 0n) this.book.addEventListener("voucher:accepted", this.#onAccepted);
  }

  /** Stops the triggers, aborts retries and waits for a transaction in flight to be recorded. */
  async stop(): Promise<void> {
    if (!this.#started) return;
    this.#started = false;
    clearInterval(this.#timer);
    this.#timer = undefined;
    this.book.removeEventListener("voucher:accepted", this.#onAccepted);
    this.#stopping.abort();
    await Promise.allSettled([this.#running, this.#queued]);
  }

  /**
   * Settles the session's outstanding voucher now, with everything else outstanding (one transaction is
   * cheaper than two).
   * @throws UnknownSessionError when the book has no voucher for `key`.
   *
   * @example
   * await worker.closeSession(entry.key)
   */
  async closeSession(key: string, options: { signal?: AbortSignal } = {}): Promise<SettlementReport> {
    if (!(await this.book.get(key, options))) throw new UnknownSessionError(key);
    return this.settleNow({ ...options, trigger: "close" });
  }

  /**
   * Runs a settlement pass now; a call while one runs is served by the next pass (calls coalesce).
   *
   * @example
   * const { settled } = await worker.settleNow()
   * @throws SettlementFailedError when every retry failed; the vouchers stay in the book.
   */
  settleNow(options: { signal?: AbortSignal; trigger?: SettlementTrigger } = {}): Promise<SettlementReport> {
    if (this.#queued) return this.#queued;
    const signal = options.signal ? AbortSignal.any([options.signal, this.#stopping.signal]) : this.#stopping.signal;
    const previous = this.#running ?? Promise.resolve();
    const next: Promise<SettlementReport> = previous
      .catch(() => undefined)
      .then(() => {
        this.#queued = undefined;
        this.#running = next;
        return this.#withRetries(options.trigger ?? "manual", signal);
      })
      .finally(() => {
        if (this.#running === next) this.#running = undefined;
      });
    this.#queued = next;
    return next;
  }

  #trigger(trigger: SettlementTrigger): void {
    // Failures were reported as settlement:failed; the next trigger tries again.
    this.settleNow({ trigger }).catch(() => {});
  }

  async #checkAmount(): Promise<void> {
    try {
      const owed = (await this.book.outstanding()).reduce((sum, c) => sum + c.providerAmount, 0n);
      if (owed >= this.policy.amountThreshold) this.#trigger("amount");
    } catch {
      // The book closed under us: nothing to settle from it.
    }
  }

  async #withRetries(trigger: SettlementTrigger, signal: AbortSignal): Promise<SettlementReport> {
    const report: SettlementReport = {
      txHashes: [],
      settled: [],
      reconciled: [],
      dropped: [],
      skipped: [],
    };
    for (let attempt = 1; ; attempt++) {
      signal.throwIfAborted();
      try {
        // Every attempt starts from the chain's state: a transaction of a failed attempt may have mined.
        report.skipped = [];
        await this.#pass(trigger, signal, report);
        return report;
      } catch (error) {
        const revert = decodeRevert(error);
        const willRetry =
          !revert && !(error instanceof SettlerNotAuthorisedError) && !signal.aborted && attempt < this.#retry.attempts;
        this.#emit("settlement:failed", {
          keys: report.skipped,
          error: revert ?? error,
          attempt,
          willRetry,
        });
        if (!willRetry) {
          if (error instanceof SettlerNotAuthorisedError) throw error;
          throw new SettlementFailedError(report.skipped, attempt, revert ?? error);
        }
        await sleep(this.#retry.baseDelayMs * 2 ** (attempt - 1), signal);
      }
    }
  }

  async #pass(trigger: SettlementTrigger, signal: AbortSignal, report: SettlementReport): Promise<void> {
    const entries = await this.book.latest({ signal });
    if (entries.length === 0) return;
    const now = BigInt(await this.#now());

    const queues = new Map<string, BookEntry[]>();
    for (const e of entries) {
      const q = queues.get(e.channel) ?? [];
      q.push(e); // latest() lists a channel's sessions in increasing order
      queues.set(e.channel, q);
    }

    for (const [channel, queue] of queues) {
      const head = queue[0]!.voucher;
      const [chainSession, chainInput, chainOutput, chainPaid] = await this.escrow.settledOf(
        head.payer,
        head.provider,
        head.agentId
      );
      const pending: BookEntry[] = [];
      for (const e of queue) {
        const v = e.voucher;
        if (v.session < chainSession) {
          await this.#reconcile(e, v.inputTokens, v.outputTokens, true, signal, report);
          continue;
        }
        if (v.session === chainSession) {
          if (chainInput > e.settled.inputTokens || chainOutput > e.settled.outputTokens) {
            e.settled = await this.#reconcile(e, chainInput, chainOutput, false, signal, report, chainPaid);
          }
          if (e.settled.inputTokens >= v.inputTokens && e.settled.outputTokens >= v.outputTokens) continue;
        }
        if (e.expiry < now + this.#margin) {
          await this.#drop(e, now > e.expiry ? "Escrow__VoucherExpired" : "expiring", true, signal, report);
          continue;
        }
        pending.push(e);
      }
      if (pending.length > 0) queues.set(channel, pending);
      else queues.delete(channel);
    }

    const ordered = expiryOrder(queues);
    const blocked = new Set<string>(); // channels with a session held back: their later sessions wait too
    const lanes = new Map<string, bigint>(); // what each payer's lane has left after this pass's batches
    for (let i = 0; i < ordered.length; ) {
      const batch: BookEntry[] = [];
      let paid = 0n;
      while (batch.length < this.policy.maxBatch && i < ordered.length) {
        const e = ordered[i++]!;
        if (blocked.has(e.channel)) {
          report.skipped.push(e.key);
          continue;
        }
        const total = await this.#preview(e, signal, report);
        if (total === undefined) {
          if (!resolvedByPreview(e, report)) blocked.add(e.channel);
          continue;
        }
        // Each payer's lane with this provider is read once a pass and drawn down by the batch as planned.
        const payer = getAddress(e.voucher.payer);
        const available = lanes.get(payer) ?? (await this.escrow.laneOf(payer, e.voucher.provider))[0];
        if (total > available) {
          lanes.set(payer, available);
          blocked.add(e.channel);
          await this.#drop(e, "lane", false, signal, report);
          continue;
        }
        lanes.set(payer, available - total);
        paid += total;
        batch.push(e);
      }
      if (batch.length === 0) continue;
      await this.#send(batch, paid, trigger, report);
    }
  }

  /** The voucher's total cost now, or undefined when it must not go in a batch (and why is recorded). */
  async #preview(e: BookEntry, signal: AbortSignal, report: SettlementReport): Promise<bigint | undefined> {
    try {
      const s = await this.escrow.previewSettle(e.voucher);
      return s.providerAmount + s.royaltyAmount + s.feeAmount;
    } catch (error) {
      const revert = decodeRevert(error);
      if (!revert) throw error; // transient: the pass is retried
      if (revert.reason === "Escrow__AlreadySettled") {
        await this.#reconcile(e, e.voucher.inputTokens, e.voucher.outputTokens, false, signal, report);
      } else {
        await this.#drop(e, revert.reason, PERMANENT.has(revert.reason), signal, report);
      }
      return undefined;
    }
  }

  async #send(batch: BookEntry[], planned: bigint, trigger: SettlementTrigger, report: SettlementReport): Promise<void> {
    void planned; // what previews said; the receipt's logs are what counts
    const keys = batch.map((e) => e.key);
    report.skipped.push(...keys); // until confirmed: what a failure leaves outstanding
    const tx = await this.escrow.settleBatch(batch.map((e) => ({ voucher: e.voucher, signature: e.signature })));
    report.txHashes.push(tx.hash);
    this.#emit("settlement:sent", { txHash: tx.hash, keys, trigger });
    // Not abortable from here: once sent, the transaction's outcome must be recorded.
    const receipt = await tx.wait();
    const outcome = this.#outcome(receipt?.logs ?? []);
    const settled: string[] = [];
    const skipped: { key: string; reason: string }[] = [];
    let paid = 0n;
    let providerAmount = 0n;
    let unauthorised = false;
    report.skipped = report.skipped.filter((k) => !keys.includes(k));
    for (const e of batch) {
      const id = outcomeId(e.voucher);
      const earned = outcome.settled.get(id);
      if (earned !== undefined) {
        await this.book.markSettled(
          e.key,
          { inputTokens: e.voucher.inputTokens, outputTokens: e.voucher.outputTokens },
          { earned: { providerAmount: earned.providerAmount, total: earned.total } }
        );
        settled.push(e.key);
        paid += earned.total;
        providerAmount += earned.providerAmount;
        continue;
      }
      // Skipped by the escrow (or, which cannot happen, in neither log): never recorded as settled. The next
      // pass reconciles it from settledOf if the chain did move.
      const reason = outcome.skipped.get(id) ?? "unknown";
      skipped.push({ key: e.key, reason });
      if (reason === "Escrow__NotProviderOrSettler") unauthorised = true;
      // Once mined, the outcome is recorded even while the worker stops.
      await this.#drop(e, reason, PERMANENT.has(reason), new AbortController().signal, report);
    }
    report.settled.push(...settled);
    this.#emit("settlement:confirmed", {
      txHash: tx.hash,
      keys: settled,
      skipped,
      blockNumber: receipt?.blockNumber ?? 0,
      paid,
      providerAmount,
    });
    if (unauthorised) throw new SettlerNotAuthorisedError(batch[0]!.voucher.provider, await this.#sender());
  }

  /** The escrow's VoucherSettled and SettlementSkipped logs of a receipt, by voucher session. */
  #outcome(logs: readonly { address: string; topics: readonly string[]; data: string }[]): {
    settled: Map<string, { providerAmount: bigint; total: bigint }>;
    skipped: Map<string, string>;
  } {
    const escrowAddress = getAddress(this.escrow.target as string);
    const settled = new Map<string, { providerAmount: bigint; total: bigint }>();
    const skipped = new Map<string, string>();
    for (const log of logs) {
      if (getAddress(log.address) !== escrowAddress) continue;
      const parsed = this.escrow.interface.parseLog({ topics: [...log.topics], data: log.data });
      if (parsed?.name === "VoucherSettled") {
        const a = parsed.args;
        const id = outcomeId({ payer: a.payer as string, provider: a.provider as string, agentId: a.agentId as bigint, session: a.session as bigint });
        const providerAmount = a.providerAmount as bigint;
        settled.set(id, { providerAmount, total: providerAmount + (a.royaltyAmount as bigint) + (a.feeAmount as bigint) });
      } else if (parsed?.name === "SettlementSkipped") {
        const a = parsed.args;
        const id = outcomeId({ payer: a.payer as string, provider: a.provider as string, agentId: a.agentId as bigint, session: a.session as bigint });
        let reason = "unknown";
        try {
          reason = this.escrow.interface.parseError(a.reason as string)?.name ?? reason;
        } catch {
          // Not one of the escrow's errors (cannot happen with this escrow): kept as "unknown", retried.
        }
        skipped.set(id, reason);
      }
    }
    return { settled, skipped };
  }

  async #sender(): Promise<string> {
    const runner = this.escrow.runner as { getAddress?: () => Promise<string> } | null;
    return runner?.getAddress ? runner.getAddress() : "unknown";
  }

  async #reconcile(
    e: BookEntry,
    inputTokens: bigint,
    outputTokens: bigint,
    superseded: boolean,
    signal: AbortSignal,
    report: SettlementReport,
    paid?: bigint
  ): Promise<BookEntry["settled"]> {
    const totals = paid === undefined ? { inputTokens, outputTokens } : { inputTokens, outputTokens, paid };
    const updated = await this.book.markSettled(e.key, totals, { signal });
    report.reconciled.push(e.key);
    this.#emit("settlement:reconciled", {
      key: e.key,
      inputTokens,
      outputTokens,
      superseded,
    });
    return updated.settled;
  }

  async #drop(e: BookEntry, reason: string, permanent: boolean, signal: AbortSignal, report: SettlementReport) {
    if (permanent) {
      await this.book.markDropped(e.key, reason, { signal });
      report.dropped.push(e.key);
    } else {
      report.skipped.push(e.key);
    }
    this.#emit("settlement:dropped", { key: e.key, reason, permanent });
  }

  async #chainTime(): Promise<number> {
    const provider = this.escrow.runner?.provider;
    const block = provider ? await provider.getBlock("latest") : null;
    return block ? block.timestamp : Math.floor(Date.now() / 1000);
  }

  #emit<K extends keyof SettlementWorkerEvents>(type: K, detail: SettlementWorkerEvents[K]["detail"]): void {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}

/** Names a voucher's session in a receipt's logs. */
function outcomeId(v: { payer: string; provider: string; agentId: bigint; session: bigint }): string {
  return `${getAddress(v.payer)}|${getAddress(v.provider)}|${v.agentId}|${v.session}`;
}

// A session found settled, or given up for good, holds nothing back; one skipped for now must hold back the
// later sessions of its channel, which would supersede it.
function resolvedByPreview(e: BookEntry, report: SettlementReport): boolean {
  return report.reconciled.includes(e.key) || report.dropped.includes(e.key);
}

/**
 * Orders the channels' queues so that what expires soonest goes first, without ever putting a session
 * before an earlier one of its channel: a session's urgency is the soonest expiry among it and the later
 * sessions of its channel (they can only settle after it).
 */
export function expiryOrder(queues: Map<string, BookEntry[]>): BookEntry[] {
  const urgency = new Map<string, bigint[]>();
  for (const [channel, q] of queues) {
    const u: bigint[] = new Array<bigint>(q.length);
    let min = -1n;
    for (let j = q.length - 1; j >= 0; j--) {
      const x = q[j]!.expiry;
      min = min < 0n || x < min ? x : min;
      u[j] = min;
    }
    urgency.set(channel, u);
  }
  const heads = new Map<string, number>([...queues.keys()].map((c) => [c, 0]));
  const out: BookEntry[] = [];
  while (heads.size > 0) {
    let best: string | undefined;
    let bestUrgency = 0n;
    for (const [c, j] of heads) {
      const u = urgency.get(c)![j]!;
      if (best === undefined || u < bestUrgency || (u === bestUrgency && c < best)) {
        best = c;
        bestUrgency = u;
      }
    }
    const j = heads.get(best!)!;
    const q = queues.get(best!)!;
    out.push(q[j]!);
    if (j + 1 < q.length) heads.set(best!, j + 1);
    else heads.delete(best!);
  }
  return out;
}

