/**
 * The provider's paid protocols, composed: session open, inference and voucher over one table of open
 * sessions. The daemon (node/provider) serves them next to the quote protocol, listens to the events for
 * its metrics and logs, and hands each closed session's key to the settlement worker.
 *
 * The rule for stream slots: a peer that opened a session here (it pays) is never starved of them by peers
 * that did not. The libp2p peer over which each session opened is remembered until the session closes, and
 * each protocol keeps half of its slots for such peers (handler.ts), besides its limit per peer.
 */
import type { PeerId } from "@libp2p/interface";
import { getAddress, type Signer } from "ethers";
import type { Libp2p } from "libp2p";
import type { EscrowRef } from "../../sdk/chain/voucher.js";
import { TypedEventTarget } from "../../sdk/events.js";
import { errorFromWire } from "../../sdk/protocol/index.js";
import type { VoucherBook } from "../billing/voucher-book.js";
import { SessionNotFoundError as EngineSessionNotFoundError, type InferenceEngine } from "../engine/index.js";
import { ProviderProtocolsConfigError } from "./errors.js";
import { handleProtocol, type HandleProtocolOptions, type ProtocolService, type StreamRefusal } from "./handler.js";
import { inferenceHandler, type ServedTurn } from "./inference.js";
import { MAX_SESSIONS_PER_PAYER, sessionCloser, sessionOpener } from "./session.js";
import { ChainClock, SessionTable, type ProviderChainView, type ProviderSession, type ProviderSessionInfo } from "./sessions.js";
import { voucherHandler } from "./voucher.js";

export type { ProviderChainView, ProviderSessionInfo } from "./sessions.js";
export { chainViewOf } from "./sessions.js";

/** The longest a turn may stream unless `handlerOptions.responseTimeoutMs` says otherwise: 30 minutes. */
export const INFERENCE_RESPONSE_TIMEOUT_MS = 30 * 60_000;

export interface ProviderProtocolsOptions {
  libp2p: Libp2p;
  engine: InferenceEngine;
  book: VoucherBook;
  chain: ProviderChainView;
  /** The provider address's signer; signs receipts. */
  signer: Signer;
  /** { chainId, address } of the InferenceEscrow. */
  escrow: EscrowRef;
  /** The provider's current prices; a session's prices must be ≥ these. */
  prices: () => { input: bigint; output: bigint };
  /** Seconds before expiry at which a session is closed by closeExpired(); default 30. */
  expiryMarginSeconds?: number;
  /**
   * How old a chain-time reading may be before a turn's expiry check reads the chain again; default 5 s.
   * Chain time runs with wall time, so turns skip the RPC round trip; 0 reads the chain on every turn (tests
   * that move the chain's clock).
   */
  chainTimeMaxAgeMs?: number;
  /**
   * Passed to handleProtocol for each protocol (timeouts, concurrency, per-peer limits, the reserve for peers
   * with an open session), optional; handler.ts documents the defaults.
   */
  handlerOptions?: Pick<
    HandleProtocolOptions<"session">,
    | "maxConcurrentStreams"
    | "maxStreamsPerPeer"
    | "reservedForPriority"
    | "firstByteTimeoutMs"
    | "requestTimeoutMs"
    | "responseTimeoutMs"
  >;
}

export interface ProviderProtocolEvents {
  "session:opened": CustomEvent<{ sessionId: string; payer: string; agentId: bigint; personaId: bigint }>;
  "session:closed": CustomEvent<{ sessionId: string; sessionKey: string; reason: SessionCloseReason }>;
  /** A turn the provider counted; `usage` is the wire's (inputTokens counts the whole prompt, cached part included). */
  "turn:served": CustomEvent<{ sessionId: string } & Omit<ServedTurn, "session">>;
  "request:failed": CustomEvent<{ protocol: "session" | "inference" | "voucher"; error: unknown }>;
  "voucher:accepted": CustomEvent<{ sessionId: string; sessionKey: string; inputTokens: bigint; outputTokens: bigint }>;
  /** A stream answered ProviderBusyError before its request was read (handler.ts `stream:refused`). */
  "stream:refused": CustomEvent<{ protocol: PaidProtocol; peer: PeerId; reason: StreamRefusal }>;
}

type PaidProtocol = "session" | "inference" | "voucher";

/** Why a session closed: its expiry came, the engine dropped it idle, the node stopped, or close() was called. */
export type SessionCloseReason = "expired" | "idle" | "stopped" | "closed";

/**
 * Which libp2p peers have open sessions here: the peers over which each session's open was answered accepted,
 * until the session closes. The open's signature proved a payer with a funded lane stands behind the peer, so
 * its streams may take the slots kept for paying clients. A repeated open over another peer adds that peer; it
 * takes nothing from the first.
 *
 * @example
 * const peers = new SessionPeers()
 * peers.bind(connection.remotePeer, sessionId)
 * peers.has(connection.remotePeer) // true until peers.unbind(sessionId)
 */
export class SessionPeers {
  readonly #byPeer = new Map<string, Set<string>>();
  readonly #bySession = new Map<string, Set<string>>();

  /** Whether `peer` has at least one open session here. */
  has(peer: PeerId | string): boolean {
    return this.#byPeer.has(peer.toString());
  }

  /** Peers with an open session, for status and tests. */
  get size(): number {
    return this.#byPeer.size;
  }

  /** Records that `sessionId` was opened over `peer`. */
  bind(peer: PeerId | string, sessionId: string): void {
    const id = sessionId.toLowerCase();
    const key = peer.toString();
    let peers = this.#bySession.get(id);
    if (peers === undefined) this.#bySession.set(id, (peers = new Set()));
    peers.add(key);
    let sessions = this.#byPeer.get(key);
    if (sessions === undefined) this.#byPeer.set(key, (sessions = new Set()));
    sessions.add(id);
  }

  /** Forgets `sessionId` (it closed): its peers keep standing only through their other open sessions. */
  unbind(sessionId: string): void {
    const id = sessionId.toLowerCase();
    for (const key of this.#bySession.get(id) ?? []) {
      const sessions = this.#byPeer.get(key);
      sessions?.delete(id);
      if (sessions?.size === 0) this.#byPeer.delete(key);
    }
    this.#bySession.delete(id);
  }
}

/**
 * The session, inference and voucher protocols being served, with their open sessions. Created by
 * {@link serveProviderProtocols}.
 *
 * @example
 * const protocols = await serveProviderProtocols({ libp2p, engine, book, chain, signer, escrow, prices })
 * protocols.addEventListener("session:closed", (e) => void worker.closeSession(e.detail.sessionKey).catch(log))
 * setInterval(() => void protocols.closeExpired(), 10_000)
 */
export class ProviderProtocols extends TypedEventTarget<ProviderProtocolEvents> {
  readonly #engine: InferenceEngine;
  readonly #clock: ChainClock;
  readonly #table: SessionTable;
  readonly #marginSeconds: bigint;
  readonly #running: Set<Promise<unknown>>;
  readonly #services: ProtocolService[] = [];
  /** The peers with an open session here, whose streams may take the slots kept for paying clients. */
  readonly peers = new SessionPeers();
  readonly #onEngineClosed = (event: Event): void => {
    const { sessionId } = (event as CustomEvent<{ sessionId: string }>).detail;
    const session = this.#table.get(sessionId);
    // Sessions we close ourselves leave the table first, so only the engine's own (idle) closes land here.
    if (session !== undefined) this.#drop(session, "idle");
  };
  #stopped: Promise<void> | undefined;

  /** @internal Use {@link serveProviderProtocols}. */
  constructor(engine: InferenceEngine, clock: ChainClock, table: SessionTable, marginSeconds: number, running: Set<Promise<unknown>>) {
    super();
    this.#engine = engine;
    this.#clock = clock;
    this.#table = table;
    this.#marginSeconds = BigInt(marginSeconds);
    this.#running = running;
    engine.addEventListener("session:closed", this.#onEngineClosed);
  }

  /** Open sessions, for status and metrics. */
  sessions(): ProviderSessionInfo[] {
    return this.#table.values().map((s) => s.info());
  }

  /**
   * Closes sessions whose expiry (minus the margin) passed on chain time `now` (read from the chain when
   * not given), and those the engine closed as idle; returns how many. A turn running on an expiring session
   * finishes first (the engine closes a session after its pending turns).
   *
   * @example
   * const closed = await protocols.closeExpired()
   */
  async closeExpired(now?: number): Promise<number> {
    const chainNow = BigInt(now ?? (await this.#clock.read()));
    let closed = 0;
    for (const session of this.#table.values()) {
      if (!this.#engineHas(session)) {
        if (this.#drop(session, "idle")) closed++;
      } else if (chainNow >= session.expiry - this.#marginSeconds) {
        if (await this.#close(session, "expired")) closed++;
      }
    }
    return closed;
  }

  /**
   * Closes one open session now (its turn running, if any, finishes first), as when its payer is done with
   * it: it then no longer counts against the payer's open sessions and lane. False when it was not open.
   *
   * @example
   * await protocols.close(sessionId)
   */
  async close(sessionId: string): Promise<boolean> {
    const session = this.#table.get(sessionId);
    return session === undefined ? false : this.#close(session, "closed");
  }

  /**
   * Unregisters the three protocols and aborts running turns; resolves once they have ended, their generated
   * tokens counted as served. Every open session is then reported closed with reason "stopped" (so that its
   * voucher gets settled) but left open in the engine: the engine's own stop() saves its state, which a
   * client reopening the same request after a restart resumes.
   *
   * @example
   * await protocols.stop()
   */
  stop(): Promise<void> {
    this.#stopped ??= (async () => {
      await Promise.all(this.#services.map((s) => s.stop().catch(() => {})));
      await Promise.allSettled([...this.#running]);
      this.#engine.removeEventListener("session:closed", this.#onEngineClosed);
      for (const session of this.#table.values()) this.#drop(session, "stopped");
    })();
    return this.#stopped;
  }

  /** @internal */
  _serve(service: ProtocolService, protocol: PaidProtocol): void {
    this.#services.push(service);
    service.addEventListener("request:failed", (event) => {
      const { error } = (event as CustomEvent<{ error: unknown }>).detail;
      this._failed(protocol, error);
    });
    service.addEventListener("stream:refused", (event) => {
      const { peer, reason } = (event as CustomEvent<{ peer: PeerId; reason: StreamRefusal }>).detail;
      this.dispatchEvent(new CustomEvent("stream:refused", { detail: { protocol, peer, reason } }));
    });
  }

  /** @internal The session open answered accepted over `peer`. */
  _opened(peer: PeerId, sessionId: string): void {
    // The session may have closed meanwhile (expiry, stop): a closed one gives no standing.
    if (this.#table.get(sessionId) !== undefined) this.peers.bind(peer, sessionId);
  }

  /** @internal */
  _failed(protocol: PaidProtocol, error: unknown): void {
    this.dispatchEvent(new CustomEvent("request:failed", { detail: { protocol, error } }));
  }

  #engineHas(session: ProviderSession): boolean {
    try {
      this.#engine.session(session.sessionId);
      return true;
    } catch (err) {
      if (err instanceof EngineSessionNotFoundError) return false;
      throw err;
    }
  }

  async #close(session: ProviderSession, reason: "expired" | "closed"): Promise<boolean> {
    if (!this.#table.delete(session)) return false;
    try {
      await this.#engine.closeSession(session.sessionId);
    } catch (err) {
      if (!(err instanceof EngineSessionNotFoundError)) throw err;
    }
    this.#closed(session, reason);
    return true;
  }

  #drop(session: ProviderSession, reason: "idle" | "stopped"): boolean {
    if (!this.#table.delete(session)) return false;
    this.#closed(session, reason);
    return true;
  }

  #closed(session: ProviderSession, reason: SessionCloseReason): void {
    this.peers.unbind(session.sessionId);
    this.dispatchEvent(
      new CustomEvent("session:closed", { detail: { sessionId: session.sessionId, sessionKey: session.sessionKey, reason } }),
    );
  }
}

/**
 * Serves the session, inference and voucher protocols on `libp2p` over `engine`, `book` and `chain`. The
 * signer must be the book's provider and `escrow` the book's: receipts and vouchers name one provider on one
 * escrow.
 *
 * @example
 * const protocols = await serveProviderProtocols({
 *   libp2p: host.libp2p, engine, book, chain: chainViewOf(connectContracts(deployment, rpc)), signer: wallet,
 *   escrow: { chainId: deployment.chainId, address: deployment.contracts.inferenceEscrow },
 *   prices: () => ({ input: 500_000n, output: 1_500_000n }),
 * })
 * protocols.addEventListener("turn:served", (e) => metrics.tokens.inc(e.detail.outputTokens))
 * await protocols.stop()
 * @throws ProviderProtocolsConfigError when the signer or the escrow is not the book's.
 */
export async function serveProviderProtocols(options: ProviderProtocolsOptions): Promise<ProviderProtocols> {
  const { libp2p, engine, book, chain, signer } = options;
  const provider = getAddress(await signer.getAddress());
  const escrow = { chainId: BigInt(options.escrow.chainId), address: getAddress(options.escrow.address) };
  if (provider !== book.provider) {
    throw new ProviderProtocolsConfigError(`the signer is ${provider} but the voucher book collects for ${book.provider}`);
  }
  if (escrow.chainId !== book.escrow.chainId || escrow.address !== book.escrow.address) {
    throw new ProviderProtocolsConfigError(
      `receipts would be signed for escrow ${escrow.address} on chain ${escrow.chainId} but the voucher book settles on ` +
        `${book.escrow.address} on chain ${book.escrow.chainId}`,
    );
  }
  const table = new SessionTable();
  const clock = new ChainClock(chain, options.chainTimeMaxAgeMs ?? 5_000);
  const running = new Set<Promise<unknown>>();
  const protocols = new ProviderProtocols(engine, clock, table, options.expiryMarginSeconds ?? 30, running);
  const emit = <K extends keyof ProviderProtocolEvents & string>(type: K, detail: ProviderProtocolEvents[K]["detail"]) =>
    protocols.dispatchEvent(new CustomEvent(type, { detail }));

  // A session closed by its payer, or superseded by a newer one of its channel, leaves once it owes nothing:
  // closed as by close(), so that the daemon has it settled at once.
  const finish = (s: ProviderSession): void => {
    protocols.close(s.sessionId).catch((error: unknown) => protocols._failed("session", error));
  };
  const closeSession = sessionCloser({ table, finish });
  const open = sessionOpener({
    engine,
    book,
    chain,
    clock,
    table,
    provider,
    escrow,
    prices: options.prices,
    onOpened: (s) => emit("session:opened", { sessionId: s.sessionId, payer: s.payer, agentId: s.agentId, personaId: s.personaId }),
    finish,
  });
  const infer = inferenceHandler({
    engine,
    table,
    clock,
    signer,
    escrow,
    running,
    onServed: ({ session, ...turn }) => emit("turn:served", { sessionId: session.sessionId, ...turn }),
  });
  const accept = voucherHandler({
    book,
    table,
    onAccepted: (s, totals) => emit("voucher:accepted", { sessionId: s.sessionId, sessionKey: s.sessionKey, ...totals }),
  });

  // Each protocol keeps half its slots (handler.ts's default reserve) for peers with an open session, and
  // serves one peer at most one stream per session it may hold: one turn, then its voucher, at a time.
  const slots = {
    maxStreamsPerPeer: MAX_SESSIONS_PER_PAYER,
    isPriority: (peer: PeerId) => protocols.peers.has(peer),
    ...options.handlerOptions,
  };
  try {
    protocols._serve(
      await handleProtocol(libp2p, "session", {
        ...slots,
        handler: async (request, { peer, signal }) => {
          if (request.type === "session.close") return closeSession(request, peer, signal);
          const answer = await open(request, signal, peer);
          // A refusal is answered, not thrown, but it is a failed request all the same for logs and metrics.
          if (answer.type === "session.rejected") protocols._failed("session", errorFromWire({ ...answer, type: "error" }));
          else protocols._opened(peer, answer.sessionId);
          return answer;
        },
      }),
      "session",
    );
    protocols._serve(
      await handleProtocol(libp2p, "inference", {
        // A long generation on a slow CPU outlasts the control protocols' minute; a stalled client is caught by
        // the stream's backpressure, and a stalled provider by the client's own chunk timeout.
        responseTimeoutMs: INFERENCE_RESPONSE_TIMEOUT_MS,
        ...slots,
        handler: (request, { signal }) => infer(request, signal),
      }),
      "inference",
    );
    protocols._serve(
      await handleProtocol(libp2p, "voucher", { ...slots, handler: (message, { signal }) => accept(message, signal) }),
      "voucher",
    );
  } catch (err) {
    await protocols.stop();
    throw err;
  }
  return protocols;
}
