/**
 * One request, then one or more responses, on a fresh libp2p stream: the shape of every Soulmesh protocol.
 * Frames are length-prefixed JSON (sdk/protocol/codec), checked against the protocol's schema and limits;
 * every failure is answered with a typed ErrorMessage, never by crashing the node.
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
