/**
 * The session protocol (/soulmesh/session/1.0.0), provider side: a payer's signed SessionRequest is checked
 * against this node (provider, chain, escrow, prices), the clock, the agent and persona on chain and the
 * payer's escrow, then the engine session opens under the request's EIP-712 digest as its id.
 *
 * Refusals come two ways, as the wire defines them: a request this node could never accept as written
 * (another provider or escrow, a forged signature, an expiry out of range, prices below ours) is thrown as a
 * ProtocolError; a refusal the payer can act on without changing the request's terms (pick another persona
 * or provider, top up the escrow) is answered as SessionRejected.
 */
import { randomBytes } from "node:crypto";
import { getAddress, getBytes } from "ethers";
import { sessionKeyOf, type VoucherBook } from "../billing/voucher-book.js";
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
  PersonaUnavailableError,
  ProtocolError,
  SessionExpiredError,
  verifySessionRequest,
  type SessionAccepted,
  type SessionOpen,
  type SessionRejected,
} from "../../sdk/protocol/index.js";
import { NO_ADAPTER, ProviderSession, type ChainClock, type ProviderChainView, type SessionTable } from "./sessions.js";

/** Seconds a new session must still have before its expiry: less is not worth a turn. */
export const MIN_SESSION_SECONDS = 60;

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
 * @example
 * const open = sessionOpener({ engine, book, chain, clock, table, provider, escrow, prices, onOpened })
 * await handleProtocol(libp2p, "session", { handler: (request, { signal }) => open(request, signal) })
 */
export function sessionOpener(
  ctx: SessionOpenContext,
): (open: SessionOpen, signal: AbortSignal) => Promise<SessionAccepted | SessionRejected> {
  // Opens in flight by session id: a client retrying a slow open (an adapter download) joins the first.
  const pending = new Map<string, Promise<SessionAccepted | SessionRejected>>();

  return async (open, signal) => {
    checkAddressing(open, ctx);
    const sessionId = hashSessionRequest(open.request).toLowerCase();
    const accepted: SessionAccepted = { type: "session.accepted", sessionId, expiry: open.request.expiry };
    if (ctx.table.get(sessionId) !== undefined) return accepted;
    const running = pending.get(sessionId);
    if (running !== undefined) return running;
    const attempt = openChecked(open, sessionId, ctx, signal)
      .then(() => accepted)
      .catch((err: unknown): SessionRejected => {
        if (!(err instanceof Refusal)) throw err;
        return { type: "session.rejected", code: err.error.name, message: err.error.message, retryable: err.error.retryable };
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

async function openChecked(open: SessionOpen, sessionId: string, ctx: SessionOpenContext, signal: AbortSignal): Promise<void> {
  const { request } = open;
  const payer = getAddress(request.payer);
  const agentId = BigInt(request.agentId);
  const personaId = BigInt(request.personaId);
  const sessionKey = sessionKeyOf({ payer, provider: ctx.provider, agentId, session: BigInt(request.session) });

  // Every read at once: the checks below then run in the wire's order on values already here.
  const read = <T>(p: Promise<T>): Promise<T> => p.catch((err: unknown) => {
    signal.throwIfAborted();
    throw new InternalError("The provider could not read the chain; retry later.", { cause: err });
  });
  const [now, lifetime, agentPersona, persona, deposit, outstanding, previous] = await Promise.all([
    read(ctx.chain.now({ signal })),
    read(ctx.chain.maxVoucherLifetime({ signal })),
    read(ctx.chain.agentPersonaOf(agentId, { signal })),
    read(ctx.chain.personaOf(personaId, { signal })),
    read(ctx.chain.depositOf(payer, { signal })),
    read(ctx.book.outstanding({ signal })),
    read(ctx.book.get(sessionKey, { signal })),
  ]);
  ctx.clock.record(now);

  // 2. expiry
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

  // 4. agent and persona
  if (agentPersona === undefined) throw new Refusal(new PersonaUnavailableError(`Agent ${agentId} does not exist on chain.`));
  if (agentPersona !== personaId) {
    throw new Refusal(new PersonaUnavailableError(`Agent ${agentId} was minted from persona ${agentPersona}, not ${personaId}.`));
  }
  if (persona === undefined) throw new Refusal(new PersonaUnavailableError(`Persona ${personaId} does not exist on chain.`));
  const adapter = persona.adapterSha256 === NO_ADAPTER ? undefined : persona.adapterSha256;
  if (adapter !== undefined && open.adapterCid === undefined) {
    throw new Refusal(
      new PersonaUnavailableError(`Persona ${personaId} has a LoRA adapter but the request carries no adapter CID to fetch it from.`),
    );
  }

  // 5. escrow: what the payer has left once what it already owes this provider is settled.
  const owed = outstanding.filter((c) => getAddress(c.payer) === payer).reduce((sum, c) => sum + c.providerAmount, 0n);
  const cap = BigInt(request.spendingCap);
  if (deposit - owed < cap) {
    throw new Refusal(
      new InsufficientEscrowError(
        `The payer's escrow holds ${deposit}, of which ${owed} is owed to this provider unsettled; the spending cap ${cap} ` +
          `needs more. Deposit more or lower the cap.`,
      ),
    );
  }
  if (ctx.table.byKey(sessionKey) !== undefined) {
    throw new InvalidMessageError(
      `Session ${request.session} of this payer and agent is already open here under another request; number a new ` +
        `session with nextSessionNumber.`,
    );
  }

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
  ctx.table.add(session);
  ctx.onOpened(session);
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
