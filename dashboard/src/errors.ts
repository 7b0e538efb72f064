import { isError } from "ethers";
import { decodeRevert } from "../../sdk/chain/revert.js";
import { ContractRevertError } from "../../sdk/chain/errors.js";
import { SoulmeshError } from "../../sdk/errors.js";

/** A form field holds text that is not an amount of the token. */
export class InvalidAmountInputError extends SoulmeshError {
  override readonly name = "InvalidAmountInputError";
  constructor(
    readonly field: string,
    readonly input: string,
    readonly decimals: number,
  ) {
    super(
      `${field}: ${JSON.stringify(input)} is not an amount. Type a decimal number of tUSD such as 0.2, ` +
        `with at most ${decimals} digits after the point (0 is allowed).`,
    );
  }
}

/**
 * A royalty above the persona registry's `maxRoyaltyPerMillion()`: the registry would revert, so the page refuses
 * it before anything is uploaded or sent.
 */
export class RoyaltyAboveMaxError extends SoulmeshError {
  override readonly name = "RoyaltyAboveMaxError";
  constructor(
    readonly field: string,
    readonly royaltyPerMillion: bigint,
    readonly maxRoyaltyPerMillion: bigint,
    readonly shown: { royalty: string; max: string },
  ) {
    super(
      `${field}: ${shown.royalty} per 1M tokens is above the most this deployment allows, ${shown.max} per 1M tokens ` +
        "(the persona registry's maxRoyaltyPerMillion). Ask for at most that. Nothing was sent.",
    );
  }
}

/** The base model field is neither a suggested model nor a SHA-256 hash. */
export class InvalidBaseModelError extends SoulmeshError {
  override readonly name = "InvalidBaseModelError";
  constructor(readonly input: string) {
    super(
      `Base model ${JSON.stringify(input)} is not known. Pick one from the suggestions or paste the model file's ` +
        "SHA-256 as 0x followed by 64 hex digits.",
    );
  }
}

/** The publish form was sent without a character card. */
export class MissingCardError extends SoulmeshError {
  override readonly name = "MissingCardError";
  constructor() {
    super("Choose a character card file (Character Card V2/V3, JSON or PNG) before publishing.");
  }
}

/** The dashboard server answered with an error of its own (its name is `remoteName`). */
export class DashboardApiError extends SoulmeshError {
  override readonly name = "DashboardApiError";
  constructor(
    readonly remoteName: string,
    message: string,
    readonly status: number,
  ) {
    super(message);
  }
}

/** The dashboard server did not answer at all. */
export class DashboardUnreachableError extends SoulmeshError {
  override readonly name = "DashboardUnreachableError";
  constructor(
    readonly path: string,
    cause?: unknown,
  ) {
    super(`The dashboard server did not answer ${path}. Is \`soulmesh dashboard\` still running? Restart it and reload this page.`, {
      cause,
    });
  }
}

/** "Connect browser wallet" without a wallet extension. */
export class NoBrowserWalletError extends SoulmeshError {
  override readonly name = "NoBrowserWalletError";
  constructor() {
    super("No browser wallet found (window.ethereum). Install or enable one (e.g. MetaMask), or use a dev account on the devnet.");
  }
}

/** The wallet stays on another chain than the deployment's. */
export class WrongChainError extends SoulmeshError {
  override readonly name = "WrongChainError";
  constructor(
    readonly expected: number,
    readonly actual: number,
  ) {
    super(`The wallet is on chain ${actual}, but Soulmesh is deployed on chain ${expected}. Switch the wallet to chain ${expected} and connect again.`);
  }
}

/** A write was asked for while viewing an address read-only. */
export class ReadOnlyViewError extends SoulmeshError {
  override readonly name = "ReadOnlyViewError";
  constructor() {
    super("This page shows an address read-only. Connect with the creator's wallet or dev account to send transactions.");
  }
}

/** The transaction was mined but no event of the expected kind came with it. */
export class MissingEventError extends SoulmeshError {
  override readonly name = "MissingEventError";
  constructor(
    readonly event: string,
    readonly txHash: string,
  ) {
    super(`Transaction ${txHash} was mined but emitted no ${event}. Check the deployment the dashboard uses and reload.`);
  }
}

/** What the error banner shows for any failure. */
export interface ShownError {
  /** The contract's custom error name, the server's error name, or the error class name. */
  name: string;
  message: string;
}

/**
 * Names and explains any failure for the banner: contract reverts by their custom error (Persona__NotHolder…),
 * server errors by the server's name, a wallet's refusal as UserRejectedError.
 *
 * @example
 * showable(await tx.catch((e) => e)) // { name: "Escrow__NoEarnings", message: "The contract rejected…" }
 */
export function showable(err: unknown): ShownError {
  const revert = err instanceof ContractRevertError ? err : decodeRevert(err);
  if (revert) return { name: revert.reason, message: revert.message };
  if (err instanceof DashboardApiError) return { name: err.remoteName, message: err.message };
  if (isError(err, "ACTION_REJECTED")) return { name: "UserRejectedError", message: "The wallet refused the request. Nothing was sent." };
  const code = (err as { code?: unknown } | null)?.code;
  if (code === 4001) return { name: "UserRejectedError", message: "The wallet refused the request. Nothing was sent." };
  if (err instanceof Error) {
    const short = (err as { shortMessage?: unknown }).shortMessage;
    return { name: err.name, message: typeof short === "string" && short.length > 0 ? short : err.message };
  }
  return { name: "Error", message: String(err) };
}
