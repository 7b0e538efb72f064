/**
 * The provider's voucher book: every voucher a payer hands over is checked offline and, if good, kept in a
 * LevelDB folder as the latest of its session, together with what of it has been settled on chain. The
 * settlement worker reads `latest()` and writes `markSettled()`; both survive restarts, so a voucher is
 * never submitted again for totals already settled.
 *
 * Layout (string keys, JSON values with bigints as decimal strings):
 * - `c!<channelKey>`: the channel's latest accepted session number;
 * - `s!<channelKey>!<session, 20 digits>`: the session's latest voucher, its signature and the totals
 *   settled so far. Zero-padded session numbers list a channel's sessions in increasing order.
 *
 * Durability: every write is one LevelDB batch with `{ sync: true }`: a resolved `accept` or `markSettled`
 * survives a crash of the process or the OS.
 *
 * What a payer owes: the escrow takes a voucher's full cost (provider, royalty and fee, `voucherCost(...).total`)
 * from the payer's lane with this provider, so that is what {@link VoucherBook.outstanding} reports, next to the
 * provider's share. The unsettled entries are also indexed in memory by payer (built at `start()` from the
 * folder, kept up to date by every write), so that what one payer owes is read in the time of that payer's
 * entries: a session open or a voucher never scans the whole book.
 */
import { mkdir } from "node:fs/promises";
import { AbiCoder, getAddress, keccak256 } from "ethers";
import { Level } from "level";
import { InvalidVoucherError } from "../../sdk/chain/errors.js";
import { validateVoucher, verifyVoucher, voucherCost } from "../../sdk/chain/voucher.js";
import type { EscrowRef, SettledTotals, Voucher, VoucherRates } from "../../sdk/chain/voucher.js";
import {
  UnknownSessionError,
  VoucherBookClosedError,
  VoucherCumulativeDecreasedError,
  VoucherExpiredError,
  VoucherExpiryTooFarError,
  VoucherPriceMismatchError,
  VoucherRateMismatchError,
  VoucherReplayError,
  VoucherSessionSupersededError,
  VoucherSignatureError,
  VoucherWrongDomainError,
  VoucherWrongProviderError,
} from "./errors.js";
import { TypedEventTarget } from "../../sdk/events.js";

// ---------------------------------------------------------------------------------------------------------
// Types

/** Prices per million tokens, as the provider advertises them. */
export interface AgreedPrices {
  input: bigint;
  output: bigint;
}

/** Options of {@link VoucherBook}. */
export interface VoucherBookOptions {
  /** The book's LevelDB folder (created if missing); one book per folder. */
  dir: string;
  /** The escrow this node settles on: the EIP-712 domain vouchers must be signed for. */
  escrow: EscrowRef;
  /** This node's (the provider's) address: vouchers must pay it. */
  provider: string;
  /** Prices every voucher must carry; `accept`'s own `prices` or `rates` option overrides them. */
  prices?: AgreedPrices;
  /** Unix seconds now; defaults to the wall clock. */
  now?: () => number;
  /**
   * Seconds a voucher must still be valid for when accepted, so that it can still be settled; default 60.
   * The settlement worker must run more often than this.
   */
  minRemainingSeconds?: number;
  /** The escrow's `maxVoucherLifetime()`: a voucher expiring later could not settle now. Unchecked if absent. */
  maxLifetimeSeconds?: number;
}

/** A session's latest voucher as the book holds it. */
export interface BookEntry {
  /** `<channelKey>:<session>`: names the session in `markSettled`, `closeSession` and events. */
  key: string;
  /** The escrow's channelKey(payer, provider, agentId). */
  channel: string;
  voucher: Voucher;
  signature: string;
  /** Totals already settled on chain for this session (and, once known, what the session has taken: `paid`). */
  settled: SettledTotals;
  /**
   * What the chain paid for this session, as the VoucherSettled logs of this node's confirmed settlements say:
   * the provider's share and the whole (provider, royalty and fee). Zero until a settlement is confirmed.
   */
  earned: { providerAmount: bigint; total: bigint };
  expiry: bigint;
  /** Why the voucher can never settle, when the worker gave up on it (expired, superseded, …). */
  dropped?: string;
}

/** What a channel owes, not settled yet. */
export interface ChannelOutstanding {
  channel: string;
  payer: string;
  agentId: bigint;
  /** Sessions with something unsettled. */
  sessions: number;
  inputTokens: bigint;
  outputTokens: bigint;
  /** What settling the channel's unsettled vouchers takes from the payer's lane: provider, royalty and fee. */
  amount: bigint;
  /** The provider's share of `amount`, at the signed prices. */
  providerAmount: bigint;
}

/** What one payer owes this provider, not settled yet (see {@link VoucherBook.outstandingOf}). */
export interface PayerOutstanding {
  payer: string;
  /** Sessions with something unsettled. */
  sessions: number;
  /** What settling them takes from the payer's lane: provider, royalty and fee. */
  amount: bigint;
  /** The provider's share of `amount`. */
  providerAmount: bigint;
  /** The book's latest voucher of each of those sessions, by session key. */
  vouched: ReadonlyMap<string, Voucher>;
}

export interface AcceptOptions {
  signal?: AbortSignal;
  /** The domain the client says it signed for; a mismatch is reported as such rather than as a forgery. */
  domain?: EscrowRef;
  /** Prices agreed for this session; overrides the book's. */
  prices?: AgreedPrices;
  /**
   * Every rate agreed for this session (the session request's prices, royalty and fee); overrides `prices`.
   * A voucher at any other rate is refused: the escrow charges what the voucher says, so a voucher below the
   * agreed royalty or fee could fail to settle, and one above would charge the payer more than agreed.
   */
  rates?: VoucherRates;
}

export interface VoucherAcceptedDetail {
  entry: BookEntry;
}

export interface VoucherBookEvents {
  "voucher:accepted": CustomEvent<VoucherAcceptedDetail>;
}

interface StoredSession {
  // royaltyPerMillion and feeBps are absent from entries written before vouchers carried them (read as 0).
  voucher: Record<keyof Voucher, string>;
  signature: string;
  settled: { inputTokens: string; outputTokens: string; paid?: string };
  earned?: { providerAmount: string; total: string };
  dropped?: string;
}

interface StoredChannel {
  latestSession: string;
}

// ---------------------------------------------------------------------------------------------------------
// Helpers

const abi = AbiCoder.defaultAbiCoder();

/**
 * The escrow's `channelKey(payer, provider, agentId)`, computed offline.
 *
 * @example
 * channelKeyOf(voucher) === await escrow.channelKey(voucher.payer, voucher.provider, voucher.agentId)
 */
export function channelKeyOf(v: Pick<Voucher, "payer" | "provider" | "agentId">): string {
  return keccak256(abi.encode(["address", "address", "uint256"], [v.payer, v.provider, v.agentId]));
}

/**
 * The book's name for a voucher's session.
 *
 * @example
 * worker.closeSession(sessionKeyOf(voucher))
 */
export function sessionKeyOf(v: Pick<Voucher, "payer" | "provider" | "agentId" | "session">): string {
  return `${channelKeyOf(v)}:${v.session}`;
}

function parseSessionKey(key: string): { channel: string; session: bigint } {
  const match = /^(0x[0-9a-f]{64}):(\d{1,20})$/.exec(key);
  if (!match) throw new UnknownSessionError(key);
  return { channel: match[1]!, session: BigInt(match[2]!) };
}

const channelDbKey = (channel: string) => `c!${channel}`;
const sessionDbKey = (channel: string, session: bigint) => `s!${channel}!${session.toString().padStart(20, "0")}`;

function encodeVoucher(v: Voucher): StoredSession["voucher"] {
  return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, String(x)])) as StoredSession["voucher"];
}

function decodeVoucher(s: StoredSession["voucher"]): Voucher {
  return {
    payer: s.payer,
    provider: s.provider,
    agentId: BigInt(s.agentId),
    session: BigInt(s.session),
    inputTokens: BigInt(s.inputTokens),
    outputTokens: BigInt(s.outputTokens),
    priceInputPerMillion: BigInt(s.priceInputPerMillion),
    priceOutputPerMillion: BigInt(s.priceOutputPerMillion),
    royaltyPerMillion: BigInt(s.royaltyPerMillion ?? "0"),
    feeBps: BigInt(s.feeBps ?? "0"),
    expiry: BigInt(s.expiry),
  };
}

function toEntry(channel: string, s: StoredSession): BookEntry {
  const voucher = decodeVoucher(s.voucher);
  return {
    key: `${channel}:${voucher.session}`,
    channel,
    voucher,
    signature: s.signature,
    settled: {
      inputTokens: BigInt(s.settled.inputTokens),
      outputTokens: BigInt(s.settled.outputTokens),
      ...(s.settled.paid === undefined ? {} : { paid: BigInt(s.settled.paid) }),
    },
    earned: {
      providerAmount: BigInt(s.earned?.providerAmount ?? "0"),
      total: BigInt(s.earned?.total ?? "0"),
    },
    expiry: voucher.expiry,
    ...(s.dropped === undefined ? {} : { dropped: s.dropped }),
  };
}

/** Whether the entry has tokens not settled yet and has not been given up on. */
export function isUnsettled(e: BookEntry): boolean {
  return (
    e.dropped === undefined &&
    (e.voucher.inputTokens > e.settled.inputTokens || e.voucher.outputTokens > e.settled.outputTokens)
  );
}

// ---------------------------------------------------------------------------------------------------------
// The book

/**
 * Keeps the latest valid voucher of every session this provider serves, and what of it was settled.
 *
 * `accept` refuses, with one error class each: forged signatures (VoucherSignatureError), vouchers signed
 * for another chain or escrow (VoucherWrongDomainError when the client names its domain, else they fail as
 * forged), another provider (VoucherWrongProviderError), expired or soon expiring ones (VoucherExpiredError),
 * replays (VoucherReplayError), lower totals (VoucherCumulativeDecreasedError), sessions below the channel's
 * latest (VoucherSessionSupersededError), other prices than agreed (VoucherPriceMismatchError) and another
 * royalty or fee than agreed (VoucherRateMismatchError). A refused voucher changes nothing in the book.
 *
 * @example
 * const book = new VoucherBook({ dir: join(home, "vouchers"), escrow: { chainId, address }, provider: wallet.address })
 * await book.start()
 * await book.accept(voucher, signature, { signal })   // throws a typed error when it must be refused
 * for (const e of await book.latest()) console.log(e.key, e.expiry)
 * await book.stop()
 */
export class VoucherBook extends TypedEventTarget<VoucherBookEvents> {
  readonly dir: string;
  readonly escrow: { chainId: bigint; address: string };
  readonly provider: string;
  readonly #prices: AgreedPrices | undefined;
  readonly #now: () => number;
  readonly #minRemaining: bigint;
  readonly #maxLifetime: bigint | undefined;
  #db: Level<string, string> | undefined;
  // The unsettled entries by payer, then session key: what outstandingOf() reads instead of the folder.
  readonly #unsettled = new Map<string, Map<string, BookEntry>>();
  // Accepts and marks are read-modify-write: run them one at a time so two vouchers of a session can't race.
  #queue: Promise<unknown> = Promise.resolve();

  constructor(options: VoucherBookOptions) {
    super();
    this.dir = options.dir;
    this.escrow = {
      chainId: BigInt(options.escrow.chainId),
      address: getAddress(options.escrow.address),
    };
    this.provider = getAddress(options.provider);
    this.#prices = options.prices;
    this.#now = options.now ?? (() => Math.floor(Date.now() / 1000));
    this.#minRemaining = BigInt(options.minRemainingSeconds ?? 60);
    this.#maxLifetime = options.maxLifetimeSeconds === undefined ? undefined : BigInt(options.maxLifetimeSeconds);
  }

  /** Opens the LevelDB folder. */
  async start(options: { signal?: AbortSignal } = {}): Promise<void> {
    options.signal?.throwIfAborted();
    if (this.#db) return;
    await mkdir(this.dir, { recursive: true, mode: 0o700 });
    const db = new Level<string, string>(this.dir, { valueEncoding: "utf8" });
    await db.open();
    this.#unsettled.clear();
    try {
      for await (const [dbKey, value] of db.iterator({ gte: "s!", lt: 's"' })) {
        options.signal?.throwIfAborted();
        this.#index(toEntry(dbKey.slice(2, 68), JSON.parse(value) as StoredSession));
      }
    } catch (err) {
      await db.close();
      throw err;
    }
    this.#db = db;
  }

  /** Waits for pending writes and closes the folder. */
  async stop(): Promise<void> {
    const db = this.#db;
    if (!db) return;
    await this.#queue.catch(() => {});
    this.#db = undefined;
    this.#unsettled.clear();
    await db.close();
  }

  /**
   * Checks `voucher` and stores it as its session's latest.
   *
   * @example
   * const entry = await book.accept(voucher, signature, { signal, prices: { input: 500_000n, output: 1_500_000n } })
   * @throws the refusals listed on the class, or InvalidVoucherError for malformed fields.
   */
  accept(voucher: Voucher, signature: string, options: AcceptOptions = {}): Promise<BookEntry> {
    return this.#exclusive(options.signal, async (db) => {
      const v = validateVoucher(voucher);
      if (v.provider !== this.provider) throw new VoucherWrongProviderError(this.provider, v.provider);
      if (options.domain) {
        const actual = {
          chainId: BigInt(options.domain.chainId),
          address: getAddress(options.domain.address),
        };
        if (actual.chainId !== this.escrow.chainId || actual.address !== this.escrow.address) {
          throw new VoucherWrongDomainError(this.escrow, actual);
        }
      }
      if (!verifyVoucher(v, this.escrow, signature)) throw new VoucherSignatureError(v.payer);
      const now = BigInt(this.#now());
      if (v.expiry < now + this.#minRemaining) throw new VoucherExpiredError(v.expiry, now + this.#minRemaining);
      if (this.#maxLifetime !== undefined && v.expiry > now + this.#maxLifetime) {
        throw new VoucherExpiryTooFarError(v.expiry, now + this.#maxLifetime);
      }
      const rates = options.rates;
      const prices = rates ? { input: rates.priceInputPerMillion, output: rates.priceOutputPerMillion } : (options.prices ?? this.#prices);
      if (prices && (v.priceInputPerMillion !== prices.input || v.priceOutputPerMillion !== prices.output)) {
        throw new VoucherPriceMismatchError(prices, {
          input: v.priceInputPerMillion,
          output: v.priceOutputPerMillion,
        });
      }
      if (rates) checkRates(rates, v);
      if (v.inputTokens === 0n && v.outputTokens === 0n) {
        throw new InvalidVoucherError(["a voucher must carry some tokens"]);
      }

      const channel = channelKeyOf(v);
      const key = `${channel}:${v.session}`;
      const storedChannel = await getJson<StoredChannel>(db, channelDbKey(channel));
      const latestSession = storedChannel ? BigInt(storedChannel.latestSession) : 0n;
      if (v.session < latestSession) throw new VoucherSessionSupersededError(channel, latestSession, v.session);

      const previous = await getJson<StoredSession>(db, sessionDbKey(channel, v.session));
      let settled: StoredSession["settled"] = {
        inputTokens: "0",
        outputTokens: "0",
      };
      if (previous) {
        const p = decodeVoucher(previous.voucher);
        if (v.inputTokens === p.inputTokens && v.outputTokens === p.outputTokens) {
          throw new VoucherReplayError(key, v.inputTokens, v.outputTokens);
        }
        if (v.inputTokens < p.inputTokens || v.outputTokens < p.outputTokens) {
          throw new VoucherCumulativeDecreasedError(
            key,
            { inputTokens: p.inputTokens, outputTokens: p.outputTokens },
            { inputTokens: v.inputTokens, outputTokens: v.outputTokens }
          );
        }
        // The escrow prices a session's cumulative totals at the latest voucher's prices: a price change
        // within a session would reprice the tokens already served.
        if (v.priceInputPerMillion !== p.priceInputPerMillion || v.priceOutputPerMillion !== p.priceOutputPerMillion) {
          throw new VoucherPriceMismatchError(
            { input: p.priceInputPerMillion, output: p.priceOutputPerMillion },
            { input: v.priceInputPerMillion, output: v.priceOutputPerMillion }
          );
        }
        checkRates(p, v);
        settled = previous.settled;
      }

      const stored: StoredSession = {
        voucher: encodeVoucher(v),
        signature,
        settled,
        ...(previous?.earned === undefined ? {} : { earned: previous.earned }),
      };
      const ops: { type: "put"; key: string; value: string }[] = [
        {
          type: "put",
          key: sessionDbKey(channel, v.session),
          value: JSON.stringify(stored),
        },
      ];
      if (v.session > latestSession) {
        ops.push({
          type: "put",
          key: channelDbKey(channel),
          value: JSON.stringify({
            latestSession: v.session.toString(),
          } satisfies StoredChannel),
        });
      }
      await db.batch(ops, { sync: true });
      const entry = toEntry(channel, stored);
      this.#index(entry);
      this.dispatchEvent(new CustomEvent("voucher:accepted", { detail: { entry } }));
      return entry;
    });
  }

  /**
   * The session's entry, settled or not.
   *
   * @example
   * const entry = await book.get(sessionKeyOf(voucher))
   */
  async get(key: string, options: { signal?: AbortSignal } = {}): Promise<BookEntry | undefined> {
    options.signal?.throwIfAborted();
    const db = this.#open();
    const { channel, session } = parseSessionKey(key);
    const stored = await getJson<StoredSession>(db, sessionDbKey(channel, session));
    return stored ? toEntry(channel, stored) : undefined;
  }

  /**
   * The latest voucher of every session with something left to settle, by channel and then session order.
   *
   * @example
   * const due = (await book.latest()).filter((e) => e.expiry < soon)
   */
  async latest(options: { signal?: AbortSignal } = {}): Promise<BookEntry[]> {
    const all = await this.entries(options);
    return all.filter(isUnsettled);
  }

  /** Every session in the book, settled or not, by channel and then session order. */
  async entries(options: { signal?: AbortSignal } = {}): Promise<BookEntry[]> {
    const db = this.#open();
    const out: BookEntry[] = [];
    for await (const [dbKey, value] of db.iterator({ gte: "s!", lt: 's"' })) {
      options.signal?.throwIfAborted();
      out.push(toEntry(dbKey.slice(2, 68), JSON.parse(value) as StoredSession));
    }
    return out;
  }

  /**
   * Records that the session is settled on chain up to `cumulative` (never lowering what was recorded), so
   * that neither this process nor a restarted one submits those totals again. `cumulative.paid` is the
   * chain's `settledOf(...).paid` when known. `options.earned` adds what a confirmed settlement's
   * VoucherSettled log says the chain paid for the session (the earnings metric counts only that).
   *
   * @example
   * await book.markSettled(entry.key, { inputTokens: entry.voucher.inputTokens, outputTokens: entry.voucher.outputTokens })
   */
  markSettled(
    key: string,
    cumulative: SettledTotals,
    options: { signal?: AbortSignal; earned?: { providerAmount: bigint; total: bigint } } = {}
  ): Promise<BookEntry> {
    return this.#update(key, options.signal, (s) => {
      const input = BigInt(s.settled.inputTokens);
      const output = BigInt(s.settled.outputTokens);
      const paid = s.settled.paid === undefined ? undefined : BigInt(s.settled.paid);
      const newPaid = cumulative.paid === undefined ? paid : paid === undefined || cumulative.paid > paid ? cumulative.paid : paid;
      s.settled = {
        inputTokens: (cumulative.inputTokens > input ? cumulative.inputTokens : input).toString(),
        outputTokens: (cumulative.outputTokens > output ? cumulative.outputTokens : output).toString(),
        ...(newPaid === undefined ? {} : { paid: newPaid.toString() }),
      };
      if (options.earned) {
        s.earned = {
          providerAmount: (BigInt(s.earned?.providerAmount ?? "0") + options.earned.providerAmount).toString(),
          total: (BigInt(s.earned?.total ?? "0") + options.earned.total).toString(),
        };
      }
    });
  }

  /**
   * Gives up on a session's voucher that can never settle (expired, superseded on chain, …); it then leaves
   * `latest()` and stays in `entries()` with the reason.
   *
   * @example
   * await book.markDropped(entry.key, "Escrow__VoucherExpired")
   */
  markDropped(key: string, reason: string, options: { signal?: AbortSignal } = {}): Promise<BookEntry> {
    return this.#update(key, options.signal, (s) => {
      s.dropped = reason;
    });
  }

  /**
   * What each channel owes beyond what was settled, for the amount trigger and the dashboard: `amount` is what
   * settling it takes from the payer's lane (provider, royalty and fee), `providerAmount` this provider's share.
   * Read from the in-memory index, not the folder.
   *
   * @example
   * const total = (await book.outstanding()).reduce((sum, c) => sum + c.providerAmount, 0n)
   */
  async outstanding(options: { signal?: AbortSignal } = {}): Promise<ChannelOutstanding[]> {
    options.signal?.throwIfAborted();
    this.#open();
    const byChannel = new Map<string, ChannelOutstanding>();
    const entries = [...this.#unsettled.values()].flatMap((m) => [...m.values()]);
    // latest()'s order: by channel, then session.
    entries.sort((a, b) => (a.channel < b.channel ? -1 : a.channel > b.channel ? 1 : a.voucher.session < b.voucher.session ? -1 : 1));
    for (const e of entries) {
      let c = byChannel.get(e.channel);
      if (!c) {
        c = {
          channel: e.channel,
          payer: e.voucher.payer,
          agentId: e.voucher.agentId,
          sessions: 0,
          inputTokens: 0n,
          outputTokens: 0n,
          amount: 0n,
          providerAmount: 0n,
        };
        byChannel.set(e.channel, c);
      }
      const cost = voucherCost(e.voucher, e.settled);
      c.sessions++;
      c.inputTokens += e.voucher.inputTokens - e.settled.inputTokens;
      c.outputTokens += e.voucher.outputTokens - e.settled.outputTokens;
      c.amount += cost.total;
      c.providerAmount += cost.providerAmount;
    }
    return [...byChannel.values()];
  }

  /**
   * What `payer` owes this provider unsettled, in the time of that payer's own entries (an in-memory index):
   * what a session open reserves against the payer's lane.
   *
   * @example
   * const { amount } = book.outstandingOf(payer)
   * if (lane.amount < amount + cap) refuse()
   */
  outstandingOf(payer: string): PayerOutstanding {
    this.#open();
    const address = getAddress(payer);
    const out = { payer: address, sessions: 0, amount: 0n, providerAmount: 0n, vouched: new Map<string, Voucher>() };
    for (const e of this.#unsettled.get(address)?.values() ?? []) {
      const cost = voucherCost(e.voucher, e.settled);
      out.sessions++;
      out.amount += cost.total;
      out.providerAmount += cost.providerAmount;
      out.vouched.set(e.key, e.voucher);
    }
    return out;
  }

  /** Keeps the payer index in step with an entry just read or written. */
  #index(e: BookEntry): void {
    const payer = getAddress(e.voucher.payer);
    let entries = this.#unsettled.get(payer);
    if (isUnsettled(e)) {
      if (!entries) this.#unsettled.set(payer, (entries = new Map()));
      entries.set(e.key, e);
    } else if (entries) {
      entries.delete(e.key);
      if (entries.size === 0) this.#unsettled.delete(payer);
    }
  }

  #open(): Level<string, string> {
    if (!this.#db) throw new VoucherBookClosedError(this.dir);
    return this.#db;
  }

  #update(key: string, signal: AbortSignal | undefined, change: (s: StoredSession) => void): Promise<BookEntry> {
    return this.#exclusive(signal, async (db) => {
      const { channel, session } = parseSessionKey(key);
      const dbKey = sessionDbKey(channel, session);
      const stored = await getJson<StoredSession>(db, dbKey);
      if (!stored) throw new UnknownSessionError(key);
      change(stored);
      await db.put(dbKey, JSON.stringify(stored), { sync: true });
      const entry = toEntry(channel, stored);
      this.#index(entry);
      return entry;
    });
  }

  #exclusive<T>(signal: AbortSignal | undefined, work: (db: Level<string, string>) => Promise<T>): Promise<T> {
    const run = this.#queue.then(() => {
      signal?.throwIfAborted();
      return work(this.#open());
    });
    this.#queue = run.catch(() => {});
    return run;
  }
}

/** The voucher's royalty and fee must be `agreed`'s: the escrow charges exactly what the voucher carries. */
function checkRates(agreed: Pick<VoucherRates, "royaltyPerMillion" | "feeBps">, v: Voucher): void {
  if (v.royaltyPerMillion !== agreed.royaltyPerMillion) {
    throw new VoucherRateMismatchError("royaltyPerMillion", agreed.royaltyPerMillion, v.royaltyPerMillion);
  }
  if (v.feeBps !== agreed.feeBps) throw new VoucherRateMismatchError("feeBps", agreed.feeBps, v.feeBps);
}

async function getJson<T>(db: Level<string, string>, key: string): Promise<T | undefined> {
  const value = await db.get(key);
  return value === undefined ? undefined : (JSON.parse(value) as T);
}
