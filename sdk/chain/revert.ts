import { isCallException } from "ethers";
import type { Interface } from "ethers";
import {
  AgentRegistry__factory,
  InferenceEscrow__factory,
  PersonaRegistry__factory,
  ProviderRegistry__factory,
  TestStablecoin__factory,
} from "./contracts.js";
import { ContractRevertError } from "./errors.js";

const interfaces: Interface[] = [
  InferenceEscrow__factory.createInterface(),
  AgentRegistry__factory.createInterface(),
  PersonaRegistry__factory.createInterface(),
  ProviderRegistry__factory.createInterface(),
  TestStablecoin__factory.createInterface(),
];

/** What to do next, for the reverts a user can fix. */
const HINTS: Record<string, string> = {
  Escrow__InsufficientDeposit: "Deposit more with `soulmesh deposit AMOUNT`.",
  Escrow__WithdrawalNotReady: "Wait until the time given, then run `soulmesh withdraw complete`.",
  Escrow__NoWithdrawalRequested: "Request one first with `soulmesh withdraw request AMOUNT`.",
  Escrow__ZeroAmount: "Give an amount above zero.",
  Escrow__NoEarnings: "Nothing has been earned yet; earnings arrive when providers settle vouchers.",
  Escrow__VoucherExpired: "The voucher can no longer be settled; settle vouchers before they expire.",
  Escrow__SessionSuperseded: "A later session of this channel settled first; settle a channel's sessions in order.",
  Escrow__InsufficientLane: "Commit more of the deposit to this provider's lane first.",
  Escrow__NotAProvider: "Lanes open only to providers registered with at least the minimum stake; pick a registered provider.",
  Escrow__NotProviderOrSettler: "Only the voucher's provider, or a settler it authorised with setSettler, may settle it.",
  Escrow__NoReleaseRequested: "Request the lane's release first; it completes after the withdrawal delay.",
  Escrow__ReleaseNotReady: "Wait until the time given, then complete the lane's release.",
  Escrow__EmptyLane: "Nothing is committed to this provider.",
  Escrow__RoyaltyBelowRate: "The persona's royalty rose since the session opened; open a new session at the royalty in force.",
  Escrow__FeeBelowRate: "The protocol fee rose since the session opened; open a new session at the fee in force.",
  Persona__RoyaltyTooHigh: "Ask for at most the registry's maxRoyaltyPerMillion().",
  Agent__NotAuthorized: "Only the agent's owner, an approved address or a head operator may do this.",
  Agent__AdoptionPriceAboveMax: "The adoption price changed; check it with `soulmesh persona show ID` and retry.",
  Persona__NotHolder: "Only the persona's holder may do this.",
  Provider__StakeBelowMinimum: "Stake at least the registry's minimum (see `soulmesh provider status`).",
  Provider__UnbondingNotReady: "Wait until the time given, then withdraw the stake.",
  ERC20InsufficientBalance: "The account holds too few tokens; on the devnet, fund it from a dev account.",
  ERC20InsufficientAllowance: "Approve the contract to spend the amount first.",
};

/**
 * Decodes a revert from any Soulmesh contract into a {@link ContractRevertError} naming the custom error,
 * its arguments and what to do next. Returns undefined when `err` is not a decodable revert.
 *
 * @example
 * try { await escrow.settle(v, sig) } catch (err) { throw decodeRevert(err) ?? err }
 */
export function decodeRevert(err: unknown): ContractRevertError | undefined {
  const data = revertData(err);
  if (!data || data.length < 10) return undefined;
  for (const iface of interfaces) {
    try {
      const parsed = iface.parseError(data);
      if (parsed) return new ContractRevertError(parsed.name, [...parsed.args], HINTS[parsed.name], err);
    } catch {
      // Not this contract's error; try the next interface.
    }
  }
  return undefined;
}

/**
 * Awaits `promise`, rethrowing a Soulmesh revert as a {@link ContractRevertError}.
 *
 * @example
 * await withRevertDecoding(escrow.deposit(amount).then((tx) => tx.wait()))
 */
export async function withRevertDecoding<T>(promise: Promise<T>): Promise<T> {
  try {
    return await promise;
  } catch (err) {
    throw decodeRevert(err) ?? err;
  }
}

function revertData(err: unknown): string | undefined {
  if (isCallException(err) && typeof err.data === "string") return err.data;
  // Some providers nest the revert data in the JSON-RPC error.
  let e: unknown = err;
  for (let depth = 0; depth < 5 && e && typeof e === "object"; depth++) {
    const o = e as { data?: unknown; error?: unknown; info?: unknown };
    if (typeof o.data === "string" && o.data.startsWith("0x")) return o.data;
    if (o.data && typeof o.data === "object" && typeof (o.data as { data?: unknown }).data === "string") {
      return (o.data as { data: string }).data;
    }
    e = o.error ?? (o.info as { error?: unknown } | undefined)?.error;
  }
  return undefined;
}
