import { getAddress, keccak256, toUtf8Bytes, TypedDataEncoder, verifyTypedData } from "ethers";
import type { Signer, TypedDataDomain, TypedDataField } from "ethers";
import { validateVoucher } from "../chain/voucher.js";
import type { EscrowRef, Voucher } from "../chain/voucher.js";
import { InvalidMessageError, InvalidSignatureError } from "./errors.js";
import { ReceiptSchema, SessionRequestSchema, VoucherWireSchema } from "./messages.js";
import type { Prompt, Receipt, SessionRequest, VoucherWire } from "./messages.js";

/** EIP-712 typed data ready for `signer.signTypedData(domain, types, value)`. */
export interface TypedData {
  domain: TypedDataDomain;
  types: Record<string, TypedDataField[]>;
  value: Record<string, unknown>;
}

/** EIP-712 types of {@link SessionRequest}. */
export const SESSION_REQUEST_TYPES = {
  SessionRequest: [
    { name: "payer", type: "address" },
    { name: "provider", type: "address" },
    { name: "agentId", type: "uint256" },
    { name: "personaId", type: "uint256" },
    { name: "session", type: "uint64" },
    { name: "priceInputPerMillion", type: "uint128" },
    { name: "priceOutputPerMillion", type: "uint128" },
    { name: "royaltyPerMillion", type: "uint96" },
    { name: "feeBps", type: "uint16" },
    { name: "spendingCap", type: "uint256" },
    { name: "expiry", type: "uint64" },
  ],
} as const satisfies Record<string, TypedDataField[]>;

/** EIP-712 types of {@link Receipt}; usage is flattened, since nested structs buy nothing here. */
export const RECEIPT_TYPES = {
  Receipt: [
    { name: "payer", type: "address" },
    { name: "provider", type: "address" },
    { name: "agentId", type: "uint256" },
    { name: "session", type: "uint64" },
    { name: "turn", type: "uint32" },
    { name: "modelSha256", type: "bytes32" },
    { name: "adapterSha256s", type: "bytes32[]" },
    { name: "promptHash", type: "bytes32" },
    { name: "outputHash", type: "bytes32" },
    { name: "inputTokens", type: "uint64" },
    { name: "cachedInputTokens", type: "uint64" },
    { name: "outputTokens", type: "uint64" },
    { name: "cumulativeInputTokens", type: "uint64" },
    { name: "cumulativeOutputTokens", type: "uint64" },
  ],
} as const satisfies Record<string, TypedDataField[]>;

/**
 * Domains are named apart from the escrow's voucher domain ("Soulmesh InferenceEscrow") so that no
 * signature meant for one kind of message can ever be replayed as another, even by a future contract.
 */
function domain(name: string, escrow: EscrowRef): TypedDataDomain {
  return { name, version: "1", chainId: BigInt(escrow.chainId), verifyingContract: getAddress(escrow.address) };
}

function parseOrThrow<T>(schema: { safeParse(v: unknown): { success: true; data: T } | { success: false } }, value: unknown, what: string): T {
  const result = schema.safeParse(value);
  if (!result.success) throw new InvalidMessageError(`Invalid ${what}.`);
  return result.data;
}

/**
 * The EIP-712 typed data of a session request, bound to its chain and escrow.
 *
 * @example
 * const { domain, types, value } = sessionRequestTypedData(request)
 * @throws InvalidMessageError when `request` is not a valid SessionRequest.
 */
export function sessionRequestTypedData(request: SessionRequest): TypedData {
  const r = parseOrThrow(SessionRequestSchema, request, "session request");
  return {
    domain: domain("Soulmesh Session", { chainId: BigInt(r.chainId), address: r.escrow }),
    types: SESSION_REQUEST_TYPES,
    value: {
      payer: getAddress(r.payer),
      provider: getAddress(r.provider),
      agentId: BigInt(r.agentId),
      personaId: BigInt(r.personaId),
      session: BigInt(r.session),
      priceInputPerMillion: BigInt(r.priceInputPerMillion),
      priceOutputPerMillion: BigInt(r.priceOutputPerMillion),
      royaltyPerMillion: BigInt(r.royaltyPerMillion),
      feeBps: BigInt(r.feeBps),
      spendingCap: BigInt(r.spendingCap),
      expiry: BigInt(r.expiry),
    },
  };
}

/**
 * The EIP-712 digest of a session request: the session's id (`SessionAccepted.sessionId`).
 *
 * @example
 * const sessionId = hashSessionRequest(open.request)
 */
export function hashSessionRequest(request: SessionRequest): string {
  const t = sessionRequestTypedData(request);
  return TypedDataEncoder.hash(t.domain, t.types, t.value);
}

/**
 * Signs a session request as its payer.
 *
 * @example
 * const open: SessionOpen = { type: "session.open", request, signature: await signSessionRequest(wallet, request) }
 * @throws InvalidSignatureError when `signer` is not the payer; InvalidMessageError for a bad request.
 */
export async function signSessionRequest(signer: Signer, request: SessionRequest): Promise<string> {
  const t = sessionRequestTypedData(request);
  const address = getAddress(await signer.getAddress());
  if (address !== t.value["payer"]) {
    throw new InvalidSignatureError(`The signer ${address} is not the session's payer ${String(t.value["payer"])}.`);
  }
  return signer.signTypedData(t.domain, t.types, t.value);
}

/**
 * The address that signed a session request, or undefined for a malformed signature.
 *
 * @example
 * if (recoverSessionRequestSigner(open.request, open.signature) !== getAddress(open.request.payer)) reject()
 */
export function recoverSessionRequestSigner(request: SessionRequest, signature: string): string | undefined {
  const t = sessionRequestTypedData(request);
  try {
    return verifyTypedData(t.domain, t.types, t.value, signature);
  } catch {
    return undefined;
  }
}

/**
 * Whether `signature` is the payer's over `request`.
 *
 * @example
 * if (!verifySessionRequest(open.request, open.signature)) throw new InvalidSignatureError("…")
 */
export function verifySessionRequest(request: SessionRequest, signature: string): boolean {
  const signer = recoverSessionRequestSigner(request, signature);
  return signer !== undefined && signer === getAddress(request.payer);
}

/**
 * The EIP-712 typed data of a turn's receipt, bound to the session's chain and escrow.
 *
 * @example
 * const { domain, types, value } = receiptTypedData(receipt, { chainId: 31337n, address: escrow })
 */
export function receiptTypedData(receipt: Receipt, escrow: EscrowRef): TypedData {
  const r = parseOrThrow(ReceiptSchema, receipt, "receipt");
  return {
    domain: domain("Soulmesh Receipt", escrow),
    types: RECEIPT_TYPES,
    value: {
      payer: getAddress(r.payer),
      provider: getAddress(r.provider),
      agentId: BigInt(r.agentId),
      session: BigInt(r.session),
      turn: r.turn,
      modelSha256: r.modelSha256.toLowerCase(),
      adapterSha256s: r.adapterSha256s.map((h) => h.toLowerCase()),
      promptHash: r.promptHash.toLowerCase(),
      outputHash: r.outputHash.toLowerCase(),
      inputTokens: BigInt(r.usage.inputTokens),
      cachedInputTokens: BigInt(r.usage.cachedInputTokens),
      outputTokens: BigInt(r.usage.outputTokens),
      cumulativeInputTokens: BigInt(r.cumulativeInputTokens),
      cumulativeOutputTokens: BigInt(r.cumulativeOutputTokens),
    },
  };
}

/**
 * Signs a receipt as its provider.
 *
 * @example
 * const signature = await signReceipt(providerWallet, receipt, escrow)
 * @throws InvalidSignatureError when `signer` is not the receipt's provider.
 */
export async function signReceipt(signer: Signer, receipt: Receipt, escrow: EscrowRef): Promise<string> {
  const t = receiptTypedData(receipt, escrow);
  const address = getAddress(await signer.getAddress());
  if (address !== t.value["provider"]) {
    throw new InvalidSignatureError(`The signer ${address} is not the receipt's provider ${String(t.value["provider"])}.`);
  }
  return signer.signTypedData(t.domain, t.types, t.value);
}

/**
 * The address that signed a receipt, or undefined for a malformed signature.
 *
 * @example
 * recoverReceiptSigner(done.receipt, escrow, done.signature) === getAddress(done.receipt.provider)
 */
export function recoverReceiptSigner(receipt: Receipt, escrow: EscrowRef, signature: string): string | undefined {
  const t = receiptTypedData(receipt, escrow);
  try {
    return verifyTypedData(t.domain, t.types, t.value, signature);
  } catch {
    return undefined;
  }
}

/**
 * Whether `signature` is the receipt's provider's.
 *
 * @example
 * if (!verifyReceipt(done.receipt, escrow, done.signature)) failover()
 */
export function verifyReceipt(receipt: Receipt, escrow: EscrowRef, signature: string): boolean {
  const signer = recoverReceiptSigner(receipt, escrow, signature);
  return signer !== undefined && signer === getAddress(receipt.provider);
}

/**
 * keccak-256 of a prompt's canonical JSON (fixed key order, no whitespace), so that client and provider
 * hash the same bytes whatever key order their objects had.
 *
 * @example
 * hashPrompt({ kind: "text", text: "Hello" }) // "0x…"
 */
export function hashPrompt(prompt: Prompt): string {
  const canonical =
    prompt.kind === "chat"
      ? { kind: "chat", messages: prompt.messages.map((m) => ({ role: m.role, content: m.content })) }
      : { kind: "text", text: prompt.text };
  return keccak256(toUtf8Bytes(JSON.stringify(canonical)));
}

/**
 * keccak-256 of the UTF-8 of a turn's whole output (all chunks' text, concatenated).
 *
 * @example
 * hashOutput(chunks.map((c) => c.text).join(""))
 */
export function hashOutput(text: string): string {
  return keccak256(toUtf8Bytes(text));
}

/**
 * A voucher with its bigints as decimal strings, for the wire.
 *
 * @example
 * const msg: VoucherMessage = { type: "voucher", voucher: voucherToWire(v), signature }
 * @throws InvalidVoucherError for out-of-range fields.
 */
export function voucherToWire(voucher: Voucher): VoucherWire {
  const v = validateVoucher(voucher);
  return {
    payer: v.payer,
    provider: v.provider,
    agentId: v.agentId.toString(),
    session: v.session.toString(),
    inputTokens: v.inputTokens.toString(),
    outputTokens: v.outputTokens.toString(),
    priceInputPerMillion: v.priceInputPerMillion.toString(),
    priceOutputPerMillion: v.priceOutputPerMillion.toString(),
    royaltyPerMillion: v.royaltyPerMillion.toString(),
    feeBps: v.feeBps.toString(),
    expiry: v.expiry.toString(),
  };
}

/**
 * The voucher a wire message carries, ready for `verifyVoucher`.
 *
 * @example
 * verifyVoucher(voucherFromWire(msg.voucher), escrow, msg.signature)
 * @throws InvalidMessageError when `wire` is not a valid VoucherWire.
 */
export function voucherFromWire(wire: VoucherWire): Voucher {
  const w = parseOrThrow(VoucherWireSchema, wire, "voucher");
  return validateVoucher({
    payer: w.payer,
    provider: w.provider,
    agentId: BigInt(w.agentId),
    session: BigInt(w.session),
    inputTokens: BigInt(w.inputTokens),
    outputTokens: BigInt(w.outputTokens),
    priceInputPerMillion: BigInt(w.priceInputPerMillion),
    priceOutputPerMillion: BigInt(w.priceOutputPerMillion),
    royaltyPerMillion: BigInt(w.royaltyPerMillion),
    feeBps: BigInt(w.feeBps),
    expiry: BigInt(w.expiry),
  });
}
