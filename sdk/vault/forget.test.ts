import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import * as dagCbor from "@ipld/dag-cbor";
import { Wallet } from "ethers";
import type { CID } from "multiformats/cid";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { exportAgentCar, importAgentCar, supersededBlocks, walkAgentBlocks } from "./car.js";
import { generateAgentKey, openRecord, ownerKeyFromSigner, type AgentRef } from "./crypto.js";
import { ITEM_KINDS, TURN_BLOCKS_PER_INDEX, type Commit } from "./dag.js";
import { InvalidVaultInputError } from "./errors.js";
import { TurnJournal } from "./journal.js";
import type { BlockStore, RecordKind } from "./types.js";
import { AgentVault, loadAgent, type Turn } from "./vault.js";
import { MemoryBlockStore } from "../../test/helpers/memory-block-store.js";


const deployment = { chainId: 31337n, registry: "0x5FbDB2315678afecb367f032d93F642f64180aa3" };
const agent: AgentRef = { ...deployment, agentId: 11n };
const FORGET = "FORGET-ME-MARKER-3b7e";
const enc = (s: string): Uint8Array => new TextEncoder().encode(s);
const dec = (b: Uint8Array | undefined): string | undefined => (b === undefined ? undefined : new TextDecoder().decode(b));
const turn = (i: number, extra = ""): Turn => ({
  role: i % 2 === 0 ? "user" : "assistant",
  text: `turn ${i}${extra}`,
  time: 1_700_000_000_000 + i,
});

let root: string;
let ownerKey: Uint8Array;
beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), "soulmesh-forget-"));
  ownerKey = await ownerKeyFromSigner(Wallet.createRandom(), deployment);
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

interface Opened {
  vault: AgentVault;
  journal: TurnJournal;
  store: MemoryBlockStore;
  agentKey: Uint8Array;
  dir: string;
}
const opened: TurnJournal[] = [];
afterAll(async () => {
  for (const journal of opened) await journal.close().catch(() => undefined);
});

let journals = 0;
async function openVault(store = new MemoryBlockStore(), agentKey = generateAgentKey(), dir = join(root, `journal-${journals++}`)): Promise<Opened> {
  const journal = new TurnJournal({ ...agent, dir, key: agentKey });
  await journal.open();
  opened.push(journal);
  const vault = await AgentVault.open({ store, journal, agent, agentKey, ownerKey });
  return { vault, journal, store, agentKey, dir };
}

/** Commits `turns[i]` as commit i (each one turn block, or several turns per block with `perCommit`). */
async function commitAll(vault: AgentVault, turns: readonly Turn[], perCommit = 1): Promise<Commit[]> {
  const heads: Commit[] = [];
  for (let i = 0; i < turns.length; i += perCommit) {
    for (const t of turns.slice(i, i + perCommit)) await vault.appendTurn(t);
    heads.push((await vault.commit())!);
  }
  return heads;
}

const KINDS: RecordKind[] = ["commit", "turns", "segment-index", ...ITEM_KINDS];

/** Every block reachable from `head`, opened with the agent key: its plaintext (each must open as one kind). */
async function reachablePlaintexts(store: BlockStore, agentKey: Uint8Array, head: CID): Promise<Map<string, Uint8Array>> {
  const out = new Map<string, Uint8Array>();
  for await (const { cid, bytes } of walkAgentBlocks({ store, head })) {
    const sealed = (dagCbor.decode(bytes) as { b: Uint8Array }).b;
    let plaintext: Uint8Array | undefined;
    for (const kind of KINDS) {
      try {
        plaintext = openRecord({ ...agent, key: agentKey, kind, sealed });
        break;
      } catch {
        // another kind
      }
    }
    expect(plaintext, `block ${cid} opens as a vault record`).toBeDefined();
    out.set(cid.toString(), plaintext!);
  }
  return out;
}

async function holdsMarker(store: BlockStore, agentKey: Uint8Array, head: CID, marker = FORGET): Promise<string[]> {
  const needle = Buffer.from(marker);
  const hits: string[] = [];
  for (const [cid, plaintext] of await reachablePlaintexts(store, agentKey, head)) {
    if (Buffer.from(plaintext).includes(needle)) hits.push(cid);
  }
  return hits;
}

describe("forget", () => {
  it("forgets a turn in the middle of a long history: index blocks and later turn blocks are rewritten, nothing reaches it", async () => {
    const { vault, store, agentKey, journal, dir } = await openVault();
    const count = TURN_BLOCKS_PER_INDEX * 2 + 12; // two index blocks and an unindexed tail
    const turns = Array.from({ length: count }, (_, i) => turn(i, i === 40 ? ` my secret ${FORGET}` : ""));
    const heads = await commitAll(vault, turns);
    const old = vault.head!;
    expect(await holdsMarker(store, agentKey, old.cid)).not.toEqual([]); // the scan does see plaintext

    const result = await vault.forget({ turns: (t) => t.text.includes(FORGET) });
    const head = result.head!;
    expect(result).toMatchObject({ turns: 1, items: [], replaced: old });
    expect(head).toMatchObject({
      seq: old.seq + 1,
      prev: null,
      turnCount: count - 1,
      turnBlockCount: count - 1,
      forgotten: { turns: 1, items: 0 },
    });
    expect(vault.head).toEqual(head);

    const loaded = await loadAgent({ store, agent, ownerKey, head: head.cid });
    expect(loaded.turns).toEqual(turns.filter((_, i) => i !== 40));
    expect(loaded.head).toEqual(head);
    expect(await vault.turns()).toEqual(loaded.turns);
    expect(await holdsMarker(store, agentKey, head.cid)).toEqual([]);

    // Blocks 0…39 are kept as they were; the index of group 0 (which listed block 40) is not.
    const reachable = await reachablePlaintexts(store, agentKey, head.cid);
    for (const h of heads.slice(0, 40)) expect(reachable.has(h.turnsHead!.toString())).toBe(true);
    for (const h of heads.slice(40)) expect(reachable.has(h.turnsHead!.toString())).toBe(false);
    expect(reachable.has(heads[TURN_BLOCKS_PER_INDEX - 1]!.indexHead!.toString())).toBe(false);
    expect(head.indexHead).not.toBeNull();
    // No old commit is reachable.
    for (const h of heads) expect(reachable.has(h.cid.toString())).toBe(false);

    // What the old head reached and the new one does not: the forgotten block among them.
    const superseded = (await supersededBlocks({ store, previous: old.cid, head: head.cid })).map(String);
    expect(superseded).toContain(heads[40]!.turnsHead!.toString());
    expect(superseded).toContain(old.cid.toString());
    for (const cid of superseded) expect(reachable.has(cid)).toBe(false);

    // An export of the new head carries none of it, and loads elsewhere.
    const chunks: Uint8Array[] = [];
    for await (const chunk of exportAgentCar({ store, head: head.cid })) chunks.push(chunk);
    const car = Buffer.concat(chunks);
    const elsewhere = new MemoryBlockStore();
    const imported = await importAgentCar({ store: elsewhere, car });
    expect(imported.blocks).toBe(reachable.size);
    expect(await holdsMarker(elsewhere, agentKey, head.cid)).toEqual([]);
    expect((await loadAgent({ store: elsewhere, agent, ownerKey, head: head.cid })).turns).toEqual(loaded.turns);

    // The journal's head moved: a reopened vault is at the forget's commit, and goes on from it.
    await journal.close();
    const again = await openVault(store, agentKey, dir);
    expect(again.vault.head).toEqual(head);
    await again.vault.appendTurn(turn(1000));
    const next = (await again.vault.commit())!;
    expect(next).toMatchObject({ seq: head.seq + 1, prev: head.cid, forgotten: { turns: 1, items: 0 }, turnCount: count });
    expect((await loadAgent({ store, agent, ownerKey, head: next.cid })).turns).toEqual([...loaded.turns, turn(1000)]);
  });

  it("forgets by index in a later group, keeping the earlier index block; drops emptied blocks and renumbers", async () => {
    const { vault, store, agentKey } = await openVault();
    const count = (TURN_BLOCKS_PER_INDEX * 2 + 4) * 2;
    const turns = Array.from({ length: count }, (_, i) => turn(i));
    const heads = await commitAll(vault, turns, 2); // two turns per turn block: 132 blocks
    const old = vault.head!;
    expect(old.turnBlockCount).toBe(TURN_BLOCKS_PER_INDEX * 2 + 4);

    // Block 100 loses both its turns (200, 201), block 110 one of two (221): one block fewer from 100 on.
    const gone = [200, 201, 221];
    const result = await vault.forget({ turns: gone });
    const head = result.head!;
    expect(result.turns).toBe(3);
    expect(head).toMatchObject({ turnCount: count - 3, turnBlockCount: old.turnBlockCount - 1, prev: null, seq: old.seq + 1 });
    const loaded = await loadAgent({ store, agent, ownerKey, head: head.cid });
    expect(loaded.turns).toEqual(turns.filter((_, i) => !gone.includes(i)));

    const reachable = await reachablePlaintexts(store, agentKey, head.cid);
    // Group 0's index block (written at the 64th commit) is the same block; group 1's is new.
    expect(reachable.has(heads[TURN_BLOCKS_PER_INDEX - 1]!.indexHead!.toString())).toBe(true);
    expect(reachable.has(heads[2 * TURN_BLOCKS_PER_INDEX - 1]!.indexHead!.toString())).toBe(false);
    for (const h of heads.slice(0, 100)) expect(reachable.has(h.turnsHead!.toString())).toBe(true);

    // Forgetting again counts on; indexes are those of the history as it is now.
    const second = await vault.forget({ turns: [0] });
    expect(second.head).toMatchObject({ forgotten: { turns: 4, items: 0 }, turnCount: count - 4, prev: null });
    expect((await vault.turns())[0]).toEqual(turn(1));
  });

  it("forgets memory items with every earlier version, keeping the turn chain as it is", async () => {
    const { vault, store, agentKey } = await openVault();
    await vault.setItem("profile", enc(`first profile ${FORGET}`));
    await commitAll(vault, [turn(0), turn(1)]);
    await vault.setItem("profile", enc(`second profile ${FORGET}`));
    await vault.setItem("notebook", enc("keep this"));
    await commitAll(vault, [turn(2)]);
    const old = vault.head!;
    expect(await holdsMarker(store, agentKey, old.cid)).toHaveLength(2);

    const result = await vault.forget({ items: ["profile", "topics"] });
    expect(result).toMatchObject({ turns: 0, items: ["profile"] });
    const head = result.head!;
    expect(head).toMatchObject({ prev: null, forgotten: { turns: 0, items: 1 }, turnsHead: old.turnsHead, turnCount: 3 });
    const loaded = await loadAgent({ store, agent, ownerKey, head: head.cid });
    expect(loaded.items.profile).toBeUndefined();
    expect(dec(loaded.items.notebook)).toBe("keep this");
    expect(loaded.turns).toEqual([turn(0), turn(1), turn(2)]);
    expect(await holdsMarker(store, agentKey, head.cid)).toEqual([]);

    // Turns and items in one forget.
    const both = await vault.forget({ turns: [1], items: ["notebook"] });
    expect(both).toMatchObject({ turns: 1, items: ["notebook"] });
    expect(both.head!.forgotten).toEqual({ turns: 1, items: 2 });
    expect((await loadAgent({ store, agent, ownerKey, head: both.head!.cid })).items).toEqual({});
  });

  it("writes nothing when nothing matches", async () => {
    const { vault, store } = await openVault();
    expect(await vault.forget({ turns: () => true })).toEqual({ head: undefined, turns: 0, items: [] }); // no commit yet
    await vault.setItem("notebook", enc("n"));
    await commitAll(vault, [turn(0), turn(1)]);
    const old = vault.head!;
    const before = store.blocks.size;
    for (const request of [{}, { turns: () => false }, { turns: [] }, { items: ["profile" as const] }]) {
      const result = await vault.forget(request);
      expect(result).toEqual({ head: old, turns: 0, items: [] });
    }
    expect(store.blocks.size).toBe(before);
    expect(vault.head).toBe(old);
  });

  it("commits what is journaled first, so a turn not yet committed is forgotten too", async () => {
    const { vault, journal, store, agentKey } = await openVault();
    await commitAll(vault, [turn(0), turn(1)]);
    await vault.appendTurn(turn(2, ` ${FORGET}`));
    await vault.appendTurn(turn(3));
    await vault.setItem("summaries", enc("a summary written without the forgotten turn"));
    const seen: number[] = [];
    const result = await vault.forget({
      turns: (t, i) => {
        seen.push(i);
        return t.text.includes(FORGET);
      },
    });
    expect(seen).toEqual([0, 1, 2, 3]);
    expect(await journal.pending()).toEqual([]);
    expect(result.turns).toBe(1);
    expect(await vault.turns()).toEqual([turn(0), turn(1), turn(3)]);
    expect(dec(await vault.item("summaries"))).toBe("a summary written without the forgotten turn");
    expect(await holdsMarker(store, agentKey, result.head!.cid)).toEqual([]);
  });

  it("refuses indexes out of range and unknown kinds, writing nothing", async () => {
    const { vault, store } = await openVault();
    await commitAll(vault, [turn(0), turn(1)]);
    const before = store.blocks.size;
    await expect(vault.forget({ turns: [2] })).rejects.toBeInstanceOf(InvalidVaultInputError);
    await expect(vault.forget({ turns: [-1, 0.5] })).rejects.toBeInstanceOf(InvalidVaultInputError);
    await expect(vault.forget({ items: ["diary" as never] })).rejects.toBeInstanceOf(InvalidVaultInputError);
    expect(store.blocks.size).toBe(before);
    // A commit and a forget called together run one after the other.
    await vault.appendTurn(turn(2));
    const [, forgot] = await Promise.all([vault.commit(), vault.forget({ turns: [0] })]);
    expect(forgot.turns).toBe(1);
    expect(await vault.turns()).toEqual([turn(1), turn(2)]);
  });
});
