/**
 * Crash test of the agent vault (journal + Helia block store + DAG commits) with SIGKILL: a child process
 * (vault-crash-child.ts) opens the vault on the same folders every run, recovers what the previous child left,
 * appends and commits turns, and is killed at a random point: while opening or recovering, between turns, on
 * its k-th acknowledged turn, or in the middle of a commit. After each kill the parent opens the same store,
 * journal and vault (whose open commits what the journal holds) and checks that every acknowledged turn is in
 * the vault exactly once and in acknowledgement order, that only turns the child had started appear besides,
 * that committed heads are durable and the head seq never goes back, and that the owner key loads the same
 * turns from the head CID. Half the time it checks a copy of the folders instead, leaving the recovery to the
 * next child (which may itself be killed in the middle of it).
 *
 * Each child loads its modules (seconds under tsx) while the previous one runs, and touches no folder before
 * the parent's `go`; so a kill costs about the time a child takes to load.
 *
 * Environment: VAULT_CRASH_KILLS (default 16), VAULT_CRASH_SEED (printed on failure; replays the plan up to
 * timing), VAULT_CRASH_VERBOSE=1 prints statistics, VAULT_CRASH_LOAD_AHEAD (children loading ahead, default
 * 1). VAULT_CRASH_MUTATION=ack-early|lying-store is passed to the child to check this test itself: it makes
 * the vault acknowledge a turn, or a commit, before it is written, and the test must then fail.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { cp, mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createHeliaBlockStore, type HeliaBlockStore } from "../../sdk/vault/block-store.js";
import { generateAgentKey } from "../../sdk/vault/crypto.js";
import { readCommit } from "../../sdk/vault/dag.js";
import { prng } from "../../sdk/vault/journal-crash-child.js";
import { TurnJournal } from "../../sdk/vault/journal.js";
import { AgentVault, loadAgent } from "../../sdk/vault/vault.js";
import { VAULT_CRASH_AGENT } from "./vault-crash-child.js";

/** Children loading their modules while one runs (VAULT_CRASH_LOAD_AHEAD); more only helps on idle cores. */
const LOAD_AHEAD = Number(process.env.VAULT_CRASH_LOAD_AHEAD ?? 1);
const CHILD = fileURLToPath(new URL("./vault-crash-child.ts", import.meta.url));
const agent = VAULT_CRASH_AGENT;

let root: string;
// Set by afterAll: a test that timed out keeps running in the background and must stop spawning children.
let finished = false;
const children = new Set<ChildProcess>();
const stores = new Set<HeliaBlockStore>();
const journals = new Set<TurnJournal>();

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), "soulmesh-vault-crash-"));
});

afterAll(async () => {
  finished = true;
  for (const child of children) child.kill("SIGKILL");
  await Promise.allSettled([...journals].map((j) => j.close()));
  await Promise.allSettled([...stores].map((s) => s.stop()));
  await rm(root, { recursive: true, force: true });
});

// ---------------------------------------------------------------------------------------------------------
// The child

type KillPlan =
  | { mode: "opening"; ms: number } // after `go`: while the store, journal or vault opens (and recovers)
  | { mode: "recovering"; ms: number } // after the journal reported the turns a crash left: during the recovery commit
  | { mode: "after-ready"; ms: number }
  | { mode: "at-ack"; ack: number }
  | { mode: "at-commit"; commit: number; ms: number }; // after the k-th `committing`: during the commit

function planKill(random: () => number, leftovers: boolean): KillPlan {
  // When the last check ran on a copy, the child starts by committing what the journal holds: aim there often.
  if (leftovers && random() < 0.4) return { mode: "recovering", ms: Math.floor(random() * 6) };
  const r = random();
  if (r < 0.2) return { mode: "opening", ms: Math.floor(random() * 150) };
  if (r < 0.45) return { mode: "after-ready", ms: Math.floor(random() * 300) };
  if (r < 0.7) return { mode: "at-ack", ack: 1 + Math.floor(random() * 60) };
  return { mode: "at-commit", commit: 1 + Math.floor(random() * 6), ms: Math.floor(random() * 10) };
}

interface ChildRun {
  lines: string[];
  stderr: string;
  signal: NodeJS.Signals | null;
  code: number | null;
  /** Whether the kill came from the safety net rather than the plan. */
  fallback: boolean;
}

/** A spawned child that is loading its modules; `start` lets it open the folders and kills it per the plan. */
interface PendingChild {
  loaded: Promise<void>;
  start(plan: KillPlan): Promise<ChildRun>;
  kill(): void;
}

function spawnChild(env: Record<string, string>): PendingChild {
  const child = spawn(process.execPath, ["--import", "tsx", CHILD], {
    env: { ...process.env, ...env },
    stdio: ["pipe", "pipe", "pipe"],
  });
  children.add(child);
  const lines: string[] = [];
  let partial = "";
  let stderr = "";
  let onLine: (line: string) => void = () => {};
  let markLoaded!: () => void;
  const loaded = new Promise<void>((resolve) => (markLoaded = resolve));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve, reject) => {
    child.on("error", reject);
    child.on("close", (code, signal) => {
      children.delete(child);
      markLoaded(); // a child that died while loading: start() reports it
      resolve({ code, signal });
    });
  });
  child.stdout!.setEncoding("utf8");
  child.stdout!.on("data", (chunk: string) => {
    partial += chunk;
    const parts = partial.split("\n");
    // A line cut by the kill was never written in full: it is ignored.
    partial = parts.pop()!;
    for (const line of parts) {
      lines.push(line);
      if (line.startsWith("loaded ")) markLoaded();
      onLine(line);
    }
  });
  child.stderr!.setEncoding("utf8");
  child.stderr!.on("data", (chunk: string) => (stderr += chunk));
  child.stdin!.on("error", () => {}); // EPIPE when the child is already gone

  const kill = (): void => {
    child.kill("SIGKILL");
  };
  return {
    loaded,
    kill,
    async start(plan) {
      await loaded;
      let fallback = false;
      // A safety net: a child that never reaches the planned point is killed anyway.
      const net = setTimeout(() => {
        fallback = true;
        kill();
      }, 10_000);
      const later = (ms: number): void => void setTimeout(kill, ms);
      let acks = 0;
      let commits = 0;
      onLine = (line) => {
        const what = line.split(" ")[0];
        if (what === "journal" && plan.mode === "recovering") later(plan.ms);
        else if (what === "ready" && plan.mode === "after-ready") later(plan.ms);
        else if (what === "ack" && plan.mode === "at-ack" && ++acks === plan.ack) kill();
        else if (what === "committing" && plan.mode === "at-commit" && ++commits === plan.commit) later(plan.ms);
      };
      child.stdin!.write("go\n");
      if (plan.mode === "opening") later(plan.ms);
      const { code, signal } = await exited;
      clearTimeout(net);
      return { lines, stderr, code, signal, fallback };
    },
  };
}

// ---------------------------------------------------------------------------------------------------------
// What a child reported

interface Report {
  /** Counters of the turns whose appendTurn was called. */
  sent: number;
  /** Counters acknowledged, in the order the acks came. */
  acked: number[];
  /** Commits that resolved: seq, turn count, CID. */
  committed: Array<{ seq: number; turnCount: number; cid: string }>;
  /** Commits started (`committing`) that had not resolved at the kill. */
  inFlightCommits: number;
  /** Turns the journal held at the child's open (left by the previous crash), or undefined before. */
  recovered: number | undefined;
  ready: boolean;
}

function parseReport(lines: string[]): Report {
  const report: Report = { sent: 0, acked: [], committed: [], inFlightCommits: 0, recovered: undefined, ready: false };
  for (const line of lines) {
    const [what, a, b, c] = line.split(" ");
    if (what === "send") report.sent = Number(a) + 1;
    else if (what === "ack") report.acked.push(Number(a));
    else if (what === "committing") report.inFlightCommits++;
    else if (what === "committed") {
      report.inFlightCommits--;
      report.committed.push({ seq: Number(a), turnCount: Number(b), cid: c! });
    } else if (what === "journal") report.recovered = Number(a);
    else if (what === "ready") report.ready = true;
  }
  return report;
}

// ---------------------------------------------------------------------------------------------------------
// The test

describe("AgentVault under SIGKILL", () => {
  const seed = Number(process.env.VAULT_CRASH_SEED ?? Math.floor(Math.random() * 2 ** 31));
  const kills = Number(process.env.VAULT_CRASH_KILLS ?? 16);

  it(`loses, duplicates and reorders no acknowledged turn across ${kills} kills at random points`, async () => {
    const random = prng(seed);
    const storeDir = join(root, "ipfs");
    const journalDir = join(root, "journal");
    const agentKey = generateAgentKey();
    // Any 32 bytes will do as the owner key (a wallet derives it with ownerKeyFromSigner); the same every run.
    const ownerKey = Uint8Array.from(randomBytes(32));
    const marker = `CRASH-${randomBytes(4).toString("hex")}`;
    const childEnv = (run: number): Record<string, string> => ({
      VAULT_CRASH_STORE_DIR: storeDir,
      VAULT_CRASH_JOURNAL_DIR: journalDir,
      VAULT_CRASH_AGENT_KEY: Buffer.from(agentKey).toString("hex"),
      VAULT_CRASH_OWNER_KEY: Buffer.from(ownerKey).toString("hex"),
      VAULT_CRASH_MARKER: marker,
      VAULT_CRASH_RUN: String(run),
      VAULT_CRASH_SEED: String(Math.floor(random() * 2 ** 31)),
    });

    // The vault's whole durable history as of the last check ("run:counter" per turn), and its head seq.
    let history: string[] = [];
    let headSeq = 0;
    // Commits known to be durable (acknowledged to a child, or made by the parent on the real folders).
    const durable = new Map<number, { cid: string; turnCount: number }>();
    const stats = {
      acks: 0,
      commits: 0,
      unackedKept: 0,
      killedInCommit: 0,
      childRecoveries: 0,
      killedInChildRecovery: 0,
      parentRecoveries: 0,
      fallbacks: 0,
      killedBeforeReady: 0,
      waitedForLoadMs: 0,
      byMode: {} as Record<string, number>,
    };
    const started = performance.now();

    // Children load their modules (seconds, under tsx) ahead of their turn; none touches a folder before `go`.
    const queue: PendingChild[] = [];
    let spawned = 0;
    const spawnUpTo = (n: number): void => {
      while (spawned < Math.min(n, kills) && !finished) queue.push(spawnChild(childEnv(spawned++)));
    };
    let leftovers = false; // whether the last check left the journal's turns for the next child to commit
    for (let run = 0; run < kills && !finished; run++) {
      const plan = planKill(random, leftovers);
      const onCopy = random() < 0.5;
      spawnUpTo(run + 1);
      const current = queue.shift()!;
      const waitFrom = performance.now();
      await current.loaded;
      stats.waitedForLoadMs += Math.round(performance.now() - waitFrom);
      const child = current.start(plan);
      spawnUpTo(run + 1 + LOAD_AHEAD);
      const result = await child;
      const context = `VAULT_CRASH_SEED=${seed} VAULT_CRASH_KILLS=${kills}, run ${run}, kill ${JSON.stringify(plan)}, checked on ${onCopy ? "a copy" : "the folders"}`;
      try {
        expect(result.signal, `the child died by itself (code ${result.code}): ${result.stderr}`).toBe("SIGKILL");
        const report = parseReport(result.lines);
        stats.byMode[plan.mode] = (stats.byMode[plan.mode] ?? 0) + 1;
        stats.acks += report.acked.length;
        stats.commits += report.committed.length;
        if (report.inFlightCommits > 0) stats.killedInCommit++;
        if (report.ready && report.recovered! > 0) stats.childRecoveries++;
        if (!report.ready) stats.killedBeforeReady++;
        if (!report.ready && report.recovered! > 0) stats.killedInChildRecovery++;
        if (result.fallback) stats.fallbacks++;
        for (let i = 1; i < report.acked.length; i++) {
          expect(report.acked[i]! > report.acked[i - 1]!, `acks out of call order: ${report.acked.join(",")}`).toBe(true);
        }
        for (const c of report.committed) durable.set(c.seq, { cid: c.cid, turnCount: c.turnCount });

        // Checked on a copy, the real folders keep the journal's leftovers for the next child to recover.
        let dirs = { store: storeDir, journal: journalDir };
        if (onCopy) {
          dirs = { store: join(root, `copy-${run}`, "ipfs"), journal: join(root, `copy-${run}`, "journal") };
          await cp(storeDir, dirs.store, { recursive: true });
          await cp(journalDir, dirs.journal, { recursive: true }).catch((err: NodeJS.ErrnoException) => {
            if (err.code !== "ENOENT") throw err; // killed before the journal was created
          });
        }
        const check = await checkVault({ dirs, agentKey, ownerKey, marker, history, headSeq, durable });
        if (check.pendingBefore > 0) stats.parentRecoveries++;
        leftovers = onCopy && check.pendingBefore > 0;
        if (!onCopy && check.head.seq > 0) durable.set(check.head.seq, { cid: check.head.cid, turnCount: check.head.turnCount });
        if (onCopy) await rm(join(root, `copy-${run}`), { recursive: true, force: true });

        // What this run added: its own turns only, each once, a prefix of those it started, every ack included.
        const added = check.ids.slice(history.length);
        const counters = added.map((id) => {
          const [r, c] = id.split(":");
          expect(Number(r), `turn ${id} of another run appeared after run ${run}`).toBe(run);
          return Number(c);
        });
        expect(counters, "the run's turns are not its first ones in call order").toEqual(counters.map((_, i) => i));
        expect(counters.length, `${counters.length} turns kept but only ${report.sent} were sent`).toBeLessThanOrEqual(report.sent);
        const lastAck = report.acked.at(-1) ?? -1;
        expect(counters.length, `acknowledged turn ${run}:${lastAck} lost (kept ${counters.length} turns)`).toBeGreaterThan(lastAck);
        stats.unackedKept += counters.length - (lastAck + 1);
        history = check.ids;
        headSeq = check.head.seq;
      } catch (err) {
        for (const waiting of queue) waiting.kill();
        throw new Error(`${context}: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
      }
    }
    const seconds = (performance.now() - started) / 1000;
    if (process.env.VAULT_CRASH_VERBOSE) {
      console.log({ seed, kills, seconds: seconds.toFixed(1), turns: history.length, headSeq, ...stats });
    }
    expect(stats.acks, `VAULT_CRASH_SEED=${seed}: the children acknowledged too few turns`).toBeGreaterThan(kills);
    expect(stats.commits, `VAULT_CRASH_SEED=${seed}: the children committed nothing`).toBeGreaterThan(0);
    // 1.5 to 2.5 s a kill on two busy cores, most of it a child loading Helia under tsx (~60 ms to start it).
  }, 30_000 + kills * 4_000);
});

/**
 * Opens the store, journal and vault (whose open commits what the journal holds), checks them against what
 * is known to be durable, and closes everything so the next child can take the locks.
 */
async function checkVault(params: {
  dirs: { store: string; journal: string };
  agentKey: Uint8Array;
  ownerKey: Uint8Array;
  marker: string;
  history: string[];
  headSeq: number;
  durable: Map<number, { cid: string; turnCount: number }>;
}): Promise<{ ids: string[]; head: { seq: number; cid: string; turnCount: number }; pendingBefore: number }> {
  const { dirs, agentKey, ownerKey, marker } = params;
  // A missing block fails fast instead of waiting 30 s for peers that do not exist.
  const store = createHeliaBlockStore({ dir: dirs.store, fetchTimeoutMs: 2_000 });
  stores.add(store);
  const journal = new TurnJournal({ dir: dirs.journal, key: agentKey, ...agent });
  journals.add(journal);
  try {
    await store.start();
    await journal.open();
    const pendingBefore = (await journal.pending()).length;
    const vault = await AgentVault.open({ store, journal, agent, agentKey, ownerKey });
    expect(await journal.pending(), "the journal still holds turns after the recovery commit").toEqual([]);
    const turns = await vault.turns();
    const head = vault.head;
    if (head === undefined) {
      expect(params.history, "the vault lost its head").toEqual([]);
      expect(params.durable.size, "the vault lost its head").toBe(0);
      return { ids: [], head: { seq: 0, cid: "", turnCount: 0 }, pendingBefore };
    }
    expect(head.turnCount, "the head's turn count").toBe(turns.length);
    expect(head.seq >= params.headSeq, `head seq went back from ${params.headSeq} to ${head.seq}`).toBe(true);

    // Every turn is the child's, once; what was there before is still there, in the same order.
    const ids = turns.map((t) => {
      expect(t.text.startsWith(`${marker}:`), `a turn the child never wrote: ${t.text.slice(0, 60)}`).toBe(true);
      return t.text.split(":").slice(1, 3).join(":");
    });
    const dup = ids.find((id, i) => ids.indexOf(id) !== i);
    expect(dup, `turn ${dup} is in the vault twice`).toBeUndefined();
    expect(ids.slice(0, params.history.length), "the history checked before changed").toEqual(params.history);

    // The commit chain: consecutive seqs back to 1, holding every commit known to be durable.
    const ctx = { store, agent, key: agentKey };
    let commit = head;
    for (;;) {
      const known = params.durable.get(commit.seq);
      if (known !== undefined) {
        expect(commit.cid.toString(), `commit #${commit.seq} is not the one acknowledged`).toBe(known.cid);
        expect(commit.turnCount, `commit #${commit.seq}'s turn count`).toBe(known.turnCount);
      }
      if (commit.prev === null) break;
      const prev = await readCommit(ctx, commit.prev);
      expect(prev.seq, `commit #${commit.seq} follows #${prev.seq}`).toBe(commit.seq - 1);
      expect(prev.turnCount <= commit.turnCount, `commit #${commit.seq} has fewer turns than #${prev.seq}`).toBe(true);
      commit = prev;
    }
    expect(commit.seq, "the first commit's seq").toBe(1);
    const highestDurable = Math.max(0, ...params.durable.keys());
    expect(head.seq >= highestDurable, `acknowledged commit #${highestDurable} lost (head is #${head.seq})`).toBe(true);

    // The owner's key opens the same history from the head CID.
    const loaded = await loadAgent({ store, agent, ownerKey, head: head.cid });
    expect(loaded.agentKey).toEqual(agentKey);
    expect(loaded.head.cid.equals(head.cid)).toBe(true);
    expect(loaded.turns, "loadAgent from the head gives other turns than the vault").toEqual(turns);
    return { ids, head: { seq: head.seq, cid: head.cid.toString(), turnCount: head.turnCount }, pendingBefore };
  } finally {
    await journal.close();
    journals.delete(journal);
    await store.stop();
    stores.delete(store);
  }
}
