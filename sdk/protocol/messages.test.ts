import { Wallet } from "ethers";
import { describe, expect, it } from "vitest";
import { signVoucher, verifyVoucher } from "../chain/voucher.js";
import type { Voucher } from "../chain/voucher.js";
import { decodeFrame, encodeFrame, errorFromWire, errorToWire } from "./codec.js";
import {
  InvalidMessageError,
  InvalidSignatureError,
  NotSessionOpenerError,
  SessionNumberTooLowError,
  SessionSupersededError,
} from "./errors.js";
import { MAX_CONTROL_FRAME_BYTES, MAX_PROMPT_FRAME_BYTES } from "./limits.js";
import {
  Uint64String,
  InferenceRequestSchema,
  InferenceResponseSchema,
  PROTOCOL_SCHEMAS,
  QuoteRequestSchema,
  QuoteResponseSchema,
  SessionOpenSchema,
  SessionResponseSchema,
  VoucherMessageSchema,
  VoucherResponseSchema,
} from "./messages.js";
import type { InferenceDone, Prompt, Receipt, SessionRequest } from "./messages.js";
import {
  hashOutput,
  hashPrompt,
  hashSessionRequest,
  recoverReceiptSigner,
  recoverSessionRequestSigner,
  signReceipt,
  signSessionRequest,
  verifyReceipt,
  verifySessionRequest,
  voucherFromWire,
  voucherToWire,
} from "./signing.js";

const payer = Wallet.createRandom();
const provider = Wallet.createRandom();
const escrowAddress = "0x5FbDB2315678afecb367f032d93F642f64180aa3";
const escrow = { chainId: 31337n, address: escrowAddress };
const h = (byte: string): string => "0x" + byte.repeat(32);

function sessionRequest(overrides: Partial<SessionRequest> = {}): SessionRequest {
  return {
    payer: payer.address,
    provider: provider.address,
    agentId: "7",
    personaId: "3",
    session: "1763888400000",
    priceInputPerMillion: "500000",
    priceOutputPerMillion: "1500000",
    royaltyPerMillion: "200000",
    feeBps: "250",
    spendingCap: "1000000000000000000",
    expiry: "2000000000",
    chainId: "31337",
    escrow: escrowAddress,
    ...overrides,
  };
}

const prompt: Prompt = {
  kind: "chat",
  messages: [
    { role: "system", content: "You are Ada." },
    { role: "user", content: "Hello, héllo 👋" },
  ],
};

function receipt(overrides: Partial<Receipt> = {}): Receipt {
  return {
    payer: payer.address,
    provider: provider.address,
    agentId: "7",
    session: "1763888400000",
    turn: 0,
    modelSha256: h("ab"),
    adapterSha256s: [h("cd")],
    promptHash: hashPrompt(prompt),
    outputHash: hashOutput("Hi there"),
    usage: { inputTokens: 120, cachedInputTokens: 100, outputTokens: 3 },
    cumulativeInputTokens: "120",
    cumulativeOutputTokens: "3",
    ...overrides,
  };
}

/** Encodes then decodes `message` with `schema`, as a peer would. */
function roundTrip(message: unknown, schema: Parameters<typeof decodeFrame>[1]["schema"], max = MAX_CONTROL_FRAME_BYTES): unknown {
  return decodeFrame(encodeFrame(message, { maxFrameBytes: max, schema }), { maxFrameBytes: max, schema });
}

describe("messages round trip through frames", () => {
  it("quote", () => {
    const req = { type: "quote.request", models: [h("ab")] };
    expect(roundTrip(req, QuoteRequestSchema)).toEqual(req);
    const quote = {
      type: "quote",
      provider: provider.address,
      models: [h("ab")],
      cachedAdapters: [h("cd"), h("ef")],
      priceInputPerMillion: "500000",
      priceOutputPerMillion: "340282366920938463463374607431768211455",
      queueLength: 2,
      maxTokens: 4096,
    };
    expect(roundTrip(quote, QuoteResponseSchema)).toEqual(quote);
  });

  it("session", async () => {
    const open = { type: "session.open", request: sessionRequest(), signature: await signSessionRequest(payer, sessionRequest()) };
    expect(roundTrip(open, SessionOpenSchema)).toEqual(open);
    const accepted = { type: "session.accepted", sessionId: hashSessionRequest(sessionRequest()), expiry: "2000000000" };
    expect(roundTrip(accepted, SessionResponseSchema)).toEqual(accepted);
    const rejected = { type: "session.rejected", code: "InsufficientEscrowError", message: "top up", retryable: false };
    expect(roundTrip(rejected, SessionResponseSchema)).toEqual(rejected);
  });

  it("session close: the request is an open or a close, the close answered with served and vouched totals, and a too-low number with the latest", async () => {
    const open = { type: "session.open", request: sessionRequest(), signature: await signSessionRequest(payer, sessionRequest()) };
    const close = { type: "session.close", sessionId: h("22") };
    const request = PROTOCOL_SCHEMAS.session.request;
    expect(roundTrip(open, request)).toEqual(open);
    expect(roundTrip(close, request)).toEqual(close);
    for (const bad of [{ ...close, sessionId: "0x12" }, { ...close, extra: 1 }, { type: "session.close" }, { ...close, type: "session.closing" }]) {
      expect(() => encodeFrame(bad, { maxFrameBytes: MAX_CONTROL_FRAME_BYTES, schema: request })).toThrow(InvalidMessageError);
    }
    const closed = {
      type: "session.closed",
      sessionId: h("22"),
      served: { inputTokens: "40", outputTokens: "18446744073709551615" },
      vouched: { inputTokens: "12", outputTokens: "0" },
    };
    expect(roundTrip(closed, SessionResponseSchema)).toEqual(closed);
    expect(() => encodeFrame({ ...closed, served: { inputTokens: "-1", outputTokens: "0" } }, { maxFrameBytes: MAX_CONTROL_FRAME_BYTES, schema: SessionResponseSchema })).toThrow(InvalidMessageError);
    const tooLow = { type: "session.rejected", code: "SessionNumberTooLowError", message: "number above 7", retryable: true, latestSession: "7" };
    expect(roundTrip(tooLow, SessionResponseSchema)).toEqual(tooLow);
    expect(() => encodeFrame({ ...tooLow, latestSession: "18446744073709551616" }, { maxFrameBytes: MAX_CONTROL_FRAME_BYTES, schema: SessionResponseSchema })).toThrow(InvalidMessageError);
  });

  it("the session protocol's refusals travel under their own codes and are rebuilt as their classes", () => {
    for (const err of [new SessionSupersededError("replaced"), new NotSessionOpenerError("not yours")]) {
      const wire = errorToWire(err);
      expect(wire).toEqual({ type: "error", code: err.name, message: err.message, retryable: false });
      expect(errorFromWire(wire)).toBeInstanceOf(err.constructor);
    }
    const low = new SessionNumberTooLowError("above 9", 9n);
    expect(low).toMatchObject({ name: "SessionNumberTooLowError", latestSession: 9n, retryable: true });
    expect(errorFromWire(errorToWire(low))).toBeInstanceOf(SessionNumberTooLowError);
  });

  it("inference", async () => {
    const req = {
      type: "inference.request",
      sessionId: h("11"),
      turn: 0,
      model: h("ab"),
      prompt,
      maxTokens: 256,
    };
    expect(roundTrip(req, InferenceRequestSchema, MAX_PROMPT_FRAME_BYTES)).toEqual({
      ...req,
      adapters: [],
      sampling: {},
      stop: [],
    });
    const full = { ...req, adapters: [h("cd")], sampling: { temperature: 0.7, topP: 0.9, seed: 42 }, stop: ["\nUser:"], prompt: { kind: "text", text: "raw" } };
    expect(roundTrip(full, InferenceRequestSchema, MAX_PROMPT_FRAME_BYTES)).toEqual(full);
    const chunk = { type: "inference.chunk", index: 0, text: "Hi" };
    expect(roundTrip(chunk, InferenceResponseSchema)).toEqual(chunk);
    const r = receipt();
    const done: InferenceDone = {
      type: "inference.done",
      usage: r.usage,
      stopReason: "stop",
      receipt: r,
      signature: await signReceipt(provider, r, escrow),
    };
    expect(roundTrip(done, InferenceResponseSchema)).toEqual(done);
  });

  it("voucher", async () => {
    const v: Voucher = {
      payer: payer.address,
      provider: provider.address,
      agentId: 7n,
      session: 1_763_888_400_000n,
      inputTokens: 120n,
      outputTokens: 3n,
      priceInputPerMillion: 500_000n,
      priceOutputPerMillion: 1_500_000n,
      royaltyPerMillion: 200_000n,
      feeBps: 250n,
      expiry: 2_000_000_000n,
    };
    const msg = { type: "voucher", voucher: voucherToWire(v), signature: await signVoucher(payer, v, escrow) };
    const decoded = roundTrip(msg, VoucherMessageSchema) as typeof msg;
    expect(decoded).toEqual(msg);
    expect(voucherFromWire(decoded.voucher)).toEqual(v);
    expect(verifyVoucher(voucherFromWire(decoded.voucher), escrow, decoded.signature)).toBe(true);
    // The rates travel with the voucher and are signed: a voucher without them (an old client's) is refused,
    // and one whose royalty was raised on the way no longer verifies.
    const { royaltyPerMillion: _r, feeBps: _f, ...rateless } = msg.voucher;
    expect(() => roundTrip({ ...msg, voucher: rateless }, VoucherMessageSchema)).toThrow(InvalidMessageError);
    expect(() => roundTrip({ ...msg, voucher: { ...msg.voucher, feeBps: "65536" } }, VoucherMessageSchema)).toThrow(InvalidMessageError);
    expect(verifyVoucher({ ...v, royaltyPerMillion: v.royaltyPerMillion + 1n }, escrow, msg.signature)).toBe(false);
    const ack = { type: "voucher.ack", session: "1763888400000", inputTokens: "120", outputTokens: "3" };
    expect(roundTrip(ack, VoucherResponseSchema)).toEqual(ack);
  });

  it("errors on every protocol's response side", () => {
    const err = { type: "error", code: "ProviderBusyError", message: "queue full", retryable: true };
    for (const p of Object.values(PROTOCOL_SCHEMAS)) expect(roundTrip(err, p.response)).toEqual(err);
  });
});

describe("field validation", () => {
  const bad: [string, unknown][] = [
    ["negative bigint", { ...sessionRequest(), agentId: "-1" }],
    ["leading zero", { ...sessionRequest(), session: "01" }],
    ["uint64 overflow", { ...sessionRequest(), session: "18446744073709551616" }],
    ["uint128 overflow", { ...sessionRequest(), priceInputPerMillion: (1n << 128n).toString() }],
    ["royalty above uint96", { ...sessionRequest(), royaltyPerMillion: (1n << 96n).toString() }],
    ["fee above uint16", { ...sessionRequest(), feeBps: "65536" }],
    ["missing royalty", { ...sessionRequest(), royaltyPerMillion: undefined }],
    ["missing fee", { ...sessionRequest(), feeBps: undefined }],
    ["number instead of string", { ...sessionRequest(), expiry: 2000000000 }],
    ["bad address", { ...sessionRequest(), payer: "0x1234" }],
    ["bad checksum", { ...sessionRequest(), payer: payer.address.slice(0, 2) + flipCase(payer.address.slice(2)) }],
    ["extra field", { ...sessionRequest(), extra: 1 }],
    ["missing field", { ...sessionRequest(), escrow: undefined }],
  ];
  for (const [what, request] of bad) {
    it(`refuses a session request with a ${what}`, () => {
      const open = { type: "session.open", request, signature: "0x" + "11".repeat(65) };
      expect(() => encodeFrame(open, { maxFrameBytes: MAX_CONTROL_FRAME_BYTES, schema: SessionOpenSchema })).toThrow(InvalidMessageError);
    });
  }

  it("refuses numbers that are not decimal integers without throwing, and never parses oversized digit strings", () => {
    for (const bad of ["1.5", "1e3", "NaN", "-1", "01", "0x10", " 1", "9".repeat(79), "9".repeat(65_536)]) {
      expect(Uint64String.safeParse(bad).success, bad).toBe(false);
    }
    expect(Uint64String.safeParse("18446744073709551616").success).toBe(false);
    expect(Uint64String.safeParse("18446744073709551615").success).toBe(true);
    // A receipt whose numbers are malformed fails its fields' checks; its cross-field check must not throw.
    expect(ReceiptParse(receipt({ cumulativeInputTokens: "1.5" }))).toBe(false);
  });

  it("refuses cached tokens above input tokens, and cumulative totals below the turn", () => {
    expect(ReceiptParse(receipt({ usage: { inputTokens: 1, cachedInputTokens: 2, outputTokens: 0 } }))).toBe(false);
    expect(ReceiptParse(receipt({ cumulativeOutputTokens: "2" }))).toBe(false);
    // Billed input is inputTokens − cachedInputTokens = 20: a later turn of a long chat carries a cumulative
    // total below its whole prompt but never below what the turn itself billed.
    expect(ReceiptParse(receipt({ cumulativeInputTokens: "20" }))).toBe(true);
    expect(ReceiptParse(receipt({ cumulativeInputTokens: "19" }))).toBe(false);
    expect(ReceiptParse(receipt())).toBe(true);
  });
});

function ReceiptParse(r: Receipt): boolean {
  return InferenceResponseSchema.safeParse({ type: "inference.done", usage: r.usage, stopReason: "stop", receipt: r, signature: "0x" + "11".repeat(65) }).success;
}

function flipCase(s: string): string {
  // Flips the first letter's case: breaks the EIP-55 checksum of any address containing a letter.
  const i = s.search(/[a-fA-F]/);
  const c = s[i]!;
  return s.slice(0, i) + (c === c.toLowerCase() ? c.toUpperCase() : c.toLowerCase()) + s.slice(i + 1);
}

describe("session request signatures", () => {
  it("signs and recovers the payer", async () => {
    const req = sessionRequest();
    const signature = await signSessionRequest(payer, req);
    expect(recoverSessionRequestSigner(req, signature)).toBe(payer.address);
    expect(verifySessionRequest(req, signature)).toBe(true);
  });

  it("fails for a tampered field, another chain or escrow, another signer or garbage", async () => {
    const req = sessionRequest();
    const signature = await signSessionRequest(payer, req);
    expect(verifySessionRequest({ ...req, spendingCap: "1000000000000000001" }, signature)).toBe(false);
    expect(verifySessionRequest({ ...req, personaId: "4" }, signature)).toBe(false);
    // Royalty and fee are signed: a provider cannot raise either under the payer's signature.
    expect(verifySessionRequest({ ...req, royaltyPerMillion: "200001" }, signature)).toBe(false);
    expect(verifySessionRequest({ ...req, feeBps: "251" }, signature)).toBe(false);
    expect(verifySessionRequest({ ...req, chainId: "1" }, signature)).toBe(false);
    expect(verifySessionRequest({ ...req, escrow: "0x" + "12".repeat(20) }, signature)).toBe(false);
    expect(verifySessionRequest(req, await provider.signMessage("x"))).toBe(false);
    expect(verifySessionRequest(req, "0x" + "00".repeat(65))).toBe(false);
    expect(hashSessionRequest(req)).not.toBe(hashSessionRequest({ ...req, chainId: "1" }));
  });

  it("refuses to sign for someone else's payer", async () => {
    await expect(signSessionRequest(provider, sessionRequest())).rejects.toThrow(InvalidSignatureError);
  });
});

describe("receipt signatures", () => {
  it("signs and recovers the provider", async () => {
    const r = receipt();
    const signature = await signReceipt(provider, r, escrow);
    expect(recoverReceiptSigner(r, escrow, signature)).toBe(provider.address);
    expect(verifyReceipt(r, escrow, signature)).toBe(true);
  });

  it("fails for a tampered hash or usage, or another chain id", async () => {
    const r = receipt();
    const signature = await signReceipt(provider, r, escrow);
    expect(verifyReceipt({ ...r, outputHash: hashOutput("Hi there!") }, escrow, signature)).toBe(false);
    expect(verifyReceipt({ ...r, adapterSha256s: [] }, escrow, signature)).toBe(false);
    expect(verifyReceipt({ ...r, usage: { ...r.usage, outputTokens: 4 }, cumulativeOutputTokens: "4" }, escrow, signature)).toBe(false);
    expect(verifyReceipt(r, { ...escrow, chainId: 1n }, signature)).toBe(false);
    expect(verifyReceipt(r, escrow, await payer.signTypedData({ name: "x" }, { A: [{ name: "a", type: "uint8" }] }, { a: 1 }))).toBe(false);
  });

  it("hashes prompts canonically, whatever the key order", () => {
    const reordered = { messages: prompt.kind === "chat" ? prompt.messages.map((m) => ({ content: m.content, role: m.role })) : [], kind: "chat" } as Prompt;
    expect(hashPrompt(reordered)).toBe(hashPrompt(prompt));
    expect(hashPrompt({ kind: "text", text: "a" })).not.toBe(hashPrompt({ kind: "text", text: "b" }));
  });
});
