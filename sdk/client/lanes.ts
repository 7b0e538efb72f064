/**
 * Funding the payer's lane with a provider. Vouchers settle only from the lane (payer, provider), so before a
 * session opens the lane must cover the session's spending cap beyond what the payer already vouched to that
 * provider and has not seen settled. When it does not, the client commits the shortfall, and this is the only
 * transaction a client ever sends: `commit` from the free deposit, or, when the free deposit is short and the
 * wallet holds the tokens, `depositWithPermitAndCommit` with an EIP-2612 permit (one transaction, no
 * approval). No transaction is ever sent per message.
 */
import { getAddress, Signature, type Signer } from "ethers";
import { TestStablecoin__factory, type InferenceEscrow } from "../chain/contracts.js";
import { withRevertDecoding } from "../chain/revert.js";
import { nextSessionNumber, sessionCost, type VoucherRates } from "../chain/voucher.js";
import { LaneCommitError } from "./errors.js";
import type { TokenTotals } from "./usage.js";
import { abortable } from "../time.js";

/** A permit is valid this long: long enough for a slow block, short enough to be useless if it leaks. */
const PERMIT_TTL_S = 3_600n;

/** A session this client opened, as far as the lane is concerned. */
export interface LaneSession {
  provider: string;
  agentId: bigint;
  /** The session's number on its channel. */
  session: bigint;
  rates: VoucherRates;
  /** Totals of the last voucher signed for it. */
  vouched: TokenTotals;
}

/**
 * What this client vouched to `provider` and has not seen settled: for each of its sessions with the
 * provider, the session's full cost less what the escrow's channel shows as paid for it. A session below
 * the channel's latest settled one can no longer settle and counts for nothing.
 *
 * @example
 * const owed = unsettledVouched(sessions, provider, 7n, { session: 12n, paid: 300n })
 */
export function unsettledVouched(
  sessions: readonly LaneSession[],
  provider: string,
  agentId: bigint,
  settled: { session: bigint; paid: bigint },
): bigint {
  let owed = 0n;
  for (const s of sessions) {
    if (s.provider !== provider || s.agentId !== agentId || s.session < settled.session) continue;
    const cost = sessionCost(s.vouched, s.rates);
    const paid = s.session === settled.session ? settled.paid : 0n;
    if (cost > paid) owed += cost - paid;
  }
  return owed;
}

/** A session as the ledger holds it: a {@link LaneSession} with what its provider reserves for it. */
export interface LedgerSession extends LaneSession {
  /** The session's spending cap, full price: what its provider reserves on the lane while it is open. */
  spendingCap: bigint;
  /** Chain time (s) after which the session is over. */
  expiry: bigint;
  /** False once the client stopped using it. */
  usable: boolean;
}

/**
 * The sessions of every chat of one payer in this process (an agent's chat and its maintenance chat share
 * one): what each has vouched, and what the open ones reserve on their provider's lane, so that a chat
 * asking for a session counts what its sibling holds.
 *
 * It is also the one source of session numbers per channel (payer, provider, agent) for those chats, and
 * the turn lock per provider:
 * - A channel settles only its latest session, and a provider refuses a number at or below the latest it has
 *   seen (attack 8 of issue 14): numbers drawn by each chat from its own clock would collide or alternate,
 *   so every number of a channel comes from {@link LaneLedger.nextSession}, strictly increasing, above any
 *   number the provider or the chain reported.
 * - A provider refuses a turn while another session of the same payer has a turn running or unpaid (one
 *   unpaid turn per payer). The chats sharing a ledger therefore run their turns with one provider one at a
 *   time ({@link LaneLedger.exclusive}): a user's turn waits for the maintenance turn in progress (and its
 *   voucher), and the other way round, rather than being refused.
 *
 * @example
 * const lanes = new LaneLedger()
 * await openChat({ ...options, lanes }); await openChat({ ...maintenance, lanes })
 */
export class LaneLedger {
  readonly #sessions: LedgerSession[] = [];
  readonly #numbers = new Map<string, bigint>();
  readonly #locks = new Map<string, Promise<void>>();

  /**
   * A fresh session number for the channel (`provider`, `agentId`) of this ledger's payer: above every number
   * drawn here and above `floor` (the latest the escrow settled, or the provider reported), by the clock
   * when it is ahead ({@link nextSessionNumber}).
   *
   * @example
   * const number = lanes.nextSession(provider, 7n, settledSession)
   */
  nextSession(provider: string, agentId: bigint, floor = 0n): bigint {
    const key = `${provider}:${agentId}`;
    const last = this.#numbers.get(key) ?? 0n;
    const number = nextSessionNumber(last > floor ? last : floor);
    this.#numbers.set(key, number);
    return number;
  }

  /**
   * Runs `work` once no other work of this ledger with `provider` runs (first come, first served). A wait cut
   * short by `signal` rejects with its reason and leaves the queue as it was.
   *
   * @example
   * await lanes.exclusive(provider, signal, () => runTurnAndPay())
   */
  async exclusive<T>(provider: string, signal: AbortSignal | undefined, work: () => Promise<T>): Promise<T> {
    const before = this.#locks.get(provider) ?? Promise.resolve();
    let release!: () => void;
    const mine = new Promise<void>((resolve) => (release = resolve));
    // The next caller waits for this one's work, and for the wait before it (whoever leaves early).
    const tail = before.then(() => mine);
    this.#locks.set(provider, tail);
    try {
      await abortable(before, signal);
      return await work();
    } finally {
      release();
      if (this.#locks.get(provider) === tail) this.#locks.delete(provider);
    }
  }

  add(session: LedgerSession): void {
    this.#sessions.push(session);
  }

  get sessions(): readonly LedgerSession[] {
    return this.#sessions;
  }

  /**
   * What `provider` must find on the lane for the open sessions of this ledger other than `except`, beyond
   * what they vouched (counted by {@link unsettledVouched}): the rest of their caps.
   */
  reservedBy(provider: string, now: bigint, except: ReadonlySet<LedgerSession>): bigint {
    let reserved = 0n;
    for (const s of this.#sessions) {
      if (s.provider !== provider || !s.usable || s.expiry <= now || except.has(s)) continue;
      const cost = sessionCost(s.vouched, s.rates);
      if (s.spendingCap > cost) reserved += s.spendingCap - cost;
    }
    return reserved;
  }
}

/** How a lane was funded. */
export interface LaneFunding {
  provider: string;
  amount: bigint;
  txHash: string;
  /** `commit` from the free deposit, or `permit`: deposited from the wallet and committed in one transaction. */
  method: "commit" | "permit";
}

export interface CommitToLaneOptions {
  /** The escrow (any runner: the transaction is sent through `signer`). */
  escrow: InferenceEscrow;
  /** The payer, connected to a JSON-RPC provider. */
  signer: Signer;
  provider: string;
  amount: bigint;
  /** `commit` takes it from the free deposit; `permit` from the wallet, with an EIP-2612 permit. */
  method: "commit" | "permit";
  signal?: AbortSignal;
}

/**
 * Commits `amount` to the payer's lane with `provider` in one transaction, and waits for it to be mined.
 *
 * @example
 * const { txHash } = await commitToLane({ escrow, signer, provider, amount: 5_000_000n, method: "commit", signal })
 * @throws LaneCommitError when the signer cannot send transactions or the transaction fails (reverts are
 *   decoded, e.g. Escrow__NotAProvider); the signal's reason.
 */
export async function commitToLane(options: CommitToLaneOptions): Promise<LaneFunding> {
  const { signer, amount, signal } = options;
  const provider = getAddress(options.provider);
  signal?.throwIfAborted();
  if (signer.provider == null) throw new LaneCommitError(provider, amount, "the signer is not connected to a chain provider");
  const escrow = options.escrow.connect(signer);
  try {
    let tx;
    if (options.method === "commit") {
      tx = await withRevertDecoding(escrow.commit(provider, amount));
    } else {
      const tokenAddress = await escrow.token();
      const deadline = BigInt((await signer.provider.getBlock("latest"))?.timestamp ?? Math.floor(Date.now() / 1000)) + PERMIT_TTL_S;
      const sig = await signPermit(signer, tokenAddress, await escrow.getAddress(), amount, deadline);
      signal?.throwIfAborted();
      tx = await withRevertDecoding(escrow.depositWithPermitAndCommit(provider, amount, deadline, sig.v, sig.r, sig.s));
    }
    const receipt = await abortable(withRevertDecoding(tx.wait()), signal);
    if (receipt === null || receipt.status !== 1) throw new Error(`transaction ${tx.hash} was not mined`);
    return { provider, amount, txHash: receipt.hash, method: options.method };
  } catch (err) {
    signal?.throwIfAborted();
    if (err instanceof LaneCommitError) throw err;
    throw new LaneCommitError(provider, amount, err instanceof Error ? err.message : String(err), { cause: err });
  }
}

/**
 * Signs an EIP-2612 permit letting `spender` take `value` of the signer's tokens until `deadline`, with the
 * token's own EIP-712 domain (ERC-5267 `eip712Domain`).
 *
 * @example
 * const { v, r, s } = await signPermit(wallet, tokenAddress, escrowAddress, 5_000_000n, deadline)
 */
export async function signPermit(
  signer: Signer,
  tokenAddress: string,
  spender: string,
  value: bigint,
  deadline: bigint,
): Promise<Signature> {
  const token = TestStablecoin__factory.connect(tokenAddress, signer);
  const owner = await signer.getAddress();
  const [domain, nonce] = await Promise.all([token.eip712Domain(), token.nonces(owner)]);
  const signature = await signer.signTypedData(
    { name: domain.name, version: domain.version, chainId: domain.chainId, verifyingContract: domain.verifyingContract },
    {
      Permit: [
        { name: "owner", type: "address" },
        { name: "spender", type: "address" },
        { name: "value", type: "uint256" },
        { name: "nonce", type: "uint256" },
        { name: "deadline", type: "uint256" },
      ],
    },
    { owner, spender, value, nonce, deadline },
  );
  return Signature.from(signature);
}
