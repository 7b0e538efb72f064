import { getAddress, isAddress, TypedDataEncoder, verifyTypedData } from "ethers";
import type { Signer, TypedDataDomain } from "ethers";
import { InvalidVoucherError } from "./errors.js";

/**
 * A payer's promise to pay for a session's usage so far: cumulative token totals, every rate that prices
 * them (provider prices, royalty and fee) and an expiry. The payer signs it with EIP-712; only its provider
 * settles it, from the payer's lane with that provider, so what a voucher takes is fixed when it is signed:
 * {@link voucherCost} of it, to the unit.
 *
 * Sessions run on a channel (payer, provider, agent) and are numbered, strictly increasing per channel:
 * once a session settles, earlier sessions of the channel cannot. See {@link nextSessionNumber}.
 */
export interface Voucher {
  payer: string;
  provider: string;
  agentId: bigint;
  /** The session's number on its channel (payer, provider, agent). */
  session: bigint;
  inputTokens: bigint;
  outputTokens: bigint;
  priceInputPerMillion: bigint;
  priceOutputPerMillion: bigint;
  /** Royalty per million tokens paid to the persona's holder; the escrow refuses less than the one in force. */
  royaltyPerMillion: bigint;
  /** Protocol fee in basis points; the escrow refuses less than the one in force. */
  feeBps: bigint;
  /** Unix seconds. */
  expiry: bigint;
}

/** The escrow a voucher is bound to: its chain and address. */
export interface EscrowRef {
  chainId: bigint | number;
  address: string;
}

/** EIP-712 types of {@link Voucher}, field for field as the contract's `VOUCHER_TYPEHASH`. */
export const VOUCHER_TYPES = {
  Voucher: [
    { name: "payer", type: "address" },
    { name: "provider", type: "address" },
    { name: "agentId", type: "uint256" },
    { name: "session", type: "uint64" },
    { name: "inputTokens", type: "uint64" },
    { name: "outputTokens", type: "uint64" },
    { name: "priceInputPerMillion", type: "uint128" },
    { name: "priceOutputPerMillion", type: "uint128" },
    { name: "royaltyPerMillion", type: "uint96" },
    { name: "feeBps", type: "uint16" },
    { name: "expiry", type: "uint64" },
  ],
} as const satisfies Record<string, { name: string; type: string }[]>;

/** The escrow's EIP-712 domain version; "2" since vouchers carry royalty and fee and settle from lanes. */
export const VOUCHER_DOMAIN_VERSION = "2";

const UINT16_MAX = (1n << 16n) - 1n;
const UINT64_MAX = (1n << 64n) - 1n;
const UINT96_MAX = (1n << 96n) - 1n;
const UINT128_MAX = (1n << 128n) - 1n;
const UINT256_MAX = (1n << 256n) - 1n;

/**
 * The EIP-712 domain of the escrow at `escrow`: vouchers signed for it are worthless on any other chain
 * or contract.
 *
 * @example
 * voucherDomain({ chainId: 31337, address: deployment.contracts.inferenceEscrow })
 */
export function voucherDomain(escrow: EscrowRef): TypedDataDomain {
  return {
    name: "Soulmesh InferenceEscrow",
    version: VOUCHER_DOMAIN_VERSION,
    chainId: BigInt(escrow.chainId),
    verifyingContract: getAddress(escrow.address),
  };
}

/**
 * Checks every field's type and range and returns the voucher with checksummed addresses.
 *
 * @example
 * const v = validateVoucher(untrusted)
 * @throws InvalidVoucherError listing every problem.
 */
export function validateVoucher(v: Voucher): Voucher {
  const problems: string[] = [];
  for (const field of ["payer", "provider"] as const) {
    if (typeof v[field] !== "string" || !isAddress(v[field])) problems.push(`${field} is not an address`);
  }
  const ranges: [keyof Voucher, bigint][] = [
    ["agentId", UINT256_MAX],
    ["session", UINT64_MAX],
    ["inputTokens", UINT64_MAX],
    ["outputTokens", UINT64_MAX],
    ["priceInputPerMillion", UINT128_MAX],
    ["priceOutputPerMillion", UINT128_MAX],
    ["royaltyPerMillion", UINT96_MAX],
    ["feeBps", UINT16_MAX],
    ["expiry", UINT64_MAX],
  ];
  for (const [field, max] of ranges) {
    const value = v[field];
    if (typeof value !== "bigint") problems.push(`${field} is not a bigint`);
    else if (value < 0n || value > max) problems.push(`${field} is out of range (0..${max})`);
  }
  if (problems.length > 0) throw new InvalidVoucherError(problems);
  return { ...v, payer: getAddress(v.payer), provider: getAddress(v.provider) };
}

/**
 * The EIP-712 digest the payer signs; equal to the contract's `hashVoucher`.
 *
 * @example
 * hashVoucher(voucher, { chainId: 31337n, address: escrowAddress }) // "0x…"
 */
export function hashVoucher(voucher: Voucher, escrow: EscrowRef): string {
  return TypedDataEncoder.hash(voucherDomain(escrow), VOUCHER_TYPES, validateVoucher(voucher));
}

/**
 * Signs `voucher` as its payer.
 *
 * @example
 * const signature = await signVoucher(wallet, voucher, { chainId, address: escrowAddress })
 * @throws InvalidVoucherError for out-of-range fields, or an Error when `signer` is not the payer.
 */
export async function signVoucher(signer: Signer, voucher: Voucher, escrow: EscrowRef): Promise<string> {
  const v = validateVoucher(voucher);
  const address = getAddress(await signer.getAddress());
  if (address !== v.payer) throw new InvalidVoucherError([`the signer ${address} is not the payer ${v.payer}`]);
  return signer.signTypedData(voucherDomain(escrow), VOUCHER_TYPES, v);
}

/**
 * Recovers the address that signed `voucher` (ECDSA). Returns undefined for a malformed signature.
 *
 * @example
 * recoverVoucherSigner(voucher, escrow, signature) === voucher.payer
 */
export function recoverVoucherSigner(voucher: Voucher, escrow: EscrowRef, signature: string): string | undefined {
  try {
    return verifyTypedData(voucherDomain(escrow), VOUCHER_TYPES, validateVoucher(voucher), signature);
  } catch (err) {
    if (err instanceof InvalidVoucherError) throw err;
    return undefined;
  }
}

/**
 * Whether `signature` is the payer's ECDSA signature over `voucher` for `escrow`. Smart-contract wallets
 * (ERC-1271) can only be checked on chain, with the escrow's `isValidVoucherSignature`.
 *
 * @example
 * if (!verifyVoucher(voucher, escrow, signature)) throw new Error("forged voucher")
 */
export function verifyVoucher(voucher: Voucher, escrow: EscrowRef, signature: string): boolean {
  const signer = recoverVoucherSigner(voucher, escrow, signature);
  return signer !== undefined && signer === getAddress(voucher.payer);
}

/** What the escrow holds of a session already settled: its token totals and, optionally, what it cost. */
export interface SettledTotals {
  inputTokens: bigint;
  outputTokens: bigint;
  /**
   * What the session has already taken from the lane (the escrow's `settledOf(...).paid`). Omitted, it is
   * taken to be what the settled totals cost at this voucher's rates, as it is whenever a session keeps its
   * rates.
   */
  paid?: bigint;
}

/** What a voucher pays when it settles. */
export interface VoucherCost {
  providerAmount: bigint;
  royaltyAmount: bigint;
  feeAmount: bigint;
  /** Taken from the payer's lane: the sum of the three. */
  total: bigint;
}

/** Every rate a voucher carries: what prices its tokens. */
export type VoucherRates = Pick<Voucher, "priceInputPerMillion" | "priceOutputPerMillion" | "royaltyPerMillion" | "feeBps">;

/** The share each party is owed for `inputTokens`/`outputTokens` at `v`'s rates. */
function cumulativeCost(inputTokens: bigint, outputTokens: bigint, v: VoucherRates): Omit<VoucherCost, "total"> {
  const providerAmount = (inputTokens * v.priceInputPerMillion + outputTokens * v.priceOutputPerMillion) / 1_000_000n;
  const royaltyAmount = ((inputTokens + outputTokens) * v.royaltyPerMillion) / 1_000_000n;
  const feeAmount = ((providerAmount + royaltyAmount) * v.feeBps) / 10_000n;
  return { providerAmount, royaltyAmount, feeAmount };
}

/**
 * What settling `voucher` after `settled` takes from the payer's lane, to the unit, as the escrow computes
 * it: each share is priced on the cumulative totals at the voucher's rates, minus what the settled totals
 * priced at; the session's cost is then held to the voucher's own cumulative cost (any excess, which only a
 * rate changed mid-session can cause, comes off the provider's share first).
 *
 * @example
 * voucherCost(voucher, { inputTokens: 0n, outputTokens: 0n }).total
 */
export function voucherCost(voucher: Voucher, settled: SettledTotals): VoucherCost {
  const now = cumulativeCost(voucher.inputTokens, voucher.outputTokens, voucher);
  const before = cumulativeCost(settled.inputTokens, settled.outputTokens, voucher);
  let providerAmount = now.providerAmount - before.providerAmount;
  let royaltyAmount = now.royaltyAmount - before.royaltyAmount;
  let feeAmount = now.feeAmount - before.feeAmount;
  const cumulative = now.providerAmount + now.royaltyAmount + now.feeAmount;
  const paid = settled.paid ?? before.providerAmount + before.royaltyAmount + before.feeAmount;
  const room = cumulative > paid ? cumulative - paid : 0n;
  let excess = providerAmount + royaltyAmount + feeAmount - room;
  if (excess > 0n) {
    const take = (share: bigint): bigint => {
      const cut = excess < share ? excess : share;
      excess -= cut;
      return share - cut;
    };
    providerAmount = take(providerAmount);
    royaltyAmount = take(royaltyAmount);
    feeAmount = take(feeAmount);
  }
  return { providerAmount, royaltyAmount, feeAmount, total: providerAmount + royaltyAmount + feeAmount };
}

/**
 * What a session's cumulative totals cost at `rates` in all (provider, royalty and fee), as one voucher
 * carrying them would take from a fresh session: the figure a client shows and caps.
 *
 * @example
 * sessionCost({ inputTokens: 1200n, outputTokens: 300n }, { priceInputPerMillion: 500_000n,
 *   priceOutputPerMillion: 1_500_000n, royaltyPerMillion: 200_000n, feeBps: 250n }) // 1383n
 */
export function sessionCost(totals: { inputTokens: bigint; outputTokens: bigint }, rates: VoucherRates): bigint {
  const c = cumulativeCost(totals.inputTokens, totals.outputTokens, rates);
  return c.providerAmount + c.royaltyAmount + c.feeAmount;
}

/**
 * A number for a new session on a channel: the current time in milliseconds, or one more than the last
 * session number seen on the channel when the clock is behind it. Providers refuse a session number that
 * is not above the last one they saw on the channel.
 *
 * @example
 * const session = nextSessionNumber(lastSettledSession) // 1763888400123n
 */
export function nextSessionNumber(lastSeen: bigint = 0n, now: number = Date.now()): bigint {
  const byClock = BigInt(Math.floor(now));
  return byClock > lastSeen ? byClock : lastSeen + 1n;
}
