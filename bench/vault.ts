/**
 * The vault DAG on an embedded Helia block store (LevelDB on disk, in a temp folder removed at the end): bytes
 * written and commit latency per chat turn at 10, 1,000 and 10,000 turns of history, and the time to load an
 * agent with 10,000 turns from its head CID.
 *
 * The workload: one agent. A turn is a user message and the agent's reply, each 300–600 bytes of text from a
 * seeded generator, encoded as dag-cbor `{ user: { text, at }, agent: { text, at } }` (≈ 0.9 KB). The first
 * commit also sets three memory items (profile ≈ 0.5 KB, notebook ≈ 0.5 KB, working-memory ≈ 1 KB). After
 * that, as a chat would, every commit carries exactly one turn, and every 10th turn the same commit also
 * replaces the working-memory item (≈ 1 KB, new content).
 *
 * Measured windows: starting at 10, 1,000 and 10,000 turns of history, the next 320 commits (one turn each).
 * 320 is the least common multiple of 64 (turn blocks per index block) and 10 (the working-memory period),
 * so every window holds exactly 5 index blocks and 32 item blocks wherever it starts: the per-turn average
 * carries the amortized index and item bytes without any sawtooth. (So the "10 turns" window spans
 * history 10 → 330.) Between windows the history is filled with the same turns, `--fill-turns N` per commit
 * (default 1, i.e. exactly as a chat would; a larger N only speeds up the fill and is reported). Every commit
 * carries the agent key wrapped for its owner, as AgentVault writes them. One run takes ≈ 30 s on 2 shared cores: the fill, one turn per commit, ≈ 7–11 s; the
 * bitswap load ≈ 15 s.
 *
 * - bytesPerTurnAtN: bytes of blocks newly written to the store during the window / 320. The store is wrapped:
 *   each put is counted unless that CID was put before (the store starts empty, so that is "already present";
 *   no has() round trip is added to the timed commits). Split by block kind (turn, commit, item, index,
 *   told apart by their clear links) in `bytesPerTurnByKind`.
 * - commitP50Ms / commitP95Ms: wall time of `writeCommit` (encode, seal, hash, Helia put into LevelDB; and the
 *   64th turn block's walk back through 63 turn blocks to write its index) over all 960 window commits; also
 *   per window, and the time inside the store's put/get within them (`storeMsP50`), and the index commits alone.
 * - load10000Ms (the headline load): the 10,000-turn commit (the head at the start of the last window) read
 *   by a FRESH store instance on the same folder — the first store stopped (LevelDB closed, its process cache
 *   gone) and a new one started; the OS page cache is left warm. Timed: readCommit + readTurns (all 10,000
 *   turns) + readItem of every item the commit has, from the head CID; the store's start is reported apart
 *   (storeStartMs). load10000WarmMs: the same load again on that instance.
 * - load10000RemoteMs: the same load by a second Helia node (empty folder) connected to the first over
 *   loopback TCP, every block fetched by bitswap (capped at `--remote-timeout S` seconds, default 60; null
 *   when skipped with `--no-remote` or over the cap).
 * - blocks / storeBytes: distinct blocks and their bytes after the whole run (10,320 turns);
 *   storeDiskBytes: the size of the LevelDB block folder on disk.
 *
 * Goals (from the issue): bytes per turn flat within 10% from 10 to 10,000 turns (bytesPerTurnFlatness =
 * max/min − 1 ≤ 0.1); commit p50 ≤ 20 ms. Progress on stderr; one JSON line of figures last on stdout.
 *
 *   npm run bench -- vault [--fill-turns N] [--remote-timeout S] [--no-remote]
 */
import { readdirSync, rmSync, statSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import * as dagCbor from "@ipld/dag-cbor";
import type { CID } from "multiformats/cid";
import { createHeliaBlockStore, type HeliaBlockStore } from "../sdk/vault/block-store.js";
import { generateAgentKey, wrapAgentKey, type AgentRef } from "../sdk/vault/crypto.js";
import {
  ITEM_KINDS,
  readCommit,
  readItem,
  readTurns,
  TURN_BLOCKS_PER_INDEX,
  writeCommit,
  type Commit,
  type CommitChanges,
  type DagContext,
} from "../sdk/vault/dag.js";
import type { BlockStore } from "../sdk/vault/types.js";
import { log, argNumber, round, percentile } from "./_util.js";
import { prng } from "../test/helpers/prng.js";


const SIZES = [10, 1_000, 10_000] as const;
/** lcm(64 turn blocks per index, 10 turns per working-memory change). */
const WINDOW = 320;
const ITEM_PERIOD = 10;
const AGENT: AgentRef = { agentId: 1n, chainId: 31337n, registry: "0x5FbDB2315678afecb367f032d93F642f64180aa3" };




// ---------------------------------------------------------------------------------------------------------
// Deterministic content


const WORDS = (
  "i you we they the a an and but so because if when then maybe really think know want need like love feel " +
  "trip friday mountains sea weekend train ticket hotel booking dinner recipe garden book chapter story music " +
  "concert sister brother mother father friend work meeting project deadline report budget plan idea question " +
  "answer morning evening tomorrow yesterday week month year weather rain sun cold warm coffee tea walk run " +
  "remember forgot should could would might about with from into over after before during again still already " +
  "good great fine tired busy happy worried excited sure perhaps probably definitely sounds lovely interesting"
).split(" ");

/** Text of `min`–`max` bytes (ASCII words), from the generator. */
function text(rand: () => number, min: number, max: number): string {
  const target = min + Math.floor(rand() * (max - min + 1));
  let out = "";
  while (out.length < target) {
    let sentence = "";
    const words = 6 + Math.floor(rand() * 12);
    for (let i = 0; i < words; i++) sentence += (i === 0 ? "" : " ") + WORDS[Math.floor(rand() * WORDS.length)]!;
    out += (out.length === 0 ? "" : " ") + sentence[0]!.toUpperCase() + sentence.slice(1) + (rand() < 0.2 ? "?" : ".");
  }
  return out.slice(0, target);
}

const T0 = Date.UTC(2025, 0, 1);
const rand = prng(0x50a1e5);

function encodeTurn(i: number): Uint8Array {
  const at = T0 + i * 90_000;
  return dagCbor.encode({
    user: { text: text(rand, 300, 600), at },
    agent: { text: text(rand, 300, 600), at: at + 4_000 },
  });
}

const item = (min: number, max: number): Uint8Array => new TextEncoder().encode(text(rand, min, max));

// ---------------------------------------------------------------------------------------------------------
// A store that counts what is written and the time spent in it

type BlockKind = "turn" | "commit" | "item" | "index";

/** Tells a vault block's kind from its clear links: items have none, turn blocks one (prev), an index 64–65. */
function blockKind(bytes: Uint8Array): BlockKind {
  const links = (dagCbor.decode(bytes) as { l: CID[] }).l.length;
  if (links === 0) return "item";
  if (links <= 1) return "turn";
  if (links >= TURN_BLOCKS_PER_INDEX) return "index";
  return "commit";
}

class CountingStore implements BlockStore {
  private readonly seen = new Set<string>();
  blocks = 0;
  bytes = 0;
  /** ms spent in the inner store's put and get since the last reset. */
  storeMs = 0;
  /** The new blocks since recording started, to tell their kinds apart afterwards (off the timed path). */
  recorded: Uint8Array[] | undefined;

  constructor(readonly inner: BlockStore) {}

  async put(cid: CID, bytes: Uint8Array, options?: { signal?: AbortSignal }): Promise<void> {
    const key = cid.toString();
    const start = performance.now();
    await this.inner.put(cid, bytes, options);
    this.storeMs += performance.now() - start;
    if (this.seen.has(key)) return;
    this.seen.add(key);
    this.blocks++;
    this.bytes += bytes.byteLength;
    this.recorded?.push(bytes);
  }
  async get(cid: CID, options?: { signal?: AbortSignal }): Promise<Uint8Array> {
    const start = performance.now();
    try {
      return await this.inner.get(cid, options);
    } finally {
      this.storeMs += performance.now() - start;
    }
  }
  has(cid: CID, options?: { signal?: AbortSignal }): Promise<boolean> {
    return this.inner.has(cid, options);
  }
  start(): Promise<void> {
    return this.inner.start();
  }
  stop(): Promise<void> {
    return this.inner.stop();
  }
}

// ---------------------------------------------------------------------------------------------------------

function dirBytes(dir: string): number {
  let total = 0;
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    total += entry.isDirectory() ? dirBytes(path) : statSync(path).size;
  }
  return total;
}

interface Loaded {
  ms: number;
  turns: number;
  items: number;
}

/** readCommit + readTurns + readItem of every item, from the head CID. */
async function load(ctx: DagContext, head: CID, signal?: AbortSignal): Promise<Loaded> {
  const start = performance.now();
  const commit = await readCommit(ctx, head, { signal });
  const [turns, items] = await Promise.all([
    readTurns(ctx, commit, { signal }),
    Promise.all(ITEM_KINDS.filter((k) => commit.items[k] !== undefined).map((k) => readItem(ctx, commit, k, { signal }))),
  ]);
  return { ms: performance.now() - start, turns: turns.length, items: items.length };
}

async function main(): Promise<void> {
  const fillTurns = argNumber("fill-turns", 1);
  const remoteTimeoutS = argNumber("remote-timeout", 60);
  const remote = !process.argv.includes("--no-remote");
  const runStart = performance.now();

  const root = await mkdtemp(join(tmpdir(), "soulmesh-bench-vault-"));
  process.once("exit", () => rmSync(root, { recursive: true, force: true })); // also when it fails
  for (const signal of ["SIGINT", "SIGTERM"] as const) process.once(signal, () => process.exit(130));
  const dirA = join(root, "a");
  const dirB = join(root, "b");
  const started: HeliaBlockStore[] = [];
  const open = async (dir: string, peers?: string[]): Promise<HeliaBlockStore> => {
    const store = createHeliaBlockStore({ dir, ...(peers ? { peers } : {}), fetchTimeoutMs: remoteTimeoutS * 1000 });
    await store.start();
    started.push(store);
    return store;
  };

  try {
    const writer = new CountingStore(await open(dirA));
    const key = generateAgentKey();
    const ctx: DagContext = { store: writer, agent: AGENT, key };
    // As the vault writes them: every commit carries the agent key wrapped for the owner.
    const wrappedKey = wrapAgentKey({ ...AGENT, agentKey: key, ownerKey: generateAgentKey() });

    let head: Commit | undefined;
    let turn = 0;
    /** One commit of `n` turns; the working-memory item changes whenever a 10th turn goes in. */
    const commit = async (n: number): Promise<void> => {
      const turns = Array.from({ length: n }, (_, k) => encodeTurn(turn + k));
      const changes: CommitChanges = { turns };
      if (head === undefined) {
        changes.items = { profile: item(400, 600), notebook: item(400, 600), "working-memory": item(900, 1100) };
      } else if (Math.floor((turn + n) / ITEM_PERIOD) > Math.floor(turn / ITEM_PERIOD)) {
        changes.items = { "working-memory": item(900, 1100) };
      }
      head = await writeCommit(ctx, head, changes, { wrappedKey });
      turn += n;
    };
    const fill = async (to: number): Promise<number> => {
      const start = performance.now();
      const from = turn;
      while (turn < to) await commit(Math.min(fillTurns, to - turn));
      const ms = performance.now() - start;
      if (turn > from) log(`  filled ${from} → ${to} turns in ${(ms / 1000).toFixed(1)} s (${fillTurns} per commit)`);
      return ms;
    };

    interface Window {
      size: number;
      bytesPerTurn: number;
      byKind: Record<BlockKind, number>;
      latencies: number[];
      storeMs: number[];
      indexLatencies: number[];
    }
    const windows: Window[] = [];
    let fillMs = 0;
    let head10000: CID | undefined;
    for (const size of SIZES) {
      fillMs += await fill(size);
      if (size === 10_000) head10000 = head!.cid;
      const bytesBefore = writer.bytes;
      writer.recorded = [];
      const latencies: number[] = [];
      const storeMs: number[] = [];
      const indexLatencies: number[] = [];
      for (let i = 0; i < WINDOW; i++) {
        const blocksBefore = head!.turnBlockCount;
        writer.storeMs = 0;
        const start = performance.now();
        await commit(1);
        const ms = performance.now() - start;
        latencies.push(ms);
        storeMs.push(writer.storeMs);
        if (Math.floor(head!.turnBlockCount / TURN_BLOCKS_PER_INDEX) > Math.floor(blocksBefore / TURN_BLOCKS_PER_INDEX)) {
          indexLatencies.push(ms);
        }
      }
      const byKind: Record<BlockKind, number> = { turn: 0, commit: 0, item: 0, index: 0 };
      for (const bytes of writer.recorded) byKind[blockKind(bytes)] += bytes.byteLength;
      writer.recorded = undefined;
      for (const k of Object.keys(byKind) as BlockKind[]) byKind[k] = round(byKind[k] / WINDOW);
      const w: Window = {
        size,
        bytesPerTurn: round((writer.bytes - bytesBefore) / WINDOW),
        byKind,
        latencies,
        storeMs,
        indexLatencies,
      };
      windows.push(w);
      log(
        `at ${size} turns: ${w.bytesPerTurn} B/turn (${JSON.stringify(byKind)}), commit p50 ${round(percentile(latencies, 50), 2)} ms, ` +
          `p95 ${round(percentile(latencies, 95), 2)} ms, store p50 ${round(percentile(storeMs, 50), 2)} ms, ` +
          `index commits p50 ${round(percentile(indexLatencies, 50), 2)} ms`,
      );
    }
    const blocks = writer.blocks;
    const storeBytes = writer.bytes;
    const totalTurns = turn;

    log("restarting the store on the same folder (cold process cache) and loading the 10,000-turn agent…");
    await writer.stop();
    started.splice(started.indexOf(writer.inner as HeliaBlockStore), 1);
    const storeDiskBytes = dirBytes(join(dirA, "blocks"));
    const startAt = performance.now();
    const reopened = await open(dirA);
    const storeStartMs = performance.now() - startAt;
    const local = await load({ store: reopened, agent: AGENT, key }, head10000!);
    if (local.turns !== 10_000) throw new Error(`loaded ${local.turns} turns, expected 10,000`);
    const warm = await load({ store: reopened, agent: AGENT, key }, head10000!);
    log(
      `  store start ${round(storeStartMs)} ms; load ${round(local.ms)} ms cold (${local.turns} turns, ${local.items} items), ` +
        `${round(warm.ms)} ms warm`,
    );

    let remoteMs: number | null = null;
    let remoteNote: string | undefined;
    if (remote) {
      log(`loading it again from a second Helia node over loopback (bitswap; cap ${remoteTimeoutS} s)…`);
      const reader = await open(dirB, reopened.multiaddrs());
      try {
        const fetched = await load({ store: reader, agent: AGENT, key }, head10000!, AbortSignal.timeout(remoteTimeoutS * 1000));
        if (fetched.turns !== 10_000) throw new Error(`loaded ${fetched.turns} turns over bitswap, expected 10,000`);
        remoteMs = fetched.ms;
        log(`  remote load ${round(remoteMs)} ms`);
      } catch (err) {
        remoteNote = `failed or over ${remoteTimeoutS} s: ${err instanceof Error ? err.message : String(err)}`;
        log(`  remote load ${remoteNote}`);
      }
    } else {
      remoteNote = "skipped (--no-remote)";
    }

    const all = windows.flatMap((w) => w.latencies);
    const perTurn = windows.map((w) => w.bytesPerTurn);
    const at = (size: number) => windows.find((w) => w.size === size)!;
    const figures = {
      bytesPerTurnAt10: at(10).bytesPerTurn,
      bytesPerTurnAt1000: at(1_000).bytesPerTurn,
      bytesPerTurnAt10000: at(10_000).bytesPerTurn,
      bytesPerTurnFlatness: round(Math.max(...perTurn) / Math.min(...perTurn) - 1, 4),
      commitP50Ms: round(percentile(all, 50), 2),
      commitP95Ms: round(percentile(all, 95), 2),
      load10000Ms: round(local.ms),
      load10000RemoteMs: remoteMs === null ? null : round(remoteMs),
      ...(remoteNote !== undefined ? { load10000RemoteNote: remoteNote } : {}),
      load10000WarmMs: round(warm.ms),
      storeStartMs: round(storeStartMs),
      perSize: Object.fromEntries(
        windows.map((w) => [
          w.size,
          {
            bytesPerTurn: w.bytesPerTurn,
            bytesPerTurnByKind: w.byKind,
            commitP50Ms: round(percentile(w.latencies, 50), 2),
            commitP95Ms: round(percentile(w.latencies, 95), 2),
            commitMaxMs: round(Math.max(...w.latencies), 2),
            storeMsP50: round(percentile(w.storeMs, 50), 2),
            indexCommitP50Ms: round(percentile(w.indexLatencies, 50), 2),
          },
        ]),
      ),
      windowCommits: WINDOW,
      fillTurnsPerCommit: fillTurns,
      fillS: round(fillMs / 1000),
      turns: totalTurns,
      blocks,
      storeBytes,
      storeDiskBytes,
      wallS: round((performance.now() - runStart) / 1000),
      goals: { bytesPerTurnFlatness: 0.1, commitP50Ms: 20 },
    };
    log(
      `bytes per turn ${figures.bytesPerTurnAt10} / ${figures.bytesPerTurnAt1000} / ${figures.bytesPerTurnAt10000} ` +
        `(flatness ${figures.bytesPerTurnFlatness}, goal ≤ 0.1); commit p50 ${figures.commitP50Ms} ms (goal ≤ 20); ` +
        `load of 10,000 turns ${figures.load10000Ms} ms local, ${figures.load10000RemoteMs ?? "—"} ms over bitswap`,
    );
    console.log(JSON.stringify(figures));
  } finally {
    for (const store of started.reverse()) await store.stop().catch(() => {});
    await rm(root, { recursive: true, force: true });
  }
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
