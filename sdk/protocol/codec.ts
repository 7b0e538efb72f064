import type { z } from "zod";
import {
  FrameTooLargeError,
  InvalidMessageError,
  MalformedFrameError,
  ProtocolError,
  UnknownRemoteError,
  WIRE_ERRORS,
} from "./errors.js";
import { ABSOLUTE_MAX_FRAME_BYTES, MAX_ERROR_MESSAGE_CHARS } from "./limits.js";
import type { ErrorMessage } from "./messages.js";

/*
 * Frames are an unsigned LEB128 varint length, then that many bytes of UTF-8 JSON. JSON rather than
 * dag-cbor: bigints already travel as decimal strings, prompts are text, TextDecoder/JSON are built into
 * every runtime, and a frame can be read in a hex dump while debugging. The varint is the same as
 * it-length-prefixed's, so libp2p tooling can read the streams.
 */

/** Anything with the bytes of a chunk: a Uint8Array, or a Uint8ArrayList (its `subarray()`). */
export type ByteChunk = Uint8Array | { subarray(): Uint8Array };

/** A varint longer than this cannot encode a length within ABSOLUTE_MAX_FRAME_BYTES. */
const MAX_VARINT_BYTES = 5;

const utf8Decoder = new TextDecoder("utf-8", { fatal: true });
const utf8Encoder = new TextEncoder();

/**
 * The unsigned LEB128 varint of `n`.
 *
 * @example
 * encodeVarint(300) // Uint8Array [0xac, 0x02]
 */
export function encodeVarint(n: number): Uint8Array {
  if (!Number.isSafeInteger(n) || n < 0) throw new RangeError(`not a varint: ${n}`);
  const out: number[] = [];
  let rest = n;
  while (rest >= 0x80) {
    out.push((rest % 0x80) | 0x80);
    rest = Math.floor(rest / 0x80);
  }
  out.push(rest);
  return Uint8Array.from(out);
}

/** Options of {@link encodeFrame}. */
export interface EncodeOptions<S extends z.ZodType> {
  maxFrameBytes: number;
  /** When given, the message is validated first: a peer would refuse an invalid one anyway. */
  schema?: S;
}

/**
 * One frame holding `message` as JSON.
 *
 * @example
 * stream.send(encodeFrame({ type: "quote.request" }, { maxFrameBytes: MAX_CONTROL_FRAME_BYTES }))
 * @throws FrameTooLargeError when the body exceeds `maxFrameBytes`; InvalidMessageError when `schema` refuses it.
 */
export function encodeFrame<S extends z.ZodType>(message: z.input<S> | unknown, options: EncodeOptions<S>): Uint8Array {
  const value = options.schema ? validate(options.schema, message) : message;
  const body = utf8Encoder.encode(JSON.stringify(value));
  if (body.length > options.maxFrameBytes) {
    throw new FrameTooLargeError(`The message is ${body.length} bytes, over the frame limit of ${options.maxFrameBytes}.`);
  }
  const prefix = encodeVarint(body.length);
  const frame = new Uint8Array(prefix.length + body.length);
  frame.set(prefix, 0);
  frame.set(body, prefix.length);
  return frame;
}

/** Options of {@link decodeFrames}. */
export interface DecodeOptions<S extends z.ZodType> {
  /** Frames declaring a longer body are refused before it is read. */
  maxFrameBytes: number;
  schema: S;
}

/**
 * The bytes received and not yet consumed, as the chunks they came in: copying each chunk onto one buffer
 * would cost quadratic time when a peer sends a large frame a byte at a time.
 */
class ChunkQueue {
  private chunks: Uint8Array[] = [];
  private head = 0;
  length = 0;

  push(chunk: Uint8Array): void {
    if (chunk.length === 0) return;
    this.chunks.push(chunk);
    this.length += chunk.length;
  }

  /** The byte at `index` past the read position; the caller checks `index < length`. */
  peek(index: number): number {
    let i = this.head + index;
    for (const chunk of this.chunks) {
      if (i < chunk.length) return chunk[i]!;
      i -= chunk.length;
    }
    throw new RangeError("peek past the end");
  }

  /** Removes `n` bytes, copying them out only when `copy` is set. */
  take(n: number, copy: boolean): Uint8Array | undefined {
    const out = copy ? new Uint8Array(n) : undefined;
    let filled = 0;
    while (filled < n) {
      const chunk = this.chunks[0]!;
      const count = Math.min(n - filled, chunk.length - this.head);
      out?.set(chunk.subarray(this.head, this.head + count), filled);
      filled += count;
      this.head += count;
      if (this.head === chunk.length) {
        this.chunks.shift();
        this.head = 0;
      }
    }
    this.length -= n;
    return out;
  }
}

/**
 * Reads a varint length off the front of `queue`: the length and how many bytes it took, or undefined when
 * more bytes are needed. Throws as soon as the length is known to exceed `max`, so that an oversized frame
 * is refused without waiting for (or allocating) its body.
 */
function readLength(queue: ChunkQueue, max: number): { length: number; bytes: number } | undefined {
  let value = 0;
  for (let i = 0; i < MAX_VARINT_BYTES; i++) {
    if (i >= queue.length) return undefined;
    const byte = queue.peek(i);
    value += (byte & 0x7f) * 2 ** (7 * i);
    if (value > max) throw new FrameTooLargeError(`A frame declares at least ${value} bytes, over the limit of ${max}.`);
    if ((byte & 0x80) === 0) {
      // One spelling per length: a zero-padded varint is refused like any other malformed prefix.
      if (i > 0 && byte === 0) throw new MalformedFrameError("A frame's length varint is not minimally encoded.");
      if (value === 0) throw new MalformedFrameError("An empty frame (length 0).");
      return { length: value, bytes: i + 1 };
    }
  }
  throw new MalformedFrameError(`A frame's length varint runs past ${MAX_VARINT_BYTES} bytes.`);
}

function toBytes(chunk: unknown): Uint8Array {
  if (chunk instanceof Uint8Array) return chunk;
  if (chunk !== null && typeof chunk === "object" && typeof (chunk as { subarray?: unknown }).subarray === "function") {
    const bytes: unknown = (chunk as { subarray(): unknown }).subarray();
    if (bytes instanceof Uint8Array) return bytes;
  }
  throw new MalformedFrameError("The stream yielded something other than bytes.");
}

/**
 * Summarizes zod's issues into a few short lines (path: problem); the count is capped so that a frame full
 * of errors cannot make an equally large error.
 */
function summarizeIssues(issues: readonly z.core.$ZodIssue[]): string[] {
  const lines = issues.slice(0, 8).map((issue) => {
    const path = issue.path.map(String).join(".") || "(root)";
    return `${path.slice(0, 80)}: ${issue.message.slice(0, 120)}`;
  });
  if (issues.length > 8) lines.push(`… and ${issues.length - 8} more`);
  return lines;
}

/**
 * `value` checked against `schema`.
 *
 * @example
 * const quote = validate(QuoteSchema, JSON.parse(text))
 * @throws InvalidMessageError listing the problems.
 */
export function validate<S extends z.ZodType>(schema: S, value: unknown): z.output<S> {
  const result = schema.safeParse(value);
  if (result.success) return result.data;
  const issues = summarizeIssues(result.error.issues);
  throw new InvalidMessageError(`Invalid message: ${issues.join("; ")}.`, issues);
}

/**
 * The message in one frame's body (without its length prefix).
 *
 * @example
 * decodeBody(body, QuoteSchema)
 * @throws MalformedFrameError (not UTF-8, not JSON) or InvalidMessageError (not the schema's message).
 */
export function decodeBody<S extends z.ZodType>(body: Uint8Array, schema: S): z.output<S> {
  let text: string;
  try {
    text = utf8Decoder.decode(body);
  } catch {
    throw new MalformedFrameError("A frame's body is not valid UTF-8.");
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    // Also catches the RangeError of absurdly deep nesting, should the runtime's parser recurse.
    throw new MalformedFrameError("A frame's body is not valid JSON.");
  }
  return validate(schema, value);
}

/**
 * The messages of a length-prefixed stream, validated, as they arrive. Throws a {@link ProtocolError}
 * (FrameTooLargeError, MalformedFrameError, InvalidMessageError) at the first bad frame, and
 * MalformedFrameError when the stream ends inside a frame.
 *
 * @example
 * for await (const msg of decodeFrames(stream, { maxFrameBytes: FRAME_LIMITS.inference.response, schema: InferenceResponseSchema })) {
 *   if (msg.type === "inference.chunk") process.stdout.write(msg.text)
 * }
 */
export async function* decodeFrames<S extends z.ZodType>(
  source: AsyncIterable<ByteChunk> | Iterable<ByteChunk>,
  options: DecodeOptions<S>,
): AsyncGenerator<z.output<S>, void, undefined> {
  const max = Math.min(options.maxFrameBytes, ABSOLUTE_MAX_FRAME_BYTES);
  const queue = new ChunkQueue();
  let pending: number | undefined;
  for await (const chunk of source) {
    queue.push(toBytes(chunk));
    for (;;) {
      if (pending === undefined) {
        const prefix = readLength(queue, max);
        if (prefix === undefined) break;
        queue.take(prefix.bytes, false);
        pending = prefix.length;
      }
      if (queue.length < pending) break;
      const body = queue.take(pending, true)!;
      pending = undefined;
      yield decodeBody(body, options.schema);
    }
  }
  if (pending !== undefined || queue.length > 0) {
    throw new MalformedFrameError("The stream ended inside a frame (truncated).");
  }
}

/**
 * The single message of `bytes`, which must hold exactly one frame.
 *
 * @example
 * const request = decodeFrame(bytes, { maxFrameBytes: MAX_CONTROL_FRAME_BYTES, schema: QuoteRequestSchema })
 */
export function decodeFrame<S extends z.ZodType>(bytes: Uint8Array, options: DecodeOptions<S>): z.output<S> {
  const queue = new ChunkQueue();
  queue.push(bytes);
  const prefix = readLength(queue, Math.min(options.maxFrameBytes, ABSOLUTE_MAX_FRAME_BYTES));
  if (prefix === undefined || queue.length < prefix.bytes + prefix.length) {
    throw new MalformedFrameError("The frame is truncated.");
  }
  if (queue.length > prefix.bytes + prefix.length) throw new MalformedFrameError("Bytes follow the frame.");
  return decodeBody(bytes.subarray(prefix.bytes), options.schema);
}

/**
 * The ErrorMessage that reports `err` to the peer. A {@link ProtocolError} travels under its name with its
 * message; anything else becomes a bare "InternalError", so no stack, path or secret leaks.
 *
 * @example
 * catch (err) { stream.send(encodeFrame(errorToWire(err), { maxFrameBytes: MAX_CONTROL_FRAME_BYTES })) }
 */
export function errorToWire(err: unknown): ErrorMessage {
  if (err instanceof UnknownRemoteError) {
    return { type: "error", code: err.code, message: truncate(err.message), retryable: err.retryable };
  }
  if (err instanceof ProtocolError && Object.hasOwn(WIRE_ERRORS, err.name)) {
    return { type: "error", code: err.name, message: truncate(err.message), retryable: err.retryable };
  }
  return { type: "error", code: "InternalError", message: "Internal error.", retryable: true };
}

/**
 * The typed error an ErrorMessage stands for: an instance of the class named by its code, or
 * UnknownRemoteError for a code this version does not know.
 *
 * @example
 * if (msg.type === "error") throw errorFromWire(msg)
 */
export function errorFromWire(msg: ErrorMessage): ProtocolError {
  const ctor = Object.hasOwn(WIRE_ERRORS, msg.code) ? WIRE_ERRORS[msg.code as keyof typeof WIRE_ERRORS] : undefined;
  if (ctor === undefined) return new UnknownRemoteError(msg.code, msg.message, msg.retryable);
  // `retryable` comes from the class, not the peer: what may be retried is this side's decision.
  return new ctor(msg.message);
}

function truncate(message: string): string {
  return message.length <= MAX_ERROR_MESSAGE_CHARS ? message : `${message.slice(0, MAX_ERROR_MESSAGE_CHARS - 1)}…`;
}
