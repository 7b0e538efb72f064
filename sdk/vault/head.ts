/**
 * The agent's memory head on chain: the latest commit's CID and sequence number, published through
 * AgentRegistry (by the owner or a head operator it approved) at the end of a session or every N turns.
 */
import { CID } from "multiformats/cid";
import type { AgentRegistry } from "../chain/contracts.js";
import { withRevertDecoding } from "../chain/revert.js";
import type { Commit } from "./dag.js";
import { VaultBlockError } from "./errors.js";

/** A head as the registry records it. */
export interface PublishedHead {
  cid: CID;
  seq: bigint;
}

/**
 * Publishes a commit as the agent's memory head. The registry refuses a sequence not above the current
 * one (`Agent__StaleHeadSequence`), so an older commit can never replace a newer one.
 *
 * @example
 * await publishHead(contracts.agentRegistry.connect(owner), agentId, vault.head!)
 * @throws ContractRevertError (Agent__NotAuthorized, Agent__StaleHeadSequence, …) with what to do next.
 */
export async function publishHead(
  agents: AgentRegistry,
  agentId: bigint,
  head: Pick<Commit, "cid" | "seq">,
): Promise<{ transactionHash: string }> {
  const receipt = await withRevertDecoding(
    agents.setMemoryHead(agentId, head.cid.toString(), BigInt(head.seq)).then((tx) => tx.wait()),
  );
  return { transactionHash: receipt!.hash };
}

/**
 * The agent's published memory head, or undefined before the first publish.
 *
 * @example
 * const head = await readPublishedHead(contracts.agentRegistry, agentId)
 * if (head) await loadAgent({ store, agent, ownerKey, head: head.cid })
 * @throws VaultBlockError when the registry holds something that is not a CID.
 */
export async function readPublishedHead(agents: AgentRegistry, agentId: bigint): Promise<PublishedHead | undefined> {
  const [cid, seq] = await withRevertDecoding(agents.memoryHeadOf(agentId));
  if (seq === 0n && cid === "") return undefined;
  try {
    return { cid: CID.parse(cid), seq };
  } catch (err) {
    throw new VaultBlockError(cid, "the published memory head is not a CID", { cause: err });
  }
}
