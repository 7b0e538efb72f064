import { readdir, readFile, mkdtemp, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import * as dagCbor from "@ipld/dag-cbor";
import { Wallet } from "ethers";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createHeliaBlockStore, type HeliaBlockStore } from "./block-store.js";
import { generateAgentKey, openSharedAgentKey, ownerKeyFromSigner, shareAgentKey, type AgentRef } from "./crypto.js";
import { InvalidVaultInputError, VaultDecryptError } from "./errors.js";
import { TurnJournal } from "./journal.js";
import { AgentVault, decodeTurn, encodeTurn, loadAgent, type Turn } from "./vault.js";

const deployment = { chainId: 31337n, registry: "0x5FbDB2315678afecb367f032d93F642f64180aa3" };
const agent: AgentRef = { ...deployment, agentId: 42n };
const MARKER = "PLAINTEXT-MARKER-51c2e8";
const owner = Wallet.createRandom();
const enc = (s: string): Uint8Array => new TextEncoder().encode(s);

let root: string;
let writerStore: HeliaBlockStore;
let readerStore: HeliaBlockStore;
let ownerKey: Uint8Array;

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), "soulmesh-vault-"));
  writerStore = createHeliaBlockStore({ dir: join(root, "ipfs-writer") });
  await writerStore.start();
  readerStore = createHeliaBlockStore({ dir: join(root, "ipfs-reader"), peers: writerStore.multiaddrs() });
  await readerStore.start();
  ownerKey = await ownerKeyFromSigner(owner, deployment);
});

afterAll(async () => {
  await readerStore?.stop();
  await writerStore?.stop();
  await rm(root, { recursive: true, force: true });
});

const turn = (i: number, role: Turn["role"] = i % 2 === 0 ? "user" : "assistant"): Turn => ({
  role,
  text: `${role} says ${i} ${MARKER}`,
  time: 1_700_000_000_000 + i,
});

async function openVault(journalDir: string, agentKey: Uint8Array): Promise<{ vault: AgentVault; journal: TurnJournal }> {
  const journal = new TurnJournal({ ...agent, dir: journalDir, key: agentKey });
  await journal.open();
  const vault = await AgentVault.open({ store: writerStore, journal, agent, agentKey, ownerKey });
  return { vault, journal };
}

async function filesUnder(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const name of await readdir(dir)) {
    const path = join(dir, name);
    if ((await stat(path)).isDirectory()) out.push(...(await filesUnder(path)));
    else out.push(path);
  }
  return out;
}

describe("agent vault", () => {
  it("commits journaled turns and items, and the owner's wallet loads them on another node by head CID", async () => {
    const agentKey = generateAgentKey();
    const { vault, journal } = await openVault(join(root, "journal-a"), agentKey);
    for (let i = 0; i < 5; i++) await vault.appendTurn(turn(i));
    await vault.setItem("profile", enc(`likes sailing ${MARKER}`));
    const head = (await vault.commit())!;
    await vault.appendTurn(turn(5));
    const head2 = (await vault.commit())!;
    expect(head2.seq).toBe(head.seq + 1);
    await journal.close();

    // Another machine: a fresh Wallet object from the same key derives the same owner key.
    const sameOwner = new Wallet(owner.privateKey);
    const loaded = await loadAgent({
      store: readerStore,
      agent,
      ownerKey: await ownerKeyFromSigner(sameOwner, deployment),
      head: head2.cid,
    });
    expect(loaded.turns).toEqual([0, 1, 2, 3, 4, 5].map((i) => turn(i)));
    expect(new TextDecoder().decode(loaded.items.profile)).toBe(`likes sailing ${MARKER}`);
    expect(loaded.agentKey).toEqual(agentKey);
  });

  it("commits at open what a crash left in the journal", async () => {
    const agentKey = generateAgentKey();
    const dir = join(root, "journal-b");
    const first = await openVault(dir, agentKey);
    await first.vault.appendTurn(turn(0));
    await first.vault.commit();
    await first.vault.appendTurn(turn(1));
    await first.vault.appendTurn(turn(2));
    await first.journal.close(); // the process dies before committing

    const second = await openVault(dir, agentKey);
    expect(second.vault.head!.turnCount).toBe(3);
    expect(await second.vault.turns()).toEqual([turn(0), turn(1), turn(2)]);
    expect(await second.journal.pending()).toEqual([]);
    await second.journal.close();
  });

  it("refuses another wallet and another agent's head with typed errors", async () => {
    const agentKey = generateAgentKey();
    const { vault, journal } = await openVault(join(root, "journal-c"), agentKey);
    await vault.appendTurn(turn(0));
    const head = (await vault.commit())!;
    await journal.close();
    const stranger = await ownerKeyFromSigner(Wallet.createRandom(), deployment);
    await expect(loadAgent({ store: readerStore, agent, ownerKey: stranger, head: head.cid })).rejects.toBeInstanceOf(
      VaultDecryptError,
    );
    await expect(
      loadAgent({ store: readerStore, agent: { ...agent, agentId: 43n }, ownerKey, head: head.cid }),
    ).rejects.toBeInstanceOf(VaultDecryptError);
  });

  it("shares an agent with another wallet, which loads it", async () => {
    const agentKey = generateAgentKey();
    const { vault, journal } = await openVault(join(root, "journal-d"), agentKey);
    await vault.appendTurn(turn(0));
    const head = (await vault.commit())!;
    await journal.close();
    const heir = Wallet.createRandom();
    const shared = shareAgentKey({ ...agent, agentKey, recipientPublicKey: heir.signingKey.publicKey, recipient: heir.address });
    const key = openSharedAgentKey({ ...agent, shared, recipientPrivateKey: heir.privateKey });
    const loaded = await loadAgent({ store: readerStore, agent, agentKey: key, head: head.cid });
    expect(loaded.turns).toEqual([turn(0)]);
  });

  it("flushes the blocks to disk before the journal records a head that names them", async () => {
    const agentKey = generateAgentKey();
    const journal = new TurnJournal({ ...agent, dir: join(root, "journal-e"), key: agentKey });
    await journal.open();
    const order: string[] = [];
    const store = Object.create(writerStore) as typeof writerStore;
    store.put = async (...args) => (order.push("put"), writerStore.put(...args));
    store.flush = async (...args) => (order.push("flush"), writerStore.flush(...args));
    const markCommitted = journal.markCommitted.bind(journal);
    journal.markCommitted = async (...args) => (order.push("journal"), markCommitted(...args));
    const vault = await AgentVault.open({ store, journal, agent, agentKey, ownerKey });
    await vault.appendTurn(turn(0));
    await vault.commit();
    expect(order.slice(-2)).toEqual(["flush", "journal"]);
    expect(order.lastIndexOf("put")).toBeLessThan(order.indexOf("flush"));
    await journal.close();
  });

  it("keeps a turn's confidential flag, and reads and writes turns without it as before", async () => {
    const agentKey = generateAgentKey();
    const { vault, journal } = await openVault(join(root, "journal-confidential"), agentKey);
    await vault.appendTurn({ ...turn(0), speaker: "alice", confidential: true });
    await vault.appendTurn({ ...turn(1), confidential: false });
    const head = (await vault.commit())!;
    await journal.close();
    const loaded = await loadAgent({ store: writerStore, agent, ownerKey, head: head.cid });
    expect(loaded.turns).toEqual([{ ...turn(0), speaker: "alice", confidential: true }, turn(1)]);
    // A turn that is not confidential encodes to the bytes it had before the flag existed.
    const plain = turn(2);
    expect(encodeTurn({ ...plain, confidential: false })).toEqual(dagCbor.encode({ role: plain.role, text: plain.text, time: plain.time }));
    expect(decodeTurn(dagCbor.encode({ role: "user", text: "old", time: 5 }))).toEqual({ role: "user", text: "old", time: 5 });
    expect(() => encodeTurn({ ...plain, confidential: "yes" as unknown as boolean })).toThrow(InvalidVaultInputError);
  });

  it("writes no plaintext to the journal or the block store", async () => {
    const needle = Buffer.from(MARKER);
    for (const file of await filesUnder(root)) {
      expect(Buffer.from(await readFile(file)).includes(needle), file).toBe(false);
    }
  });
});
