/**
 * One request, then one or more responses, on a fresh libp2p stream: the shape of every Soulmesh protocol.
 * Frames are length-prefixed JSON (sdk/protocol/codec), checked against the protocol's schema and limits;
 * every failure is answered with a typed ErrorMessage, never by crashing the node.
 */
import type { Connection, PeerId, Stream, StreamCloseEvent, StreamMessageEvent } from "@libp2p/interface";
import type { Uint8ArrayList } from "uint8arraylist";
import type { Multiaddr } from "@multiformats/multiaddr";
import type { Libp2p } from "libp2p";
import type { z } from "zod";
import {
  decodeFrames,
  encodeFrame,
  errorFromWire,
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
import { ProtocolStreamError } from "./errors.js";

type Schemas = typeof PROTOCOL_SCHEMAS;
/** The request a handler of protocol `P` receives, validated (defaults applied). */
export type RequestOf<P extends ProtocolName> = z.output<Schemas[P]["request"]>;
/** What a handler of `P` answers: any response message but an error (errors are thrown). */
export type ResponseOf<P extends ProtocolName> = Exclude<z.input<Schemas[P]["response"]>, { type: "error" }>;
/** A response as the client receives it. */
export type ReceivedResponseOf<P extends ProtocolName> = Exclude<z.output<Schemas[P]["response"]>, { type: "error" }>;

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

export interface HandleProtocolOptions<P extends ProtocolName> {
  handler: ProtocolRequestHandler<P>;
  /** Streams of this protocol served at once, over all connections; more are answered ProviderBusyError. Default 64. */
  maxConcurrentStreams?: number;
  /** Streams of this protocol open at once per connection (libp2p's own cap, which resets the excess). Default 32. */
  maxInboundStreams?: number;
  /** Time for the request frame to arrive in full; against slowloris peers. Default 10 s. */
  requestTimeoutMs?: number;
  /** Time for the handler to answer in full. Default 60 s. */
  responseTimeoutMs?: number;
}

export interface ProtocolServiceEvents {
  /** A stream was answered with an error (the peer's fault or ours); for logs and metrics. */
  "request:failed": CustomEvent<{ peer: PeerId; protocol: string; error: unknown }>;
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
 *
 * @example
 * await handleProtocol(libp2p, "quote", { handler: async (req, { peer }) => buildQuote(req) })
 */
export async function handleProtocol<P extends ProtocolName>(
  libp2p: Libp2p,
  name: P,
  options: HandleProtocolOptions<P>,
): Promise<ProtocolService> {
  const protocol = PROTOCOL_IDS[name];
  const limits = FRAME_LIMITS[name];
  const schemas = PROTOCOL_SCHEMAS[name];
  const maxConcurrent = options.maxConcurrentStreams ?? 64;
  const requestTimeoutMs = options.requestTimeoutMs ?? 10_000;
  const responseTimeoutMs = options.responseTimeoutMs ?? 60_000;
  const service = new ProtocolService(libp2p, protocol);

  const serve = async (stream: Stream, connection: Connection): Promise<void> => {
    const peer = connection.remotePeer;
    // A hard stop for streams whose peer never closes its side: they would hold a muxer slot forever.
    const hardDeadline = setTimeout(
      () => stream.abort(new ProtocolTimeoutError("The stream outlived its deadline.")),
      requestTimeoutMs + responseTimeoutMs + 5_000,
    );
    stream.addEventListener("close", () => clearTimeout(hardDeadline), { once: true });
    if (service.active >= maxConcurrent) {
      await fail(stream, new ProviderBusyError(`The provider serves ${maxConcurrent} ${name} streams at once; retry later.`));
      return;
    }
    service.active++;
    const deadline = new AbortController();
    const signal = AbortSignal.any([deadline.signal, service.signal]);
    try {
      const request = await readRequest(stream, limits.request, schemas.request, requestTimeoutMs, signal);
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
      service.active--;
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
 * The bytes `stream` receives, ending when the remote closes its writable end. Used instead of the
 * stream's own async iterator, which only learns of that close from a `remoteCloseWrite` event: a peer that
 * sends its request and its close in one burst can fire the event before anyone listens, and the iterator
 * then waits forever (seen under load as a request timing out although the peer had closed).
 *
 * @example
 * for await (const msg of decodeFrames(readStream(stream), { maxFrameBytes, schema })) handle(msg)
 */
export async function* readStream(stream: Stream): AsyncGenerator<Uint8Array | Uint8ArrayList, void, undefined> {
  const chunks: (Uint8Array | Uint8ArrayList)[] = [];
  let closed = false;
  let error: Error | undefined;
  let wake: (() => void) | undefined;
  const notify = () => {
    wake?.();
    wake = undefined;
  };
  const onMessage = (evt: StreamMessageEvent) => {
    chunks.push(evt.data);
    notify();
  };
  const onClose = (evt: StreamCloseEvent) => {
    if (evt.error !== undefined) error = evt.error;
    closed = true;
    notify();
  };
  stream.addEventListener("message", onMessage);
  stream.addEventListener("remoteCloseWrite", notify);
  stream.addEventListener("close", onClose);
  try {
    for (;;) {
      const chunk = chunks.shift();
      if (chunk !== undefined) {
        yield chunk;
        continue;
      }
      if (error !== undefined) throw error;
      // Data still buffered in the stream is dispatched to our listener on a microtask: wait for it first.
      if (closed || stream.readStatus === "closed" || (stream.remoteWriteStatus === "closed" && stream.readBufferLength === 0)) return;
      await new Promise<void>((resolve) => (wake = resolve));
    }
  } finally {
    stream.removeEventListener("message", onMessage);
    stream.removeEventListener("remoteCloseWrite", notify);
    stream.removeEventListener("close", onClose);
  }
}

/** The first frame of `stream`, or a ProtocolError; waits at most `timeoutMs`. */
async function readRequest(
  stream: Stream,
  maxFrameBytes: number,
  schema: z.ZodType,
  timeoutMs: number,
  signal: AbortSignal,
): Promise<unknown> {
  const frames = decodeFrames(readStream(stream), { maxFrameBytes, schema })[Symbol.asyncIterator]();
  const next = frames.next();
  let timer: ReturnType<typeof setTimeout> | undefined;
  let onAbort: (() => void) | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new ProtocolTimeoutError(`No complete request frame within ${timeoutMs} ms.`)),
      timeoutMs,
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
    clearTimeout(timer);
    if (onAbort !== undefined) signal.removeEventListener("abort", onAbort);
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

// ------------------------------------------------------------------------------------------------- client

export interface RequestOptions {
  signal?: AbortSignal;
  /** Time for the whole exchange, from dial to the last response. Default 30 s. */
  timeoutMs?: number;
}

/**
 * Sends `request` on a new stream of protocol `name` and yields the responses as they come, until the
 * provider closes the stream.
 *
 * @example
 * for await (const msg of streamProtocol(libp2p, provider, "inference", request)) {
 *   if (msg.type === "inference.chunk") process.stdout.write(msg.text)
 * }
 * @throws the typed ProtocolError the provider answered (errorFromWire); ProtocolTimeoutError past
 *   `timeoutMs`; ProtocolStreamError when the dial or the stream fails.
 */
export async function* streamProtocol<P extends ProtocolName>(
  libp2p: Libp2p,
  peer: PeerId | Multiaddr | Multiaddr[],
  name: P,
  request: z.input<Schemas[P]["request"]>,
  options: RequestOptions = {},
): AsyncGenerator<ReceivedResponseOf<P>, void, undefined> {
  const timeoutMs = options.timeoutMs ?? 30_000;
  const timeout = new AbortController();
  const timer = setTimeout(
    () => timeout.abort(new ProtocolTimeoutError(`No full answer on ${PROTOCOL_IDS[name]} within ${timeoutMs} ms.`)),
    timeoutMs,
  );
  const signal = options.signal === undefined ? timeout.signal : AbortSignal.any([options.signal, timeout.signal]);
  let stream: Stream | undefined;
  const onAbort = () => stream?.abort(signal.reason instanceof Error ? signal.reason : new Error(String(signal.reason)));
  signal.addEventListener("abort", onAbort, { once: true });
  try {
    const frame = encodeFrame(request, { maxFrameBytes: FRAME_LIMITS[name].request, schema: PROTOCOL_SCHEMAS[name].request });
    try {
      stream = await libp2p.dialProtocol(peer, PROTOCOL_IDS[name], { signal });
      stream.send(frame);
      // Half-close: the provider reads one request; our side stays readable for the answer.
      await stream.close({ signal });
    } catch (err) {
      signal.throwIfAborted();
      throw new ProtocolStreamError(`Could not send the ${name} request: ${(err as Error).message}`, { cause: err });
    }
    const frames = decodeFrames(readStream(stream), { maxFrameBytes: FRAME_LIMITS[name].response, schema: PROTOCOL_SCHEMAS[name].response });
    try {
      for await (const msg of frames) {
        const message = msg as z.output<Schemas[P]["response"]>;
        if (message.type === "error") throw errorFromWire(message as Parameters<typeof errorFromWire>[0]);
        yield message as ReceivedResponseOf<P>;
      }
    } catch (err) {
      signal.throwIfAborted();
      if (err instanceof ProtocolError) throw err;
      throw new ProtocolStreamError(`The ${name} stream failed: ${(err as Error).message}`, { cause: err });
    }
    signal.throwIfAborted();
  } finally {
    clearTimeout(timer);
    signal.removeEventListener("abort", onAbort);
    if (stream !== undefined && stream.status !== "closed") stream.abort(new Error("request finished"));
  }
}

/**
 * Sends `request` and returns the single response of a request/response protocol (quote, session, voucher).
 *
 * @example
 * const quote = await requestProtocol(libp2p, providerAddr, "quote", { type: "quote.request" }, { timeoutMs: 5_000 })
 * @throws as {@link streamProtocol}; MalformedFrameError when the provider answers nothing.
 */
export async function requestProtocol<P extends ProtocolName>(
  libp2p: Libp2p,
  peer: PeerId | Multiaddr | Multiaddr[],
  name: P,
  request: z.input<Schemas[P]["request"]>,
  options: RequestOptions = {},
): Promise<ReceivedResponseOf<P>> {
  for await (const response of streamProtocol(libp2p, peer, name, request, options)) return response;
  throw new MalformedFrameError(`The provider closed the ${name} stream without an answer.`);
}
