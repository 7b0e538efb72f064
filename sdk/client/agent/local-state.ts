/**
 * What an agent keeps in its local folder besides the journal: its key wrapped under the owner key (never
 * the key itself: nothing the user owns is written in plaintext) and the last head this machine knows to be
 * on chain, from which it tells whether another machine has chatted since.
 */
import { mkdir, open, readFile, rename } from "node:fs/promises";
import { join } from "node:path";
import { bytesToHex, hexToBytes } from "@noble/hashes/utils.js";
import { getAddress } from "ethers";
import type { AgentRef } from "../../vault/crypto.js";
import { LocalAgentStateError } from "./errors.js";

const FILE = "agent.json";
const FORMAT = 1;

/** A head known to be published: the base that local commits since build on. */
export interface SyncedHead {
  cid: string;
  seq: number;
  /** Turns in that head: the local turns past it are the unpublished ones. */
  turnCount: number;
}

/** The agent's local state file. */
export interface LocalAgentState {
  /** The agent key wrapped under the owner key (`wrapAgentKey`). */
  wrappedKey: Uint8Array;
  synced?: SyncedHead;
}

interface StateDoc {
  v: number;
  agentId: string;
  chainId: string;
  registry: string;
  wrappedKey: string;
  synced?: SyncedHead;
}

/**
 * Reads the local state of `agent` from `dir`, or undefined when there is none (a fresh machine).
 *
 * @example
 * const local = await readLocalState(dataDir, agent)
 * @throws LocalAgentStateError for a file that is unreadable or belongs to another agent or deployment.
 */
export async function readLocalState(dir: string, agent: AgentRef): Promise<LocalAgentState | undefined> {
  const path = join(dir, FILE);
  let text: string;
  try {
    text = await readFile(path, "utf8");
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw new LocalAgentStateError(path, `it cannot be read (${(err as Error).message})`);
  }
  let doc: StateDoc;
  try {
    doc = JSON.parse(text) as StateDoc;
  } catch {
    throw new LocalAgentStateError(path, "it is not JSON");
  }
  if (doc?.v !== FORMAT) throw new LocalAgentStateError(path, `format ${JSON.stringify(doc?.v)}, this version reads ${FORMAT}`);
  if (doc.agentId !== agent.agentId.toString() || doc.chainId !== agent.chainId.toString() || !sameAddress(doc.registry, agent.registry)) {
    throw new LocalAgentStateError(path, `it is agent #${doc.agentId} of chain ${doc.chainId}, registry ${doc.registry}`);
  }
  const synced = doc.synced;
  if (
    typeof doc.wrappedKey !== "string" ||
    !/^[0-9a-f]+$/.test(doc.wrappedKey) ||
    (synced !== undefined && (typeof synced.cid !== "string" || !Number.isSafeInteger(synced.seq) || !Number.isSafeInteger(synced.turnCount)))
  ) {
    throw new LocalAgentStateError(path, "its fields are not the shape this version writes");
  }
  return { wrappedKey: hexToBytes(doc.wrappedKey), ...(synced !== undefined && { synced }) };
}

/**
 * Writes the local state atomically (a new file renamed over the old, fsynced), so a crash leaves the old
 * state or the new one, never half of either.
 *
 * @example
 * await writeLocalState(dataDir, agent, { wrappedKey, synced: { cid, seq: 4, turnCount: 8 } })
 */
export async function writeLocalState(dir: string, agent: AgentRef, state: LocalAgentState): Promise<void> {
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const doc: StateDoc = {
    v: FORMAT,
    agentId: agent.agentId.toString(),
    chainId: agent.chainId.toString(),
    registry: getAddress(agent.registry),
    wrappedKey: bytesToHex(state.wrappedKey),
    ...(state.synced !== undefined && { synced: state.synced }),
  };
  const path = join(dir, FILE);
  const tmp = `${path}.tmp`;
  const file = await open(tmp, "w", 0o600);
  try {
    await file.writeFile(`${JSON.stringify(doc, null, 2)}\n`);
    await file.sync();
  } finally {
    await file.close();
  }
  await rename(tmp, path);
}

function sameAddress(a: unknown, b: string): boolean {
  try {
    return typeof a === "string" && getAddress(a) === getAddress(b);
  } catch {
    return false;
  }
}
