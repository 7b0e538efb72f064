/**
 * The session protocol (/soulmesh/session/1.0.0), provider side: a payer's signed SessionRequest is checked
 * against this node (provider, chain, escrow, prices), the clock, the payer's lane with this provider, the
 * agent and persona on chain and the royalty and fee it signs, then the engine session opens under the
 * request's EIP-712 digest as its id.
 *
 * The money rule: what this node may still be owed by a payer never exceeds the payer's lane with it. A new
 * session's spending cap must fit in the lane beside what the payer owes unsettled (full cost) and what its
 * other open sessions may still run up (cap minus vouched), so that one lane cannot back two sessions' caps;
 * a payer keeps at most MAX_SESSIONS_PER_PAYER sessions open; and a lane being released before the session's
 * vouchers could settle backs nothing. The signature is checked first and the lane is the one chain read
 * before any other work, so a key with nothing committed here costs one cached read.
 *
 * Session numbers: a channel (payer, provider, agent) settles only its latest session, so a session numbered
 * at or below one this node has seen (opened here, or vouched in the book) or the escrow has settled on the
 * channel is refused with SessionNumberTooLowError and the latest number (attack 8 of issue 14: two chats of
 * a channel alternating as "latest" would have this node serve turns whose vouchers it must refuse). And when
 * a session opens, the channel's older open sessions serve no more turns (SessionSupersededError): each is
 * removed and settled once what it served is vouched.
 *
 * Closing: `session.close` from the peer that opened a session (and only from it) ends it the same way: no
 * more turns, its totals answered as `session.closed`, removed and settled at once when fully vouched, else
 * once the voucher for exactly the served totals comes (node/p2p/voucher.ts).
 *
 * Refusals come two ways, as the wire defines them: a request this node could never accept as written
 * (another provider or escrow, a forged signature, an expiry out of range, prices, royalty or fee below what
 * applies) is thrown as a ProtocolError; a refusal the payer can act on without changing the request's terms
 * (pick another persona or provider, commit more to the lane, close a session) is answered as SessionRejected.
 */
import { randomBytes } from "node:crypto";
import { getAddress, getBytes } from "ethers";
import { channelKeyOf, sessionKeyOf, type VoucherBook } from "../billing/voucher-book.js";
import {
  AdapterBaseMismatchError,
  AdapterNotFoundError,
  AdapterTooLargeError,
  HashMismatchError,
  ModelNotServedError,
  type InferenceEngine,
} from "../engine/index.js";
import {
  hashSessionRequest,
  InsufficientEscrowError,
  InternalError,
  InvalidMessageError,
  InvalidSignatureError,
  NotSessionOpenerError,
  PersonaUnavailableError,
  ProtocolError,
  ProviderBusyError,
  SessionExpiredError,
  SessionNotFoundError,
  SessionNumberTooLowError,
  verifySessionRequest,
  type SessionAccepted,
  type SessionClose,
  type SessionClosed,
  type SessionOpen,
  type SessionRejected,
} from "../../sdk/protocol/index.js";
import {
  abortable,
  NO_ADAPTER,
  ProviderSession,
  type ChainClock,
  type Lane,
  type ProviderChainView,
  type RateSchedule,
  type SessionTable,
} from "./sessions.js";

/** Seconds a new session must still have before its expiry: less is not worth a turn. */
export const MIN_SESSION_SECONDS = 60;

/**
 * Open sessions one payer may hold here. Each reserves its cap against the payer's lane and may carry one
 * served, unpaid turn; a bound keeps one payer from holding many engine sessions (and their KV state) open.
 * Four covers a chat, its memory-maintenance calls and a second device.
 */
export const MAX_SESSIONS_PER_PAYER = 4;

/**
 * A lane whose release completes within this many seconds after a session's expiry cannot back the session:
 * the provider settles at session close or on its timer, which must still find the funds there.
 */
export const LANE_RELEASE_MARGIN_SECONDS = 600;

/** How long a lane reading serves other opens of the same payer, and how many payers are remembered. */
const LANE_CACHE_MS = 1_000;
const LANE_CACHE_ENTRIES = 10_000;

/** What the session protocol needs of the provider. */
export interface SessionOpenContext {
  engine: InferenceEngine;
  book: VoucherBook;
  chain: ProviderChainView;
  clock: ChainClock;
  table: SessionTable;
  /** This provider's address, checksummed. */
  provider: string;
  escrow: { chainId: bigint; address: string };
  prices: () => { input: bigint; output: bigint };
  onOpened: (session: ProviderSession) => void;
  /**
   * Removes an ending session that owes nothing (closed by its payer, or superseded by a newer one of its
   * channel) and has it settled: the provider's close(). Default: removed from the table only.
   */
  finish?: (session: ProviderSession) => void;
}

/** A business refusal, answered as SessionRejected instead of thrown. */
class Refusal {
  constructor(readonly error: ProtocolError) {}
}

/**
 * The session protocol's handler: answers SessionAccepted, or SessionRejected for a refusal the payer can act
 * on; throws a ProtocolError for a request that cannot be accepted as written. Opening the same request again
 * (or while its first open is still running) is answered like the first: accepted, with the same id.
 *
 * `peer` (the Noise-authenticated remote peer) is recorded on the session it opens: the one that may close it.
 *
 * @example
 * const open = sessionOpener({ engine, book, chain, clock, table, provider, escrow, prices, onOpened })
 * await handleProtocol(libp2p, "session", { handler: (request, { peer, signal }) => open(request, signal, peer) })
 */
export function sessionOpener(
  ctx: SessionOpenContext,
): (open: SessionOpen, signal: AbortSignal, peer?: { toString(): string }) => Promise<SessionAccepted | SessionRejected> {
  // Opens in flight by session id: a client retrying a slow open (an adapter download) joins the first.
  const pending = new Map<string, Promise<SessionAccepted | SessionRejected>>();

  const lanes = new LaneReader(ctx.chain, ctx.provider);
  const reservations = new Reservations();

  return async (open, signal, peer) => {
    checkAddressing(open, ctx);
    const sessionId = hashSessionRequest(open.request).toLowerCase();
    const accepted: SessionAccepted = { type: "session.accepted", sessionId, expiry: open.request.expiry };
    if (ctx.table.get(sessionId) !== undefined) return accepted;
    const running = pending.get(sessionId);
    if (running !== undefined) return running;
    const attempt = openChecked(open, sessionId, ctx, lanes, reservations, signal, peer?.toString())
      .then(() => accepted)
      .catch((err: unknown): SessionRejected => {
        if (!(err instanceof Refusal)) throw err;
        const { error } = err;
        return {
          type: "session.rejected",
          code: error.name,
          message: error.message,
          retryable: error.retryable,
          ...(error instanceof SessionNumberTooLowError && { latestSession: error.latestSession.toString() }),
        };
      })
      .finally(() => pending.delete(sessionId));
    pending.set(sessionId, attempt);
    return attempt;
  };
}

/** Step 1: the request is addressed to this provider, on this escrow, and signed by its payer. */
function checkAddressing(open: SessionOpen, ctx: SessionOpenContext): void {
  const { request } = open;
  if (getAddress(request.provider) !== ctx.provider) {
    throw new InvalidMessageError(`The session request names provider ${request.provider}; this provider is ${ctx.provider}.`);
  }
  if (BigInt(request.chainId) !== ctx.escrow.chainId || getAddress(request.escrow) !== ctx.escrow.address) {
    throw new InvalidMessageError(
      `The session request is for escrow ${request.escrow} on chain ${request.chainId}; this provider settles on ` +
        `${ctx.escrow.address} on chain ${ctx.escrow.chainId}.`,
    );
  }
  if (!verifySessionRequest(request, open.signature)) {
    throw new InvalidSignatureError(`The session request's signature is not its payer's (${request.payer}).`);
  }
}

async function openChecked(
  open: SessionOpen,
  sessionId: string,
  ctx: SessionOpenContext,
  lanes: LaneReader,
  reservations: Reservations,
  signal: AbortSignal,
  peer: string | undefined,
): Promise<void> {
  const { request } = open;
  const payer = getAddress(request.payer);
  const agentId = BigInt(request.agentId);
  const personaId = BigInt(request.personaId);
  const sessionKey = sessionKeyOf({ payer, provider: ctx.provider, agentId, session: BigInt(request.session) });
  const read = <T>(p: Promise<T>): Promise<T> => p.catch((err: unknown) => {
    signal.throwIfAborted();
    throw new InternalError("The provider could not read the chain; retry later.", { cause: err });
  });

  // 2. expiry, on the cached chain clock and the escrow's immutable voucher lifetime
  const [now, lifetime] = await Promise.all([read(ctx.clock.now({ signal })), read(ctx.chain.maxVoucherLifetime({ signal }))]);
  const expiry = BigInt(request.expiry);
  if (expiry <= BigInt(now + MIN_SESSION_SECONDS)) {
    throw new SessionExpiredError(
      `The session request expires at ${expiry}; chain time is ${now} and a session needs more than ${MIN_SESSION_SECONDS} s.`,
    );
  }
  if (expiry > BigInt(now) + lifetime) {
    throw new InvalidMessageError(
      `The session request's expiry ${expiry} is too far: the escrow settles vouchers expiring by ${BigInt(now) + lifetime} ` +
        `(chain time plus its maxVoucherLifetime of ${lifetime} s).`,
    );
  }

  // 3. prices
  const ours = ctx.prices();
  const input = BigInt(request.priceInputPerMillion);
  const output = BigInt(request.priceOutputPerMillion);
  if (input < ours.input || output < ours.output) {
    throw new InvalidMessageError(
      `The session request prices ${input}/${output} per million input/output tokens; this provider charges ` +
        `${ours.input}/${ours.output}. Ask for a new quote.`,
    );
  }

  // 4. the payer's lane with this provider: the one chain read before anything else, so that a key with no
  // money here costs this node one cached read and nothing more.
  const lane = await read(lanes.read(payer, signal));
  const cap = BigInt(request.spendingCap);
  if (lane.amount === 0n || cap === 0n) {
    throw new Refusal(
      new InsufficientEscrowError(
        `The payer has committed nothing to this provider (${ctx.provider})${cap === 0n ? ", and the spending cap is zero" : ""}. ` +
          `Commit funds to this provider's lane (the escrow's commit or depositAndCommit) and open with a positive cap.`,
      ),
    );
  }
  if (lane.releaseAt !== 0n && lane.releaseAt <= expiry + BigInt(LANE_RELEASE_MARGIN_SECONDS)) {
    throw new Refusal(
      new InsufficientEscrowError(
        `The payer's lane with this provider is being released at ${lane.releaseAt}, before this session's vouchers ` +
          `(expiring at ${expiry}) could all be settled. Cancel the release (or commit again), or open a session that ` +
          `expires more than ${LANE_RELEASE_MARGIN_SECONDS} s before the release.`,
      ),
    );
  }
  // The number, against what this node knows without another chain read: sessions asked for here and the
  // book's unsettled vouchers of the channel (in memory). The escrow's settled session is read with the persona.
  const channel = channelKeyOf({ payer, provider: ctx.provider, agentId });
  const number = BigInt(request.session);
  let latest = ctx.table.latestSession(channel);
  for (const v of ctx.book.outstandingOf(payer).vouched.values()) {
    if (v.agentId === agentId && v.session > latest) latest = v.session;
  }
  if (number <= latest) throw new Refusal(numberTooLow(number, latest));
  ctx.table.seeSession(channel, number);
  if (ctx.table.byKey(sessionKey) !== undefined) {
    throw new InvalidMessageError(
      `Session ${request.session} of this payer and agent is already open here under another request; number a new ` +
        `session with nextSessionNumber.`,
    );
  }
  // Checked and reserved with no await in between: two opens of one payer cannot both take the same funds.
  const open_ = ctx.table.ofPayer(payer);
  const opening = reservations.get(payer) ?? [];
  if (open_.length + opening.length >= MAX_SESSIONS_PER_PAYER) {
    throw new Refusal(
      new ProviderBusyError(
        `The payer has ${open_.length + opening.length} sessions open or opening here, the most one payer may: ` +
          `${MAX_SESSIONS_PER_PAYER}. Close one (or let it expire) first.`,
      ),
    );
  }
  const owed = ctx.book.outstandingOf(payer).amount;
  const reserved = open_.reduce((sum, s) => sum + s.unvouchedCap, 0n) + opening.reduce((sum, c) => sum + c, 0n);
  if (owed + reserved + cap > lane.amount) {
    const free = lane.amount > owed + reserved ? lane.amount - owed - reserved : 0n;
    throw new Refusal(
      new InsufficientEscrowError(
        `The payer's lane with this provider holds ${lane.amount}: ${owed} is owed unsettled and ${reserved} is reserved ` +
          `by its other open sessions, which leaves ${free} for a spending cap of ${cap}. Commit more to this provider ` +
          `(${ctx.provider}), lower the cap, or close other sessions first.`,
      ),
    );
  }
  const reservation = reservations.reserve(payer, cap);
  try {
    await openReserved(open, sessionId, sessionKey, { payer, agentId, personaId, expiry, channel, peer }, ctx, read, signal);
  } finally {
    reservation.release();
  }
}

/** Steps 5 on: the persona and the rates, then the engine, for a request whose funds are reserved. */
async function openReserved(
  open: SessionOpen,
  sessionId: string,
  sessionKey: string,
  ids: { payer: string; agentId: bigint; personaId: bigint; expiry: bigint; channel: string; peer: string | undefined },
  ctx: SessionOpenContext,
  read: <T>(p: Promise<T>) => Promise<T>,
  signal: AbortSignal,
): Promise<void> {
  const { request } = open;
  const { payer, agentId, personaId, expiry, channel } = ids;
  const [agentPersona, persona, royalty, fee, previous, settled] = await Promise.all([
    read(ctx.chain.agentPersonaOf(agentId, { signal })),
    read(ctx.chain.personaOf(personaId, { signal })),
    read(ctx.chain.royaltyScheduleOf(personaId, { signal })),
    read(ctx.chain.protocolFee({ signal })),
    read(ctx.book.get(sessionKey, { signal })),
    read(ctx.chain.settledSessionOf(payer, ctx.provider, agentId, { signal })),
  ]);

  // 4b. the number, against the escrow's settled session of the channel (after a restart, all this node knows
  // of the channel's settled past)
  ctx.table.seeSession(channel, settled);
  if (BigInt(request.session) <= settled) throw new Refusal(numberTooLow(BigInt(request.session), ctx.table.latestSession(channel)));

  // 5. agent and persona
  if (agentPersona === undefined) throw new Refusal(new PersonaUnavailableError(`Agent ${agentId} does not exist on chain.`));
  if (agentPersona !== personaId) {
    throw new Refusal(new PersonaUnavailableError(`Agent ${agentId} was minted from persona ${agentPersona}, not ${personaId}.`));
  }
  if (persona === undefined || royalty === undefined) {
    throw new Refusal(new PersonaUnavailableError(`Persona ${personaId} does not exist on chain.`));
  }
  const adapter = persona.adapterSha256 === NO_ADAPTER ? undefined : persona.adapterSha256;
  if (adapter !== undefined && open.adapterCid === undefined) {
    throw new Refusal(
      new PersonaUnavailableError(`Persona ${personaId} has a LoRA adapter but the request carries no adapter CID to fetch it from.`),
    );
  }

  // 6. royalty and fee: the escrow refuses a voucher below the rate in force when it settles, so the signed
  // rates must cover the rate in force now and any rise that takes effect while the session's vouchers live.
  checkRate("royalty", `persona ${personaId}'s royalty per million tokens`, BigInt(request.royaltyPerMillion), royalty, expiry);
  checkRate("fee", "the protocol fee in basis points", BigInt(request.feeBps), fee, expiry);

  // The model is checked by the engine, after the escrow: a payer without funds cannot make this node
  // download adapters.
  const adapters = adapter === undefined ? [] : [{ cid: open.adapterCid!, sha256: adapter }];
  try {
    await ctx.engine.openSession({
      sessionId,
      modelSha256: persona.baseModelHash,
      adapters,
      baseModelHash: persona.baseModelHash,
      stateKey: open.stateKey === undefined ? randomBytes(32) : getBytes(open.stateKey),
      signal,
    });
  } catch (err) {
    signal.throwIfAborted();
    throw engineRefusal(err, personaId, persona.baseModelHash);
  }
  if (signal.aborted || ctx.table.byKey(sessionKey) !== undefined) {
    // Stopped, or a concurrent open of the same session number won while the adapter was fetched.
    await ctx.engine.closeSession(sessionId).catch(() => {});
    signal.throwIfAborted();
    throw new InvalidMessageError(`Session ${request.session} of this payer and agent is already open here under another request.`);
  }
  // After a restart the book may already hold this session's vouchers: totals go on from them, or the
  // client's next voucher would read as a decrease and be refused.
  const start = previous === undefined
    ? { inputTokens: 0n, outputTokens: 0n }
    : { inputTokens: previous.voucher.inputTokens, outputTokens: previous.voucher.outputTokens };
  const session = new ProviderSession(sessionId, sessionKey, request, persona.baseModelHash, adapter === undefined ? [] : [adapter], start);
  session.openedBy = ids.peer;
  // The channel's older sessions serve no more turns: once this one's vouchers settle, theirs cannot.
  const finish = ctx.finish ?? ((s: ProviderSession) => void ctx.table.delete(s));
  for (const older of ctx.table.ofPayer(payer)) {
    if (older.agentId === agentId && older.session < session.session) older.end("superseded", finish);
  }
  ctx.table.add(session);
  ctx.onOpened(session);
}

function numberTooLow(number: bigint, latest: bigint): SessionNumberTooLowError {
  return new SessionNumberTooLowError(
    `Session ${number} is at or below session ${latest}, the latest this provider has seen or settled on the channel ` +
      `(payer, provider, agent): number the session above ${latest}.`,
    latest,
  );
}

/** What the session protocol's close needs of the provider. */
export interface SessionCloseContext {
  table: SessionTable;
  /** Removes a session that owes nothing and has it settled (the provider's close()). */
  finish: (session: ProviderSession) => void;
}

/**
 * The session protocol's close: from the peer that opened the session only (else NotSessionOpenerError, and
 * nothing changes), it ends the session (no more turns), waits for a running turn's tokens to be counted,
 * and answers the session's served and vouched totals. A session that owes nothing is removed and settled at
 * once; one with an unpaid turn stays until the voucher for exactly its served totals arrives.
 *
 * @example
 * const close = sessionCloser({ table, finish: (s) => void protocols.close(s.sessionId) })
 * const closed = await close({ type: "session.close", sessionId }, connection.remotePeer, signal)
 * @throws SessionNotFoundError when no such session is open; NotSessionOpenerError; the signal's reason.
 */
export function sessionCloser(
  ctx: SessionCloseContext,
): (close: SessionClose, peer: { toString(): string }, signal: AbortSignal) => Promise<SessionClosed> {
  return async (close, peer, signal) => {
    const session = ctx.table.get(close.sessionId);
    if (session === undefined) throw new SessionNotFoundError(`No open session ${close.sessionId} on this provider.`);
    if (session.openedBy === undefined || session.openedBy !== peer.toString()) {
      throw new NotSessionOpenerError(`Session ${close.sessionId} was opened by another peer; only that peer may close it.`);
    }
    // No turn starts from here on; one running ends (the client aborted it) and is counted first.
    session.end("closed", ctx.finish);
    const running = session.turnDone;
    if (running !== undefined) await abortable(running.catch(() => {}), signal);
    const answer: SessionClosed = {
      type: "session.closed",
      sessionId: session.sessionId,
      served: { inputTokens: session.served.inputTokens.toString(), outputTokens: session.served.outputTokens.toString() },
      vouched: { inputTokens: session.vouched.inputTokens.toString(), outputTokens: session.vouched.outputTokens.toString() },
    };
    session.finishIfPaid();
    return answer;
  };
}

/** The signed rate must be at least the one in force, and at least any rise that takes effect by `expiry`. */
function checkRate(name: string, what: string, signed: bigint, schedule: RateSchedule, expiry: bigint): void {
  if (signed < schedule.current) {
    throw new InvalidMessageError(
      `The session request signs ${name} ${signed}, below ${what} in force: ${schedule.current}. Sign at least that.`,
    );
  }
  if (schedule.effectiveAt !== 0n && schedule.effectiveAt <= expiry && schedule.next > signed) {
    throw new InvalidMessageError(
      `The session request signs ${name} ${signed}, but ${what} rises to ${schedule.next} at ${schedule.effectiveAt}, ` +
        `before the session expires at ${expiry}. Sign ${schedule.next}, or open a session that expires before the rise.`,
    );
  }
}

/**
 * One chain read of a payer's lane, shared: concurrent opens of one payer wait for the same call, and a reading
 * younger than LANE_CACHE_MS is reused, so that replayed opens of one key cost one read a second.
 */
class LaneReader {
  readonly #cache = new Map<string, { at: number; lane: Promise<Lane> }>();
  constructor(
    readonly chain: ProviderChainView,
    readonly provider: string,
  ) {}

  read(payer: string, signal: AbortSignal): Promise<Lane> {
    const hit = this.#cache.get(payer);
    if (hit !== undefined && Date.now() - hit.at < LANE_CACHE_MS) return abortable(hit.lane, signal);
    if (this.#cache.size >= LANE_CACHE_ENTRIES) this.#sweep();
    const lane = this.chain.laneOf(payer, this.provider);
    const entry = { at: Date.now(), lane };
    this.#cache.set(payer, entry);
    // A failed read is not kept: the next open reads again.
    lane.catch(() => this.#cache.get(payer) === entry && this.#cache.delete(payer));
    return abortable(lane, signal);
  }

  #sweep(): void {
    const now = Date.now();
    for (const [payer, entry] of this.#cache) if (now - entry.at >= LANE_CACHE_MS) this.#cache.delete(payer);
    // Still full of fresh readings (a flood of new keys): forget them all rather than grow.
    if (this.#cache.size >= LANE_CACHE_ENTRIES) this.#cache.clear();
  }
}

/** Spending caps of the opens still running (past the lane check, before the table), by payer. */
class Reservations {
  readonly #byPayer = new Map<string, bigint[]>();

  get(payer: string): readonly bigint[] | undefined {
    return this.#byPayer.get(payer);
  }

  reserve(payer: string, cap: bigint): { release(): void } {
    const caps = this.#byPayer.get(payer) ?? [];
    caps.push(cap);
    this.#byPayer.set(payer, caps);
    return {
      release: () => {
        caps.splice(caps.indexOf(cap), 1);
        if (caps.length === 0 && this.#byPayer.get(payer) === caps) this.#byPayer.delete(payer);
      },
    };
  }
}

function engineRefusal(err: unknown, personaId: bigint, model: string): unknown {
  if (err instanceof ModelNotServedError) {
    return new Refusal(new PersonaUnavailableError(`Persona ${personaId} runs on model ${model}, which this provider does not serve.`));
  }
  if (err instanceof AdapterNotFoundError) {
    return new Refusal(new PersonaUnavailableError(`The adapter of persona ${personaId} could not be fetched from its CID.`));
  }
  if (err instanceof HashMismatchError || err instanceof AdapterBaseMismatchError || err instanceof AdapterTooLargeError) {
    return new Refusal(new PersonaUnavailableError(`The adapter of persona ${personaId} cannot be served here: ${err.message}`));
  }
  return new InternalError("The provider could not open the session.", { cause: err });
}
