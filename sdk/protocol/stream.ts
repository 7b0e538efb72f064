/**
 * The client side of every Soulmesh protocol: one request frame on a fresh libp2p stream, then the
 * provider's response frames until it closes. Shared by sdk/client and by the node's own tests and tools.
 */
import type { PeerId, Stream, StreamCloseEvent, StreamMessageEvent } from "@libp2p/interface";
import type { Multiaddr } from "@multiformats/multiaddr";
import type { Libp2p } from "libp2p";
import type { Uint8ArrayList } from "uint8arraylist";
import type { z } from "zod";
import { decodeFrames, encodeFrame, errorFromWire } from "./codec.js";
import { MalformedFrameError, ProtocolError, ProtocolStreamError, ProtocolTimeoutError } from "./errors.js";
import { PROTOCOL_IDS, type ProtocolName } from "./ids.js";
import { FRAME_LIMITS } from "./limits.js";
import { PROTOCOL_SCHEMAS } from "./messages.js";

type Schemas = typeof PROTOCOL_SCHEMAS;
/** A response as the client receives it (errors are thrown, not returned). */
export type ReceivedResponseOf<P extends ProtocolName> = Exclude<z.output<Schemas[P]["response"]>, { type: "error" }>;

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

