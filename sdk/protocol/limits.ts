import type { ProtocolName } from "./ids.js";

/** 64 KiB: enough for any control message, small enough that a peer cannot make us buffer much. */
export const MAX_CONTROL_FRAME_BYTES = 64 * 1024;

/** 1 MiB: an inference request carries the whole assembled prompt (persona, memories, history). */
export const MAX_PROMPT_FRAME_BYTES = 1024 * 1024;

/**
 * The largest frame length any decoder accepts from its varint, whatever its configured limit: keeps the
 * varint to at most 5 bytes and every length a safe integer.
 */
export const ABSOLUTE_MAX_FRAME_BYTES = 16 * 1024 * 1024;

/** Characters of text in one streamed inference chunk; a chunk frame stays well under the control limit. */
export const MAX_CHUNK_TEXT_CHARS = 16 * 1024;

/** Characters of one chat message or raw prompt; the frame limit bounds the total anyway. */
export const MAX_PROMPT_TEXT_CHARS = 1024 * 1024;

/** Chat messages in one prompt. */
export const MAX_CHAT_MESSAGES = 4096;

/** Stop sequences in one request, and characters in each. */
export const MAX_STOP_SEQUENCES = 16;
export const MAX_STOP_SEQUENCE_CHARS = 256;

/** Models and cached adapters listed in one quote; adapters stacked on one turn. */
export const MAX_QUOTE_MODELS = 64;
export const MAX_QUOTE_ADAPTERS = 256;
export const MAX_TURN_ADAPTERS = 8;

/** Tokens one turn may ask for. */
export const MAX_TOKENS_PER_TURN = 1 << 20;

/** Characters of an error message on the wire; longer ones are cut, not rejected, when sent. */
export const MAX_ERROR_MESSAGE_CHARS = 1024;

/**
 * The frame limit each side of each protocol enforces, in bytes.
 *
 * @example
 * decodeFrames(stream, { maxFrameBytes: FRAME_LIMITS.inference.request, schema: InferenceRequestSchema })
 */
export const FRAME_LIMITS: Record<ProtocolName, { request: number; response: number }> = {
  quote: { request: MAX_CONTROL_FRAME_BYTES, response: MAX_CONTROL_FRAME_BYTES },
  session: { request: MAX_CONTROL_FRAME_BYTES, response: MAX_CONTROL_FRAME_BYTES },
  inference: { request: MAX_PROMPT_FRAME_BYTES, response: MAX_CONTROL_FRAME_BYTES },
  voucher: { request: MAX_CONTROL_FRAME_BYTES, response: MAX_CONTROL_FRAME_BYTES },
};
