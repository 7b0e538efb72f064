import { describe, expect, it } from "vitest";
import { decodeFrame, decodeFrames, encodeFrame, encodeVarint, errorFromWire, errorToWire } from "./codec.js";
import {
  FrameTooLargeError,
  InternalError,
  InvalidMessageError,
  MalformedFrameError,
  ProtocolError,
  ProviderBusyError,
  UnknownRemoteError,
} from "./errors.js";
import { MAX_CONTROL_FRAME_BYTES } from "./limits.js";
import { InferenceResponseSchema, QuoteRequestSchema, SessionOpenSchema } from "./messages.js";
import { z } from "zod";
import { prng } from "../../test/helpers/prng.js";

const TEXT_SCHEMA = z.strictObject({ type: z.literal("t"), text: z.string() });
const opts = { maxFrameBytes: MAX_CONTROL_FRAME_BYTES, schema: InferenceResponseSchema };


async function collect<T>(it: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const x of it) out.push(x);
  return out;
}

function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

/** A frame of `body` as raw bytes, bypassing encodeFrame's checks. */
const rawFrame = (body: Uint8Array): Uint8Array => concat(encodeVarint(body.length), body);
const utf8 = (s: string): Uint8Array => new TextEncoder().encode(s);

describe("frames", () => {
  const chunks = [
    { type: "inference.chunk", index: 0, text: "Hel" },
    { type: "inference.chunk", index: 1, text: "lo ✨" },
    { type: "error", code: "ProviderBusyError", message: "busy", retryable: true },
  ];

  it("decode when split byte by byte across chunk boundaries", async () => {
    const bytes = concat(...chunks.map((c) => encodeFrame(c, opts)));
    const split = Array.from(bytes, (b) => Uint8Array.of(b));
    expect(await collect(decodeFrames(split, opts))).toEqual(chunks);
  });

  it("decode from Uint8ArrayList-like chunks and several frames in one chunk", async () => {
    const bytes = concat(...chunks.map((c) => encodeFrame(c, opts)));
    const listLike = { subarray: () => bytes };
    expect(await collect(decodeFrames([listLike], opts))).toEqual(chunks);
  });

  it("accept a frame exactly at the limit and refuse one byte over", async () => {
    const max = 1000;
    const overhead = JSON.stringify({ type: "t", text: "" }).length;
    const at = { type: "t", text: "x".repeat(max - overhead) };
    const frame = encodeFrame(at, { maxFrameBytes: max });
    expect(frame.length).toBe(max + 2);
    expect(await collect(decodeFrames([frame], { maxFrameBytes: max, schema: TEXT_SCHEMA }))).toEqual([at]);
    const over = { type: "t", text: "x".repeat(max - overhead + 1) };
    expect(() => encodeFrame(over, { maxFrameBytes: max })).toThrow(FrameTooLargeError);
    const overFrame = encodeFrame(over, { maxFrameBytes: max + 1 });
    await expect(collect(decodeFrames([overFrame], { maxFrameBytes: max, schema: TEXT_SCHEMA }))).rejects.toThrow(FrameTooLargeError);
  });

  it("refuse an oversized declared length before reading its body", async () => {
    let pulled = 0;
    async function* source(): AsyncGenerator<Uint8Array> {
      pulled++;
      yield encodeVarint(2 ** 31 - 1);
      pulled++;
      await new Promise(() => {}); // a peer that never sends the body: decoding must not wait for it
    }
    await expect(collect(decodeFrames(source(), opts))).rejects.toThrow(FrameTooLargeError);
    expect(pulled).toBe(1);
    // Known to be too large from the first varint byte of a long prefix already.
    await expect(collect(decodeFrames([Uint8Array.of(0xff)], { maxFrameBytes: 100, schema: TEXT_SCHEMA }))).rejects.toThrow(FrameTooLargeError);
  });

  it("refuse malformed prefixes and bodies with typed errors", async () => {
    const cases: [Uint8Array, new (...a: never[]) => ProtocolError][] = [
      [Uint8Array.of(0x00), MalformedFrameError], // empty frame
      [Uint8Array.of(0x81, 0x00, 0x41), MalformedFrameError], // non-minimal varint
      [Uint8Array.of(0x80, 0x80, 0x80, 0x80, 0x80, 0x01), MalformedFrameError], // varint over 5 bytes
      [Uint8Array.of(0x05, 0x7b), MalformedFrameError], // truncated body
      [Uint8Array.of(0x85), MalformedFrameError], // truncated varint
      [rawFrame(Uint8Array.of(0xff, 0xfe)), MalformedFrameError], // not UTF-8
      [rawFrame(utf8("{nope")), MalformedFrameError], // not JSON
      [rawFrame(utf8("null")), InvalidMessageError],
      [rawFrame(utf8('{"type":"inference.chunk","index":-1,"text":""}')), InvalidMessageError],
      [rawFrame(utf8('{"type":"inference.chunk","index":0,"text":"","__proto__":{}}')), InvalidMessageError],
      [rawFrame(utf8("[".repeat(30_000) + "]".repeat(30_000))), InvalidMessageError],
    ];
    for (const [bytes, type] of cases) {
      await expect(collect(decodeFrames([bytes], opts))).rejects.toThrow(type);
    }
    await expect(collect(decodeFrames([42 as unknown as Uint8Array], opts))).rejects.toThrow(MalformedFrameError);
  });

  it("decodeFrame takes exactly one frame", () => {
    const frame = encodeFrame({ type: "quote.request" }, { maxFrameBytes: 100 });
    expect(decodeFrame(frame, { maxFrameBytes: 100, schema: QuoteRequestSchema })).toEqual({ type: "quote.request" });
    expect(() => decodeFrame(concat(frame, Uint8Array.of(1)), { maxFrameBytes: 100, schema: QuoteRequestSchema })).toThrow(MalformedFrameError);
    expect(() => decodeFrame(frame.subarray(0, 3), { maxFrameBytes: 100, schema: QuoteRequestSchema })).toThrow(MalformedFrameError);
  });

  it("summarizes schema issues briefly", () => {
    try {
      decodeFrame(rawFrame(utf8('{"type":"session.open","request":{},"signature":"0x"}')), { maxFrameBytes: 1000, schema: SessionOpenSchema });
      expect.unreachable();
    } catch (err) {
      expect(err).toBeInstanceOf(InvalidMessageError);
      const issues = (err as InvalidMessageError).issues;
      expect(issues.length).toBeGreaterThan(0);
      expect(issues.length).toBeLessThanOrEqual(9);
      expect(issues.some((i) => i.startsWith("request.payer"))).toBe(true);
    }
  });
});

describe("errors on the wire", () => {
  it("map typed errors both ways", () => {
    for (const err of [new FrameTooLargeError("big"), new MalformedFrameError("bad"), new InvalidMessageError("no", ["x: y"]), new ProviderBusyError("busy")]) {
      const wire = errorToWire(err);
      expect(wire).toEqual({ type: "error", code: err.name, message: err.message, retryable: err.retryable });
      const back = errorFromWire(wire);
      expect(back.constructor).toBe(err.constructor);
      expect(back.name).toBe(err.name);
      expect(back.message).toBe(err.message);
    }
  });

  it("hide unknown errors behind InternalError", () => {
    const secret = new TypeError("cannot read /home/alice/.soulmesh/key at line 3");
    const wire = errorToWire(secret);
    expect(wire).toEqual({ type: "error", code: "InternalError", message: "Internal error.", retryable: true });
    expect(JSON.stringify(wire)).not.toContain("alice");
    expect(errorFromWire(wire)).toBeInstanceOf(InternalError);
    expect(errorToWire("a string").code).toBe("InternalError");
  });

  it("keep a newer peer's unknown code", () => {
    const err = errorFromWire({ type: "error", code: "QuantumError", message: "?", retryable: false });
    expect(err).toBeInstanceOf(UnknownRemoteError);
    expect(errorToWire(err).code).toBe("QuantumError");
  });
});

describe("fuzz", () => {
  const TYPED = [FrameTooLargeError, MalformedFrameError, InvalidMessageError];
  const valid = encodeFrame({ type: "inference.chunk", index: 3, text: "hello" }, opts);
  const maxFrameBytes = 4096;

  /** A random frame of one of several kinds, and whether it must fail. */
  function randomInput(rand: () => number): { bytes: Uint8Array; mustFail: boolean } {
    const int = (n: number): number => Math.floor(rand() * n);
    const bytesOf = (n: number): Uint8Array => Uint8Array.from({ length: n }, () => int(256));
    switch (int(8)) {
      case 0: // random bytes
        return { bytes: bytesOf(1 + int(64)), mustFail: true };
      case 1: // a well-prefixed random body
        return { bytes: rawFrame(bytesOf(1 + int(200))), mustFail: true };
      case 2: // declares more than the limit, sends a little
        return { bytes: concat(encodeVarint(maxFrameBytes + 1 + int(2 ** 30)), bytesOf(int(32))), mustFail: true };
      case 3: // truncated valid frame
        return { bytes: valid.subarray(0, 1 + int(valid.length - 1)), mustFail: true };
      case 4: // valid frame with random bytes flipped: may still be valid (e.g. a letter of the text)
        {
          const b = Uint8Array.from(valid);
          for (let i = 0; i <= int(3); i++) b[int(b.length)] = int(256);
          return { bytes: b, mustFail: false };
        }
      case 5: // random JSON values that are not messages
        {
          const values = [0, -1, "x", [], {}, true, { type: "inference.chunk" }, { type: "inference.chunk", index: 1.5, text: "" }, { type: "error", code: "", message: "", retryable: 1 }, { type: "inference.done" }];
          return { bytes: rawFrame(utf8(JSON.stringify(values[int(values.length)]))), mustFail: true };
        }
      case 6: // garbage appended after a valid frame
        return { bytes: concat(valid, bytesOf(1 + int(8))), mustFail: true };
      default: // oversized body that really is there
        return { bytes: rawFrame(utf8(JSON.stringify({ type: "inference.chunk", index: 0, text: "y".repeat(maxFrameBytes) }))), mustFail: true };
    }
  }

  it("answers 5000 random, malformed and oversized inputs with a typed error, never anything else", async () => {
    const rand = prng(20240601);
    let failures = 0;
    for (let n = 0; n < 5000; n++) {
      const { bytes, mustFail } = randomInput(rand);
      // Random chunking, down to single bytes, exercises every boundary in the prefix and body.
      const parts: Uint8Array[] = [];
      for (let o = 0; o < bytes.length; ) {
        const len = 1 + Math.floor(rand() * 16);
        parts.push(bytes.subarray(o, o + len));
        o += len;
      }
      try {
        const out = await collect(decodeFrames(parts, { maxFrameBytes, schema: InferenceResponseSchema }));
        if (mustFail) throw new Error(`case ${n} decoded: ${JSON.stringify(out)}`);
      } catch (err) {
        if (!TYPED.some((t) => err instanceof t)) throw new Error(`case ${n}: untyped ${String(err)}`, { cause: err });
        expect(errorToWire(err).code).not.toBe("InternalError");
        failures++;
      }
    }
    expect(failures).toBeGreaterThan(4000);
  });
});
