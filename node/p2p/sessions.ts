/**
 * What the provider's session, inference and voucher protocols share: the chain reads they make (behind a
 * small view, so tests and the daemon can choose the runner), the chain clock, and the table of open
 * sessions with their served and vouched totals.
 */
import { getAddress } from "ethers";
import type { SoulmeshContracts } from "../../sdk/chain/contracts.js";
import { decodeRevert } from "../../sdk/chain/revert.js";
import { abortable } from "../../sdk/time.js";
import { sessionCost, type VoucherRates } from "../../sdk/chain/voucher.js";
import type { SessionRequest } from "../../sdk/protocol/index.js";

// ------------------------------------------------------------------------------------------------ chain view

/** A payer's lane with one provider (the escrow's `laneOf`). */
export interface Lane {
  amount: bigint;
  /** When a requested release can complete; 0n when none is pending. */
  releaseAt: bigint;
}

/**
 * A rate whose changes take effect after a delay (a persona's royalty, the protocol fee): the rate in force,
 * the one scheduled to replace it (equal to `current` when none is pending) and when (0n when none is).
 */
export interface RateSchedule {
  current: bigint;
  next: bigint;
  effectiveAt: bigint;
}

export interface ProviderChainView {
  /** Unix seconds, chain time (latest block). */
  now(options?: { signal?: AbortSignal }): Promise<number>;
  /** The payer's lane with `provider`: what only that provider's vouchers draw on, and its pending release. */
  laneOf(payer: string, provider: string, options?: { signal?: AbortSignal }): Promise<Lane>;
  /** A persona's royalty schedule (per million tokens), or undefined when the persona does not exist. */
  royaltyScheduleOf(personaId: bigint, options?: { signal?: AbortSignal }): Promise<RateSchedule | undefined>;
  /** The escrow's protocol fee schedule, in basis points. */
  protocolFee(options?: { signal?: AbortSignal }): Promise<RateSchedule>;
  /** The persona an agent was minted from, or undefined when the agent does not exist. */
  agentPersonaOf(agentId: bigint, options?: { signal?: AbortSignal }): Promise<bigint | undefined>;
  /** A persona's on-chain record, or undefined when it does not exist. adapterSha256 is 0x00…00 for none. */
  personaOf(
    personaId: bigint,
    options?: { signal?: AbortSignal },
  ): Promise<{ adapterSha256: string; baseModelHash: string } | undefined>;
  /** The escrow's maxVoucherLifetime() in seconds (cache it: immutable). */
  maxVoucherLifetime(options?: { signal?: AbortSignal }): Promise<bigint>;
  /** The latest session number settled on the channel (payer, provider, agent): the escrow's settledOf(...).session. */
  settledSessionOf(payer: string, provider: string, agentId: bigint, options?: { signal?: AbortSignal }): Promise<bigint>;
}

/** The adapter hash a persona without an adapter registers. */
export const NO_ADAPTER = `0x${"00".repeat(32)}`;

/**
 * A view over the deployed contracts (read-only runner is enough). Unknown agents and personas read as
 * undefined (their registries revert with Agent__UnknownAgent / Persona__UnknownPersona); any other failure
 * (RPC down, wrong deployment) is thrown, so that a refusal is never made on a read that did not happen.
 *
 * @example
 * const chain = chainViewOf(connectContracts(deployment, new JsonRpcProvider(rpcUrl)))
 * const personaId = await chain.agentPersonaOf(7n, { signal })
 */
export function chainViewOf(contracts: SoulmeshContracts): ProviderChainView {
  const { inferenceEscrow, agentRegistry, personaRegistry } = contracts;
  let lifetime: Promise<bigint> | undefined;
  const unlessReverted = async <T>(read: Promise<T>, revert: string): Promise<T | undefined> => {
    try {
      return await read;
    } catch (err) {
      if (decodeRevert(err)?.reason === revert) return undefined;
      throw err;
    }
  };
  return {
    async now(options = {}) {
      const provider = inferenceEscrow.runner?.provider;
      if (provider == null) throw new TypeError("chainViewOf needs contracts connected to a provider or a signer with one");
      const block = await abortable(provider.getBlock("latest"), options.signal);
      if (block === null) throw new Error("The RPC endpoint returned no latest block.");
      return block.timestamp;
    },
    async laneOf(payer, provider, options = {}) {
      const [amount, releaseAt] = await abortable(inferenceEscrow.laneOf(payer, provider), options.signal);
      return { amount, releaseAt };
    },
    // Schedules are read on every open, never cached: a change scheduled a moment ago must be seen.
    async royaltyScheduleOf(personaId, options = {}) {
      const schedule = await abortable(
        unlessReverted(personaRegistry.royaltyScheduleOf(personaId), "Persona__UnknownPersona"),
        options.signal,
      );
      return schedule === undefined ? undefined : { current: schedule[0], next: schedule[1], effectiveAt: schedule[2] };
    },
    async protocolFee(options = {}) {
      const [current, next, effectiveAt] = await abortable(inferenceEscrow.protocolFee(), options.signal);
      return { current, next, effectiveAt };
    },
    agentPersonaOf: (agentId, options = {}) =>
      abortable(unlessReverted(agentRegistry.personaOf(agentId), "Agent__UnknownAgent"), options.signal),
    async personaOf(personaId, options = {}) {
      const persona = await abortable(
        unlessReverted(personaRegistry.personaOf(personaId), "Persona__UnknownPersona"),
        options.signal,
      );
      return persona === undefined
        ? undefined
        : { adapterSha256: persona.adapterSha256.toLowerCase(), baseModelHash: persona.baseModelHash.toLowerCase() };
    },
    maxVoucherLifetime(options = {}) {
      lifetime ??= inferenceEscrow.maxVoucherLifetime().catch((err: unknown) => {
        // A failed read must not be cached: the next session open tries again.
        lifetime = undefined;
        throw err;
      });
      return abortable(lifetime, options.signal);
    },
    async settledSessionOf(payer, provider, agentId, options = {}) {
      const [session] = await abortable(inferenceEscrow.settledOf(payer, provider, agentId), options.signal);
      return session;
    },
  };
}

// The SDK's; re-exported for the provider's modules that take it from here.
export { abortable } from "../../sdk/time.js";

/**
 * Chain time without an RPC round trip on every turn: the last reading plus the wall time since. Chain time
 * runs with wall time on real chains, and the checks it serves have margins of tens of seconds, so a
 * reading younger than `maxAgeMs` is good enough; an older one is refreshed before it is used.
 */
export class ChainClock {
  #reading: { chain: number; at: number } | undefined;
  #pending: Promise<number> | undefined;

  constructor(
    readonly chain: Pick<ProviderChainView, "now">,
    readonly maxAgeMs: number,
  ) {}

  /** Unix seconds on chain, estimated from a reading at most `maxAgeMs` old. */
  async now(options: { signal?: AbortSignal } = {}): Promise<number> {
    const reading = this.#reading;
    if (reading !== undefined && Date.now() - reading.at < this.maxAgeMs) {
      return reading.chain + Math.floor((Date.now() - reading.at) / 1000);
    }
    return this.read(options);
  }

  /** A fresh reading (concurrent callers share one RPC call). */
  read(options: { signal?: AbortSignal } = {}): Promise<number> {
    this.#pending ??= this.chain
      .now()
      .then((chain) => {
        this.#reading = { chain, at: Date.now() };
        return chain;
      })
      .finally(() => (this.#pending = undefined));
    return abortable(this.#pending, options.signal);
  }

  /** Takes a reading made elsewhere (a session open reads the time anyway). */
  record(chain: number): void {
    this.#reading = { chain, at: Date.now() };
  }
}

// ---------------------------------------------------------------------------------------------- the sessions

export interface ProviderSessionInfo {
  sessionId: string;
  /** VoucherBook's sessionKeyOf: names the session to the book and the settlement worker. */
  sessionKey: string;
  payer: string;
  agentId: bigint;
  personaId: bigint;
  session: bigint;
  modelSha256: string;
  adapterSha256s: string[];
  prices: { input: bigint; output: bigint };
  /** Every rate of the session: its vouchers must carry exactly these. */
  rates: VoucherRates;
  spendingCap: bigint;
  expiry: bigint;
  nextTurn: number;
  served: { inputTokens: bigint; outputTokens: bigint };
  vouched: { inputTokens: bigint; outputTokens: bigint };
  busy: boolean;
  /** Why the session serves no more turns, if it does not (see ProviderSession.end). */
  ending: SessionEnding | undefined;
  /** ms */
  openedAt: number;
}

/** Token totals of a session. */
export interface Totals {
  inputTokens: bigint;
  outputTokens: bigint;
}

/**
 * Why an open session serves no more turns: its payer closed it ("closed"), or a newer session of the same
 * channel opened ("superseded": this one's vouchers could not settle once the newer one's do).
 */
export type SessionEnding = "closed" | "superseded";

/**
 * An open session: the payer's signed request and the running totals that the credit rule and the receipts
 * are made of. Mutated only by the inference and voucher handlers, one turn at a time (`busy`).
 *
 * An ending session (`ending` set) serves no turn; it stays in the table only until what it served is vouched
 * (and its running turn, if any, counted), then `finish` removes it and has it settled.
 */
export class ProviderSession {
  readonly payer: string;
  readonly provider: string;
  readonly agentId: bigint;
  readonly personaId: bigint;
  readonly session: bigint;
  readonly prices: { input: bigint; output: bigint };
  readonly rates: VoucherRates;
  readonly spendingCap: bigint;
  readonly expiry: bigint;
  readonly openedAt = Date.now();
  nextTurn = 0;
  busy = false;
  served: Totals;
  vouched: Totals;
  /** The libp2p peer (as a string) whose open was accepted first: the one peer that may close the session. */
  openedBy: string | undefined = undefined;
  /** Set once the session serves no more turns; see the class comment. */
  ending: SessionEnding | undefined = undefined;
  /** The running turn's end (its tokens counted), while one runs. */
  turnDone: Promise<unknown> | undefined = undefined;
  #finish: ((session: ProviderSession) => void) | undefined = undefined;

  constructor(
    readonly sessionId: string,
    readonly sessionKey: string,
    readonly request: SessionRequest,
    readonly modelSha256: string,
    readonly adapterSha256s: readonly string[],
    /** Totals the book already holds for this session number (a reopen after a provider restart), else zero. */
    start: Totals,
  ) {
    this.payer = getAddress(request.payer);
    this.provider = getAddress(request.provider);
    this.agentId = BigInt(request.agentId);
    this.personaId = BigInt(request.personaId);
    this.session = BigInt(request.session);
    this.prices = { input: BigInt(request.priceInputPerMillion), output: BigInt(request.priceOutputPerMillion) };
    this.rates = {
      priceInputPerMillion: this.prices.input,
      priceOutputPerMillion: this.prices.output,
      royaltyPerMillion: BigInt(request.royaltyPerMillion),
      feeBps: BigInt(request.feeBps),
    };
    this.spendingCap = BigInt(request.spendingCap);
    this.expiry = BigInt(request.expiry);
    this.served = { ...start };
    this.vouched = { ...start };
  }

  /**
   * Stops serving turns on this session (a first reason stays), and has `finish` called once nothing it served
   * is unpaid and no turn runs: at once if that is so now, else when the voucher (or the turn's end) comes.
   */
  end(reason: SessionEnding, finish: (session: ProviderSession) => void): void {
    this.ending ??= reason;
    this.#finish ??= finish;
    this.finishIfPaid();
  }

  /** Called after a voucher or a turn's end: an ending session with nothing unpaid and no turn is finished. */
  finishIfPaid(): void {
    if (this.ending === undefined || this.busy || this.unpaid || this.#finish === undefined) return;
    const finish = this.#finish;
    this.#finish = undefined;
    finish(this);
  }

  /** Whether a turn was served that no voucher covers yet. */
  get unpaid(): boolean {
    return this.served.inputTokens > this.vouched.inputTokens || this.served.outputTokens > this.vouched.outputTokens;
  }

  /**
   * What of the spending cap the payer may still run up in this session beyond its vouchers: the cap minus the
   * full cost (provider, royalty and fee) of the totals vouched so far. A session open reserves it against the
   * payer's lane.
   */
  get unvouchedCap(): bigint {
    const vouched = sessionCost(this.vouched, this.rates);
    return vouched >= this.spendingCap ? 0n : this.spendingCap - vouched;
  }

  info(): ProviderSessionInfo {
    return {
      sessionId: this.sessionId,
      sessionKey: this.sessionKey,
      payer: this.payer,
      agentId: this.agentId,
      personaId: this.personaId,
      session: this.session,
      modelSha256: this.modelSha256,
      adapterSha256s: [...this.adapterSha256s],
      prices: { ...this.prices },
      rates: { ...this.rates },
      spendingCap: this.spendingCap,
      expiry: this.expiry,
      nextTurn: this.nextTurn,
      served: { ...this.served },
      vouched: { ...this.vouched },
      busy: this.busy,
      ending: this.ending,
      openedAt: this.openedAt,
    };
  }
}

/** The open sessions, by session id, by the book's session key (vouchers name the latter) and by payer. */
export class SessionTable {
  readonly #byId = new Map<string, ProviderSession>();
  readonly #byKey = new Map<string, ProviderSession>();
  readonly #byPayer = new Map<string, Set<ProviderSession>>();

  get size(): number {
    return this.#byId.size;
  }

  get(sessionId: string): ProviderSession | undefined {
    return this.#byId.get(sessionId.toLowerCase());
  }

  byKey(sessionKey: string): ProviderSession | undefined {
    return this.#byKey.get(sessionKey);
  }

  /** The payer's open sessions (checksummed address). */
  ofPayer(payer: string): ProviderSession[] {
    return [...(this.#byPayer.get(payer) ?? [])];
  }

  add(session: ProviderSession): void {
    this.#byId.set(session.sessionId.toLowerCase(), session);
    this.#byKey.set(session.sessionKey, session);
    let sessions = this.#byPayer.get(session.payer);
    if (sessions === undefined) this.#byPayer.set(session.payer, (sessions = new Set()));
    sessions.add(session);
  }

  /** Removes the session; false when it was not (or no longer) in the table. */
  delete(session: ProviderSession): boolean {
    if (this.#byId.get(session.sessionId.toLowerCase()) !== session) return false;
    this.#byId.delete(session.sessionId.toLowerCase());
    this.#byKey.delete(session.sessionKey);
    const sessions = this.#byPayer.get(session.payer);
    sessions?.delete(session);
    if (sessions?.size === 0) this.#byPayer.delete(session.payer);
    return true;
  }

  values(): ProviderSession[] {
    return [...this.#byId.values()];
  }

  /**
   * The highest session number opened (or asked to open) here on `channel` (the book's channelKeyOf) since this
   * process started, 0n if none. With the book's unsettled vouchers and the chain's settled session it is what
   * a new session must be numbered above.
   */
  latestSession(channel: string): bigint {
    return this.#latest.get(channel) ?? 0n;
  }

  /** Records that `session` was asked for on `channel`. */
  seeSession(channel: string, session: bigint): void {
    if (session <= (this.#latest.get(channel) ?? 0n)) return;
    // Bounded: the oldest channels are forgotten first; the book and the chain still know what they vouched.
    if (this.#latest.size >= MAX_REMEMBERED_CHANNELS && !this.#latest.has(channel)) {
      const oldest = this.#latest.keys().next().value;
      if (oldest !== undefined) this.#latest.delete(oldest);
    }
    this.#latest.set(channel, session);
  }

  readonly #latest = new Map<string, bigint>();
}

/** Channels whose latest session number a SessionTable remembers. */
const MAX_REMEMBERED_CHANNELS = 100_000;
