/**
 * One request, then one or more responses, on a fresh libp2p stream: the shape of every Soulmesh protocol.
 * Frames are length-prefixed JSON (sdk/protocol/codec), checked against the protocol's schema and limits;
 * every failure is answered with a typed ErrorMessage, never by crashing the node.
 *
 * The rule for stream slots: no peer, and no set of peers without business here, can take the slots that
 * paying clients need. Each protocol serves at most `maxConcurrentStreams` streams at once, at most
 * `maxStreamsPerPeer` of them for one peer, and keeps `reservedForPriority` of them for the peers its
 * `isPriority` hook names (the provider's: peers with an open session), so that their turns and vouchers
 * always find a slot. A stream that sends no byte within `firstByteTimeoutMs` is dropped; a stream over a
 * limit is answered ProviderBusyError before a byte of its request is read: at once, or, over its peer's own
 * limit, once `peerSlotWaitMs` passed without one of that peer's streams ending (then it is served).
 */
import type { Connection, PeerId, Stream } from "@libp2p/interface";
import type { Libp2p } from "libp2p";
import type { z } from "zod";
import {
  decodeFrames,
  encodeFrame,
  errorToWire,
  FRAME_LIMITS,
  InternalError,
  MalformedFrameError,
  MAX_CONTROL_FRAME_BYTES,
  PROTOCOL_IDS,
  PROTOCOL_SCHEMAS,
  ProtocolError,
  ProtocolTimeoutError,
  ProviderBusyError,
  type ProtocolName,
} from "../../sdk/protocol/index.js";
import { readStream } from "../../sdk/protocol/stream.js";
import { SoulmeshError } from "../../sdk/errors.js";
import { ProtocolStreamError } from "./errors.js";

// The client half lives in sdk/protocol/stream.ts (the SDK may not import the node); re-exported for callers here.
export { readStream, requestProtocol, streamProtocol, type ReceivedResponseOf, type RequestOptions } from "../../sdk/protocol/stream.js";

type Schemas = typeof PROTOCOL_SCHEMAS;
/** The request a handler of protocol `P` receives, validated (defaults applied). */
export type RequestOf<P extends ProtocolName> = z.output<Schemas[P]["request"]>;
/** What a handler of `P` answers: any response message but an error (errors are thrown). */
export type ResponseOf<P extends ProtocolName> = Exclude<z.input<Schemas[P]["response"]>, { type: "error" }>;

export interface RequestContext {
  /** The remote peer, authenticated by Noise. */
  peer: PeerId;
  connection: Connection;
  /** Aborted when the response deadline passes, the stream dies or the handler is removed. */
  signal: AbortSignal;
}

export type ProtocolRequestHandler<P extends ProtocolName> = (
  request: RequestOf<P>,
  context: RequestContext,
) => Promise<ResponseOf<P>> | AsyncIterable<ResponseOf<P>>;

/** Streams of one protocol served at once, over all peers, unless `maxConcurrentStreams` says otherwise. */
export const DEFAULT_MAX_CONCURRENT_STREAMS = 64;

/**
 * Streams of one protocol served at once for one peer, unless `maxStreamsPerPeer` says otherwise. An honest
 * client has one request of a protocol in flight per session (a turn, then its voucher; one open at a time),
 * and a payer holds at most 4 sessions with a provider (node/p2p/session.ts MAX_SESSIONS_PER_PAYER); without
 * such a bound two peers hold every slot with half-sent frames (attack 5 of issue 14).
 */
export const DEFAULT_MAX_STREAMS_PER_PEER = 4;

/**
 * Time for the first byte of a request, unless `firstByteTimeoutMs` says otherwise. A client writes its
 * request as soon as the stream is open, so a peer silent this long is not sending one; the full-frame
 * deadline (`requestTimeoutMs`) still bounds a request that arrives slowly.
 */
export const DEFAULT_FIRST_BYTE_TIMEOUT_MS = 2_000;

/**
 * How long a stream over its peer's limit waits for one of that peer's slots before it is answered
 * ProviderBusyError, unless `peerSlotWaitMs` says otherwise. A client whose retry races the end of its previous
 * stream is served; a peer flooding past its limit hears "busy" no sooner than this, so that it cannot make the
 * node answer refusals as fast as it can open streams (a retry loop then costs both sides ~8× less CPU).
 */
export const DEFAULT_PEER_SLOT_WAIT_MS = 2_000;

/** Time for the request frame to arrive in full, unless `requestTimeoutMs` says otherwise. */
export const DEFAULT_REQUEST_TIMEOUT_MS = 10_000;

/** Why a stream was refused before its request was read: the peer's own limit, the whole protocol's, or the reserve. */
export type StreamRefusal = "peer-limit" | "capacity" | "reserved";

export interface HandleProtocolOptions<P extends ProtocolName> {
  handler: ProtocolRequestHandler<P>;
  /** Streams of this protocol served at once, over all peers; more are answered ProviderBusyError. Default 64. */
  maxConcurrentStreams?: number;
  /**
   * Streams of this protocol served at once for one peer; more wait up to `peerSlotWaitMs` for one of the peer's
   * slots, unread, then are answered ProviderBusyError. Default 4 ({@link DEFAULT_MAX_STREAMS_PER_PEER} says why).
   */
  maxStreamsPerPeer?: number;
  /** How long a stream over its peer's limit waits for a slot of that peer. Default 2 s ({@link DEFAULT_PEER_SLOT_WAIT_MS} says why). */
  peerSlotWaitMs?: number;
  /**
   * Whether `peer` is one whose streams may take the reserved slots; called once per stream as it opens, so it
   * must be cheap. The provider's says whether the peer has an open session: a client that pays is never
   * starved by peers that do not. Default: no peer is.
   */
  isPriority?: (peer: PeerId) => boolean;
  /**
   * Of `maxConcurrentStreams`, how many only priority peers may take: other peers together hold at most the
   * rest. Default half of `maxConcurrentStreams` when `isPriority` is given, else 0.
   */
  reservedForPriority?: number;
  /** Streams of this protocol open at once per connection (libp2p's own cap, which resets the excess). Default 32. */
  maxInboundStreams?: number;
  /** Time for the first byte of the request. Default 2 s ({@link DEFAULT_FIRST_BYTE_TIMEOUT_MS} says why). */
  firstByteTimeoutMs?: number;
  /** Time for the request frame to arrive in full, from the stream's opening; against slowloris peers. Default 10 s. */
  requestTimeoutMs?: number;
  /** Time for the handler to answer in full. Default 60 s. */
  responseTimeoutMs?: number;
}

/**
 * handleProtocol's options do not fit together (a limit below 1, a reserve as large as the whole capacity):
 * a programming error of the caller, thrown before anything is served.
 */
export class HandleProtocolOptionsError extends SoulmeshError {
  override readonly name = "HandleProtocolOptionsError";
  constructor(protocol: string, reason: string) {
    super(`Cannot serve ${protocol}: ${reason}.`);
  }
}

export interface ProtocolServiceEvents {
  /** A stream was answered with an error (the peer's fault or ours); for logs and metrics. */
  "request:failed": CustomEvent<{ peer: PeerId; protocol: string; error: unknown }>;
  /** A stream was answered ProviderBusyError before its request was read, for `reason`; for logs and metrics. */
  "stream:refused": CustomEvent<{ peer: PeerId; protocol: string; reason: StreamRefusal }>;
}

/**
 * A protocol being served. `stop()` unregisters it and aborts the handlers running.
 *
 * @example
 * const quote = await handleProtocol(host.libp2p, "quote", { handler: async () => myQuote })
 * quote.addEventListener("request:failed", (e) => log(e.detail.error))
 * await quote.stop()
 */
export class ProtocolService extends EventTarget {
  /** Streams being served now. */
  active = 0;
  /** Of those, the streams of peers that are not priority peers (they may not take the reserved slots). */
  activeUnprioritized = 0;
  /** Streams being served now, by peer (its string form); peers with none are not listed. */
  readonly activeByPeer = new Map<string, number>();
  readonly #stopping = new AbortController();

  constructor(
    readonly libp2p: Libp2p,
    readonly protocol: string,
  ) {
    super();
  }

  get signal(): AbortSignal {
    return this.#stopping.signal;
  }

  async stop(): Promise<void> {
    this.#stopping.abort(new ProtocolTimeoutError("The provider is shutting down."));
    await this.libp2p.unhandle(this.protocol);
  }
}

/**
 * Serves protocol `name` on `libp2p`: reads exactly one request frame per stream (limits and schema from
 * sdk/protocol), calls `handler`, writes its response frame(s), then closes the stream. Any failure (bad
 * frame, timeout, busy, handler error) is answered with one ErrorMessage frame before the close. A frame
 * declaring more than the limit is refused from its length prefix alone (FrameTooLargeError), without
 * reading its body; if the peer keeps pushing that body, libp2p resets the stream once its read buffer fills.
 * A stream over the protocol's capacity or the share of non-priority peers is answered ProviderBusyError at
 * once, without reading anything (event `stream:refused`); one over its peer's limit first waits up to
 * `peerSlotWaitMs`, unread, for one of that peer's streams to end.
 *
 * @example
 * await handleProtocol(libp2p, "quote", { handler: async (req, { peer }) => buildQuote(req) })
 * await handleProtocol(libp2p, "voucher", { handler: accept, isPriority: (peer) => sessions.hasPeer(peer) })
 * @throws HandleProtocolOptionsError when a limit is not a positive integer or the reserve leaves nothing to other peers.
 */
export async function handleProtocol<P extends ProtocolName>(
  libp2p: Libp2p,
  name: P,
  options: HandleProtocolOptions<P>,
): Promise<ProtocolService> {
  const protocol = PROTOCOL_IDS[name];
  const limits = FRAME_LIMITS[name];
  const schemas = PROTOCOL_SCHEMAS[name];
  const maxConcurrent = options.maxConcurrentStreams ?? DEFAULT_MAX_CONCURRENT_STREAMS;
  const maxPerPeer = options.maxStreamsPerPeer ?? DEFAULT_MAX_STREAMS_PER_PEER;
  const isPriority = options.isPriority;
  const reserved = options.reservedForPriority ?? (isPriority === undefined ? 0 : Math.floor(maxConcurrent / 2));
  const peerSlotWaitMs = options.peerSlotWaitMs ?? DEFAULT_PEER_SLOT_WAIT_MS;
  const firstByteTimeoutMs = options.firstByteTimeoutMs ?? DEFAULT_FIRST_BYTE_TIMEOUT_MS;
  const requestTimeoutMs = options.requestTimeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS;
  const responseTimeoutMs = options.responseTimeoutMs ?? 60_000;
  const positive = { maxConcurrentStreams: maxConcurrent, maxStreamsPerPeer: maxPerPeer, peerSlotWaitMs, firstByteTimeoutMs, requestTimeoutMs, responseTimeoutMs };
  for (const [option, value] of Object.entries(positive)) {
    if (!Number.isSafeInteger(value) || value < 1) throw new HandleProtocolOptionsError(protocol, `${option} must be a positive integer, not ${value}`);
  }
  if (!Number.isSafeInteger(reserved) || reserved < 0 || reserved >= maxConcurrent) {
    throw new HandleProtocolOptionsError(protocol, `reservedForPriority must be an integer from 0 to maxConcurrentStreams - 1 (${maxConcurrent - 1}), not ${reserved}`);
  }
  const service = new ProtocolService(libp2p, protocol);
  const busy = (peer: PeerId, reason: StreamRefusal): ProviderBusyError => {
    service.dispatchEvent(new CustomEvent("stream:refused", { detail: { peer, protocol, reason } }));
    return new ProviderBusyError(
      reason === "peer-limit"
        ? `The provider serves ${maxPerPeer} ${name} streams of one peer at once; wait for yours to end.`
        : `The provider serves ${maxConcurrent} ${name} streams at once; retry later.`,
    );
  };

  const priorityOf = (peer: PeerId): boolean => {
    if (isPriority === undefined) return false;
    try {
      return isPriority(peer);
    } catch {
      // A hook that fails grants nothing: the stream is served within the shared slots, if any is free.
      return false;
    }
  };
  /** Takes a slot for `peer`, or says why not; cheap, reads nothing of the stream. */
  const admit = (peer: PeerId, key: string): { priority: boolean } | StreamRefusal => {
    if ((service.activeByPeer.get(key) ?? 0) >= maxPerPeer) return "peer-limit";
    if (service.active >= maxConcurrent) return "capacity";
    // Asked even while shared slots are free, so that a priority peer's streams do not use them up.
    const priority = priorityOf(peer);
    if (!priority && service.activeUnprioritized >= maxConcurrent - reserved) return "reserved";
    service.active++;
    if (!priority) service.activeUnprioritized++;
    service.activeByPeer.set(key, (service.activeByPeer.get(key) ?? 0) + 1);
    return { priority };
  };
  /** Streams over their peer's limit, waiting for one of its slots: wakers by peer, oldest first. */
  const waiting = new Map<string, (() => void)[]>();
  const release = (key: string, priority: boolean): void => {
    service.active--;
    if (!priority) service.activeUnprioritized--;
    const held = (service.activeByPeer.get(key) ?? 1) - 1;
    if (held === 0) service.activeByPeer.delete(key);
    else service.activeByPeer.set(key, held);
    waiting.get(key)?.[0]?.();
  };
  /** A slot of `peer` within `peerSlotWaitMs`, or the refusal then; nothing of the stream is read meanwhile. */
  const waitForPeerSlot = (peer: PeerId, key: string, stream: Stream): Promise<{ priority: boolean } | StreamRefusal> =>
    new Promise((resolve) => {
      let queue = waiting.get(key);
      if (queue === undefined) waiting.set(key, (queue = []));
      const done = (result: { priority: boolean } | StreamRefusal): void => {
        clearTimeout(timer);
        stream.removeEventListener("close", onClose);
        const at = queue.indexOf(wake);
        if (at >= 0) queue.splice(at, 1);
        if (queue.length === 0 && waiting.get(key) === queue) waiting.delete(key);
        resolve(result);
      };
      const wake = (): void => {
        const slot = admit(peer, key);
        // Still at the limit (another of its streams took the slot first): this one keeps waiting.
        if (slot !== "peer-limit") done(slot);
      };
      const onClose = (): void => done("peer-limit");
      const timer = setTimeout(() => done("peer-limit"), peerSlotWaitMs);
      stream.addEventListener("close", onClose, { once: true });
      queue.push(wake);
    });

  const serve = async (stream: Stream, connection: Connection): Promise<void> => {
    const peer = connection.remotePeer;
    const key = peer.toString();
    let slot = admit(peer, key);
    if (slot === "peer-limit") slot = await waitForPeerSlot(peer, key, stream);
    if (typeof slot === "string") {
      // Answered at once and dropped soon: a refused stream must not linger for the full deadline below,
      // holding one of libp2p's inbound stream slots of the connection while its peer never closes.
      const linger = setTimeout(() => stream.abort(new ProtocolTimeoutError("The stream was refused.")), firstByteTimeoutMs);
      stream.addEventListener("close", () => clearTimeout(linger), { once: true });
      await fail(stream, busy(peer, slot));
      return;
    }
    // A hard stop for streams whose peer never closes its side: they would hold a muxer slot forever.
    const hardDeadline = setTimeout(
      () => stream.abort(new ProtocolTimeoutError("The stream outlived its deadline.")),
      requestTimeoutMs + responseTimeoutMs + 5_000,
    );
    stream.addEventListener("close", () => clearTimeout(hardDeadline), { once: true });
    const deadline = new AbortController();
    const signal = AbortSignal.any([deadline.signal, service.signal]);
    try {
      const request = await readRequest(stream, limits.request, schemas.request, { firstByteTimeoutMs, requestTimeoutMs }, signal);
      const timer = setTimeout(
        () => deadline.abort(new ProtocolTimeoutError(`The provider did not answer within ${responseTimeoutMs} ms.`)),
        responseTimeoutMs,
      );
      try {
        const result = options.handler(request as RequestOf<P>, { peer, connection, signal });
        const responses = isAsyncIterable(result) ? result : once(result);
        for await (const response of abortable(responses, signal)) {
          signal.throwIfAborted();
          await send(stream, encodeResponse(response, limits.response, schemas.response), signal);
        }
        signal.throwIfAborted();
      } finally {
        clearTimeout(timer);
      }
      await stream.close({ signal: AbortSignal.timeout(requestTimeoutMs) });
    } catch (err) {
      const error = signal.aborted && !(err instanceof ProtocolError) ? signal.reason : err;
      service.dispatchEvent(new CustomEvent("request:failed", { detail: { peer, protocol, error } }));
      await fail(stream, error);
    } finally {
      release(key, slot.priority);
    }
  };

  await libp2p.handle(
    protocol,
    (stream, connection) => {
      // The handler must never reject into libp2p: serve() catches everything, this is the last net.
      serve(stream, connection).catch((err: unknown) => stream.abort(err instanceof Error ? err : new Error(String(err))));
    },
    { maxInboundStreams: options.maxInboundStreams ?? 32 },
  );
  return service;
}

/**
 * The first frame of `stream`, or a ProtocolError: its first byte must come within `firstByteTimeoutMs` and
 * the whole frame within `requestTimeoutMs`, both counted from now (the stream's opening).
 */
async function readRequest(
  stream: Stream,
  maxFrameBytes: number,
  schema: z.ZodType,
  timeouts: { firstByteTimeoutMs: number; requestTimeoutMs: number },
  signal: AbortSignal,
): Promise<unknown> {
  let firstByteTimer: ReturnType<typeof setTimeout> | undefined;
  let frameTimer: ReturnType<typeof setTimeout> | undefined;
  let onAbort: (() => void) | undefined;
  const source = onFirstChunk(readStream(stream), () => clearTimeout(firstByteTimer));
  const frames = decodeFrames(source, { maxFrameBytes, schema })[Symbol.asyncIterator]();
  const next = frames.next();
  const timeout = new Promise<never>((_, reject) => {
    const { firstByteTimeoutMs, requestTimeoutMs } = timeouts;
    if (firstByteTimeoutMs < requestTimeoutMs) {
      firstByteTimer = setTimeout(() => reject(new ProtocolTimeoutError(`No request byte within ${firstByteTimeoutMs} ms.`)), firstByteTimeoutMs);
    }
    frameTimer = setTimeout(
      () => reject(new ProtocolTimeoutError(`No complete request frame within ${requestTimeoutMs} ms.`)),
      requestTimeoutMs,
    );
    onAbort = () => reject(signal.reason);
    signal.addEventListener("abort", onAbort, { once: true });
  });
  try {
    const first = await Promise.race([next, timeout]);
    if (first.done === true) throw new MalformedFrameError("The stream closed before a request frame.");
    // Detach from the stream; bytes after the request are not read (each stream carries one request).
    void frames.return(undefined).catch(() => {});
    return first.value;
  } catch (err) {
    // The read still pending ends when the stream closes; its outcome no longer matters.
    next.catch(() => {});
    if (err instanceof ProtocolError) throw err;
    // A reset or a stream error while reading: the peer will not read our answer, but say what happened.
    throw new ProtocolStreamError("The request stream failed while reading.", { cause: err });
  } finally {
    clearTimeout(firstByteTimer);
    clearTimeout(frameTimer);
    if (onAbort !== undefined) signal.removeEventListener("abort", onAbort);
  }
}

/** `source`'s chunks, calling `first` when the first of them arrives (or the source ends without any). */
async function* onFirstChunk<T>(source: AsyncIterable<T>, first: () => void): AsyncGenerator<T, void, undefined> {
  let seen = false;
  try {
    for await (const chunk of source) {
      if (!seen) {
        seen = true;
        first();
      }
      yield chunk;
    }
  } finally {
    if (!seen) first();
  }
}

function encodeResponse(response: unknown, maxFrameBytes: number, schema: z.ZodType): Uint8Array {
  try {
    return encodeFrame(response, { maxFrameBytes, schema });
  } catch (err) {
    // Our own handler's fault, not the peer's: it must not read as InvalidMessageError about its request.
    throw new InternalError("The provider produced an invalid response.", { cause: err });
  }
}

async function send(stream: Stream, frame: Uint8Array, signal: AbortSignal): Promise<void> {
  if (!stream.send(frame)) await stream.onDrain({ signal });
}

/** Answers `err` as an ErrorMessage and closes; resets the stream when even that is impossible. */
async function fail(stream: Stream, err: unknown): Promise<void> {
  try {
    if (stream.writeStatus !== "writable") {
      stream.abort(err instanceof Error ? err : new Error(String(err)));
      return;
    }
    stream.send(encodeFrame(errorToWire(err), { maxFrameBytes: MAX_CONTROL_FRAME_BYTES }));
    await stream.close({ signal: AbortSignal.timeout(5_000) });
  } catch (closeErr) {
    stream.abort(closeErr instanceof Error ? closeErr : new Error(String(closeErr)));
  }
}

function isAsyncIterable<T>(value: unknown): value is AsyncIterable<T> {
  return value !== null && typeof value === "object" && Symbol.asyncIterator in value;
}

async function* once<T>(value: Promise<T>): AsyncGenerator<T> {
  yield await value;
}

/** `source`'s items until `signal` aborts: a handler that ignores its signal must not hold the stream past the deadline. */
async function* abortable<T>(source: AsyncIterable<T>, signal: AbortSignal): AsyncGenerator<T> {
  const it = source[Symbol.asyncIterator]();
  let onAbort: (() => void) | undefined;
  const aborted = new Promise<never>((_, reject) => {
    onAbort = () => reject(signal.reason);
    if (signal.aborted) onAbort();
    else signal.addEventListener("abort", onAbort, { once: true });
  });
  aborted.catch(() => {});
  try {
    for (;;) {
      const next = it.next();
      next.catch(() => {});
      const result = await Promise.race([next, aborted]);
      if (result.done === true) return;
      yield result.value;
    }
  } finally {
    signal.removeEventListener("abort", onAbort!);
    void Promise.resolve(it.return?.()).catch(() => {});
  }
}
