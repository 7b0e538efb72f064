import { SoulmeshError } from "../../errors.js";

/** The wallet opening an agent does not own it: its memory key derives from the owner's wallet only. Nothing was opened. */
export class NotAgentOwnerError extends SoulmeshError {
  override readonly name = "NotAgentOwnerError";
  constructor(
    readonly agentId: bigint,
    readonly owner: string,
    readonly account: string,
  ) {
    super(
      `Agent #${agentId} belongs to ${owner}, not to ${account}: open it with the owner's wallet ` +
        `(\`--account\` or SOULMESH_ACCOUNT), or adopt one of your own with \`soulmesh agent mint --persona ID\`.`,
    );
  }
}

/**
 * The memory head published on chain could not be fetched from IPFS (its blocks are on no node this machine
 * reaches). Nothing was opened and nothing local was written.
 */
export class MemoryHeadUnreadableError extends SoulmeshError {
  override readonly name = "MemoryHeadUnreadableError";
  constructor(
    readonly agentId: bigint,
    readonly cid: string,
    cause: unknown,
  ) {
    super(
      `The memory head ${cid} of agent #${agentId} (published on chain) could not be read from IPFS: check that the ` +
        `IPFS node is running and connected to a node that holds the agent's blocks (the machine that last chatted, ` +
        `or a pinning service), or import an exported copy (CAR) of the memory.`,
      { cause },
    );
  }
}

/**
 * The turn was cancelled while it streamed: nothing was recorded, and the next turn can be sent. What the
 * provider delivered before the cancel was paid for (`cost`, full price: provider, royalty and fee, counted in
 * the agent's `spent`; `billed` its tokens), zero when nothing was delivered or the provider's count was not
 * believable (it is then dropped, and paid nothing).
 */
export class TurnCancelledError extends SoulmeshError {
  override readonly name = "TurnCancelledError";
  constructor(
    reason: unknown,
    readonly cost: bigint = 0n,
    readonly billed: { inputTokens: bigint; outputTokens: bigint } = { inputTokens: 0n, outputTokens: 0n },
  ) {
    super(
      cost > 0n
        ? "The turn was cancelled before the reply was complete: nothing was recorded, and the part delivered was paid for. Send it again when you wish."
        : "The turn was cancelled before the reply was complete: nothing was recorded or paid. Send it again when you wish.",
      { cause: reason },
    );
  }
}

/** A call on an agent after `close()`. */
export class AgentClosedError extends SoulmeshError {
  override readonly name = "AgentClosedError";
  constructor(readonly operation: string) {
    super(`Cannot ${operation}: this agent is closed. Open it again with openAgent().`);
  }
}

/** Options that cannot work; nothing was opened or sent. */
export class InvalidAgentOptionsError extends SoulmeshError {
  override readonly name = "InvalidAgentOptionsError";
  constructor(readonly problems: string[]) {
    super(`Invalid agent options: ${problems.join("; ")}.`);
  }
}

/** The agent's local folder holds state this version cannot use (unreadable, or another agent's). Nothing was changed. */
export class LocalAgentStateError extends SoulmeshError {
  override readonly name = "LocalAgentStateError";
  constructor(
    readonly path: string,
    readonly reason: string,
  ) {
    super(
      `The agent state at ${path} cannot be used: ${reason}. Point dataDir at this agent's own folder, or move the ` +
        `folder away to recover the agent from its published memory head (unpublished turns in it would be lost).`,
    );
  }
}
