import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtemp, readdir, readFile, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { Level } from "level";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { rejection } from "../../test/helpers/blocks.js";
import { SoulmeshError } from "../errors.js";
import { CRASH_AGENT, prng } from "./journal-crash-child.js";
import {
  JournalCommitRangeError,
  JournalEntryCorruptError,
  JournalKeyMismatchError,
  JournalLockedError,
  JournalNotOpenError,
} from "./errors.js";
import { TurnJournal } from "./journal.js";

const REF = { agentId: 7n, chainId: 31337n, registry: "0x5FbDB2315678afecb367f032d93F642f64180aa3" };
const text = new TextEncoder();
const decode = (b: Uint8Array) => new TextDecoder().decode(b);
const CHILD = fileURLToPath(new URL("./journal-crash-child.ts", import.meta.url));

let root: string;
let dirs = 0;
const journals: TurnJournal[] = [];

function freshDir(): string {
  return join(root, `j${dirs++}`);
}

function journal(dir: string, key: Uint8Array, ref: Partial<typeof REF> = {}): TurnJournal {
  const j = new TurnJournal({ dir, key, ...REF, ...ref });
  journals.push(j);
  return j;
}

/** Every file under `dir` (LevelDB logs, tables, manifest, LOG) that contains `needle`. */
async function filesContaining(dir: string, needle: string): Promise<string[]> {
  const hits: string[] = [];
  const bytes = Buffer.from(needle, "utf8");
  for (const entry of await readdir(dir, { recursive: true, withFileTypes: true })) {
    if (!entry.isFile()) continue;
    const path = join(entry.parentPath, entry.name);
    if ((await readFile(path)).includes(bytes)) hits.push(path);
  }
  return hits;
}

function entryKey(seq: bigint): Uint8Array {
  const key = new Uint8Array(9);
  key[0] = 0x02;
  new DataView(key.buffer).setBigUint64(1, seq);
  return key;
}

/** Rewrites one raw value of a closed journal, as disk damage would. */
async function tamper(dir: string, edit: (db: Level<Uint8Array, Uint8Array>) => Promise<void>): Promise<void> {
  const db = new Level<Uint8Array, Uint8Array>(dir, { keyEncoding: "view", valueEncoding: "view" });
  await db.open();
  try {
    await edit(db);
  } finally {
    await db.close();
  }
}

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), "soulmesh-journal-"));
});

afterAll(async () => {
  await Promise.allSettled(journals.map((j) => j.close()));
  await rm(root, { recursive: true, force: true });
});

describe("TurnJournal", () => {
  it("appends durably with increasing seqs, returns pending turns decrypted, and keeps seqs across reopen", async () => {
    const dir = freshDir();
    const key = randomBytes(32);
    const j = journal(dir, key);
    await j.open();
    expect(j.lastSeq).toBe(0n);
    const seqs: bigint[] = [];
    for (let i = 0; i < 5; i++) seqs.push((await j.append(text.encode(`turn ${i}`))).seq);
    expect(seqs).toEqual([1n, 2n, 3n, 4n, 5n]);
    const pending = await j.pending();
    expect(pending.map((p) => [p.seq, decode(p.entry)])).toEqual(seqs.map((s, i) => [s, `turn ${i}`]));
    await j.close();
    expect((await stat(dir)).mode & 0o777).toBe(0o700);

    const again = journal(dir, key);
    await again.open();
    expect(again.lastSeq).toBe(5n);
    expect((await again.pending()).length).toBe(5);
    expect((await again.append(text.encode("turn 5"))).seq).toBe(6n);
    await again.close();
  });

  it("gives concurrent appends consecutive seqs in call order (grouped writes)", async () => {
    const j = journal(freshDir(), randomBytes(32));
    await j.open();
    const results = await Promise.all(Array.from({ length: 40 }, (_, i) => j.append(text.encode(`c${i}`))));
    expect(results.map((r) => r.seq)).toEqual(Array.from({ length: 40 }, (_, i) => BigInt(i + 1)));
    const pending = await j.pending();
    expect(pending.map((p) => decode(p.entry))).toEqual(Array.from({ length: 40 }, (_, i) => `c${i}`));
    await j.close();
  });

  it("markCommitted deletes a prefix atomically with its metadata, never reuses seqs, refuses unknown seqs", async () => {
    const dir = freshDir();
    const key = randomBytes(32);
    const j = journal(dir, key);
    await j.open();
    for (let i = 1; i <= 4; i++) await j.append(text.encode(`t${i}`));
    await j.markCommitted(2n, { meta: { head: text.encode("cid-2") } });
    expect(j.committedSeq).toBe(2n);
    expect((await j.pending()).map((p) => p.seq)).toEqual([3n, 4n]);
    expect(decode((await j.getMeta("head"))!)).toBe("cid-2");
    await j.markCommitted(1n); // below the watermark: nothing to do
    expect(j.committedSeq).toBe(2n);
    const err = await rejection(j.markCommitted(5n));
    expect(err).toBeInstanceOf(JournalCommitRangeError);
    expect(err).toMatchObject({ name: "JournalCommitRangeError", uptoSeq: 5n, lastSeq: 4n });
    await j.markCommitted(4n, { meta: { head: text.encode("cid-4") } });
    expect(await j.pending()).toEqual([]);
    await j.close();

    const again = journal(dir, key);
    await again.open();
    expect([again.lastSeq, again.committedSeq]).toEqual([4n, 4n]);
    expect(decode((await again.getMeta("head"))!)).toBe("cid-4");
    expect((await again.append(text.encode("t5"))).seq).toBe(5n);
    await again.close();
  });

  it("stores sealed metadata: set, overwrite, delete, survive reopen", async () => {
    const dir = freshDir();
    const key = randomBytes(32);
    const j = journal(dir, key);
    await j.open();
    expect(await j.getMeta("head")).toBeUndefined();
    await j.setMeta("head", text.encode("a"));
    await j.setMeta("head", text.encode("b"));
    await j.setMeta("seq", Uint8Array.of(1, 2, 3));
    await j.setMeta("seq", null);
    await j.close();
    const again = journal(dir, key);
    await again.open();
    expect(decode((await again.getMeta("head"))!)).toBe("b");
    expect(await again.getMeta("seq")).toBeUndefined();
    await again.close();
  });

  it("leaves no plaintext in any file of the folder (entries, metadata values and names)", async () => {
    const dir = freshDir();
    const marker = `PLAINTEXT-MARKER-${randomBytes(6).toString("hex")}`;
    const j = journal(dir, randomBytes(32));
    await j.open();
    // Over LevelDB's 4 MiB write buffer, so some turns reach sorted tables as well as the log.
    const big = marker.repeat(Math.ceil(100_000 / marker.length));
    for (let i = 0; i < 50; i++) await j.append(text.encode(`${marker}:${i}:${big}`));
    await j.markCommitted(20n, { meta: { [`name-${marker}`]: text.encode(marker) } });
    await j.setMeta("head", text.encode(`${marker}:head`));
    expect(await filesContaining(dir, marker)).toEqual([]);
    await j.close();
    expect((await readdir(dir)).some((f) => f.endsWith(".ldb"))).toBe(true);
    expect(await filesContaining(dir, marker)).toEqual([]);
  });

  it("refuses a wrong key, agent or deployment at open with a typed error, leaving the journal intact", async () => {
    const dir = freshDir();
    const key = randomBytes(32);
    const j = journal(dir, key);
    await j.open();
    await j.append(text.encode("mine"));
    await j.close();

    for (const [k, ref] of [
      [randomBytes(32), {}],
      [key, { agentId: 8n }],
      [key, { chainId: 1n }],
      [key, { registry: "0xe7f1725E7734CE288F8367e1Bb143E90bb3F0512" }],
    ] as const) {
      const other = journal(dir, k, ref);
      const err = await rejection(other.open());
      expect(err).toBeInstanceOf(JournalKeyMismatchError);
      expect(err).toBeInstanceOf(SoulmeshError);
      expect((err as Error).name).toBe("JournalKeyMismatchError");
      expect(other.isOpen).toBe(false);
    }

    const again = journal(dir, key);
    await again.open();
    expect((await again.pending()).map((p) => decode(p.entry))).toEqual(["mine"]);
    await again.close();
  });

  it("names the seq of a corrupted or misplaced entry and keeps the others readable", async () => {
    const dir = freshDir();
    const key = randomBytes(32);
    const j = journal(dir, key);
    await j.open();
    for (let i = 1; i <= 4; i++) await j.append(text.encode(`t${i}`));
    await j.close();
    await tamper(dir, async (db) => {
      const two = (await db.get(entryKey(2n)))!;
      two[two.length - 1]! ^= 0x01;
      await db.put(entryKey(2n), two);
      // A valid record of turn 1 copied under turn 4's key must not pass for turn 4.
      await db.put(entryKey(4n), (await db.get(entryKey(1n)))!);
    });

    const again = journal(dir, key);
    await again.open();
    const err = await rejection(again.pending());
    expect(err).toBeInstanceOf(JournalEntryCorruptError);
    expect(err).toMatchObject({ name: "JournalEntryCorruptError", seq: 2n });

    const corrupt: bigint[] = [];
    const readable = await again.pending({ onCorrupt: (e) => corrupt.push(e.seq) });
    expect(corrupt).toEqual([2n, 4n]);
    expect(readable.map((p) => [p.seq, decode(p.entry)])).toEqual([
      [1n, "t1"],
      [3n, "t3"],
    ]);
    // Committing past the damaged turns drops them.
    await again.markCommitted(4n);
    expect(await again.pending()).toEqual([]);
    expect((await again.append(text.encode("t5"))).seq).toBe(5n);
    await again.close();
  });

  it("refuses a second journal on an open folder, calls before open, and honours aborts", async () => {
    const dir = freshDir();
    const key = randomBytes(32);
    const j = journal(dir, key);
    expect(await rejection(j.append(text.encode("early")))).toBeInstanceOf(JournalNotOpenError);
    expect(() => j.lastSeq).toThrow(JournalNotOpenError);
    await j.open();
    await j.open(); // idempotent

    const second = journal(dir, key);
    expect(await rejection(second.open())).toMatchObject({ name: "JournalLockedError" });
    expect(await rejection(second.open())).toBeInstanceOf(JournalLockedError);

    expect(await rejection(j.append(text.encode("no"), { signal: AbortSignal.abort() }))).toMatchObject({
      name: "AbortError",
    });
    // The first append is taken by the writer at once; the second waits in the queue and leaves it on abort.
    const controller = new AbortController();
    const first = j.append(text.encode("a"));
    const second2 = j.append(text.encode("b"), { signal: controller.signal });
    controller.abort();
    expect(await rejection(second2)).toMatchObject({ name: "AbortError" });
    expect((await first).seq).toBe(1n);
    expect((await j.append(text.encode("c"))).seq).toBe(2n);

    // close() writes what was already called and lets reads in progress finish.
    const late = [j.append(text.encode("d")), j.append(text.encode("e"))];
    const reading = j.pending();
    await j.close();
    expect((await Promise.all(late)).map((r) => r.seq)).toEqual([3n, 4n]);
    expect((await reading).length).toBeGreaterThanOrEqual(2);
    expect(await rejection(j.append(text.encode("f")))).toBeInstanceOf(JournalNotOpenError);

    const again = journal(dir, key);
    await again.open();
    expect((await again.pending()).map((p) => decode(p.entry))).toEqual(["a", "c", "d", "e"]);
    await again.close();
  });
});

// ---------------------------------------------------------------------------------------------------------
// Crash test: a child appends turns until SIGKILL; after each kill the journal must hold every acknowledged turn
// that was not committed, with no gaps or duplicates, and open cleanly.

interface ChildRun {
  lines: string[];
  stderr: string;
  signal: NodeJS.Signals | null;
  code: number | null;
  mode: string;
}

type KillPlan = { mode: "after-spawn"; ms: number } | { mode: "after-ready"; ms: number } | { mode: "at-ack"; ack: number };

function planKill(random: () => number): KillPlan {
  const ms = 20 + Math.floor(random() * 281);
  const r = random();
  if (r < 0.2) return { mode: "after-spawn", ms };
  if (r < 0.6) return { mode: "after-ready", ms };
  return { mode: "at-ack", ack: 1 + Math.floor(random() * 400) };
}

function runChild(env: Record<string, string>, plan: KillPlan): Promise<ChildRun> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ["--import", "tsx", CHILD], {
      env: { ...process.env, ...env },
      stdio: ["ignore", "pipe", "pipe"],
    });
    const lines: string[] = [];
    let partial = "";
    let stderr = "";
    let acks = 0;
    const kill = (): void => {
      child.kill("SIGKILL");
    };
    // A safety net: a child that never gets to the planned point is killed anyway.
    const fallback = setTimeout(kill, 15_000);
    if (plan.mode === "after-spawn") setTimeout(kill, plan.ms);
    child.stdout.setEncoding("utf8");
    child.stdout.on("data", (chunk: string) => {
      partial += chunk;
      const parts = partial.split("\n");
      partial = parts.pop()!;
      for (const line of parts) {
        lines.push(line);
        if (line.startsWith("ready ") && plan.mode === "after-ready") setTimeout(kill, plan.ms);
        if (line.startsWith("ack ") && plan.mode === "at-ack" && ++acks === plan.ack) kill();
      }
    });
    child.stderr.setEncoding("utf8");
    child.stderr.on("data", (chunk: string) => (stderr += chunk));
    child.on("error", reject);
    child.on("close", (code, signal) => {
      clearTimeout(fallback);
      // A line cut by the kill was never acknowledged in full: ignore it.
      resolve({ lines, stderr, signal, code, mode: JSON.stringify(plan) });
    });
  });
}

describe("TurnJournal under SIGKILL", () => {
  const seed = Number(process.env.JOURNAL_CRASH_SEED ?? Math.floor(Math.random() * 2 ** 31));
  const kills = Number(process.env.JOURNAL_CRASH_KILLS ?? 30);

  it(`loses no acknowledged turn across ${kills} kills at random points`, async () => {
    const random = prng(seed);
    const dir = freshDir();
    const key = randomBytes(32);
    const marker = `CRASH-MARKER-${randomBytes(6).toString("hex")}`;
    // What the journal must hold unless committed: every acknowledged turn, and every turn seen after a kill.
    const expected = new Map<bigint, string>();
    let confirmed = 0n; // highest `committed` the child printed
    let requested = 0n; // highest `committing`: a commit in flight at the kill may or may not have landed
    let maxAcked = 0n;
    let totalAcks = 0;
    const stats = { beforeReady: 0, commitInFlight: 0, unackedJournaled: 0, byMode: {} as Record<string, number> };

    for (let run = 0; run < kills; run++) {
      const plan = planKill(random);
      const child = await runChild(
        {
          JOURNAL_DIR: dir,
          JOURNAL_KEY: key.toString("hex"),
          JOURNAL_MARKER: marker,
          JOURNAL_RUN: String(run),
          JOURNAL_SEED: String(Math.floor(random() * 2 ** 31)),
        },
        plan
      );
      const context = `JOURNAL_CRASH_SEED=${seed}, run ${run}, kill ${child.mode}`;
      stats.byMode[plan.mode] = (stats.byMode[plan.mode] ?? 0) + 1;
      if (!child.lines.some((l) => l.startsWith("ready "))) stats.beforeReady++;
      try {
        expect(child.signal, `the child died by itself: ${child.stderr}`).toBe("SIGKILL");
        for (const line of child.lines) {
          const [what, a, b] = line.split(" ");
          if (what === "ack") {
            const seq = BigInt(a!);
            expect(expected.has(seq), `seq ${seq} acknowledged twice`).toBe(false);
            expected.set(seq, `${marker}:${run}:${b}:`);
            if (seq > maxAcked) maxAcked = seq;
            totalAcks++;
          } else if (what === "committing") {
            requested = BigInt(a!);
          } else if (what === "committed") {
            confirmed = BigInt(a!);
          }
        }

        if (requested > confirmed) stats.commitInFlight++;
        const j = new TurnJournal({ dir, key, ...CRASH_AGENT });
        await j.open();
        try {
          const committed = j.committedSeq;
          expect(committed >= confirmed && committed <= requested, `watermark ${committed} not in [${confirmed}, ${requested}]`).toBe(true);
          expect(j.lastSeq >= maxAcked, `lastSeq ${j.lastSeq} below acknowledged ${maxAcked}`).toBe(true);
          const pending = await j.pending();
          // Consecutive from the watermark to lastSeq: no gap, no duplicate.
          expect(pending.map((p) => p.seq), `pending seqs not consecutive from #${committed + 1n} to #${j.lastSeq}`).toEqual(
            Array.from({ length: Number(j.lastSeq - committed) }, (_, i) => committed + 1n + BigInt(i))
          );
          const bySeq = new Map(pending.map((p) => [p.seq, decode(p.entry)]));
          for (const [seq, prefix] of expected) {
            if (seq <= committed) continue;
            expect(bySeq.get(seq)?.startsWith(prefix), `acknowledged turn #${seq} (${prefix}) lost`).toBe(true);
          }
          const seen = new Set<string>();
          for (const [seq, body] of bySeq) {
            const id = body.split(":").slice(0, 3).join(":");
            expect(body.startsWith(`${marker}:`), `turn #${seq} is not one the child wrote`).toBe(true);
            expect(seen.has(id), `turn ${id} journaled twice`).toBe(false);
            if (!expected.has(seq)) stats.unackedJournaled++;
            seen.add(id);
            expected.set(seq, `${id}:`);
          }
          for (const seq of [...expected.keys()]) if (seq <= committed) expected.delete(seq);
          // The head moved in the same batch as the watermark.
          const head = await j.getMeta("head");
          expect(head === undefined ? undefined : decode(head)).toBe(committed === 0n ? undefined : `${marker}:head:${committed}`);

          // Sometimes commit everything at restart, as the vault does, so the journal stays small.
          if (random() < 0.3 && j.lastSeq > committed) {
            await j.markCommitted(j.lastSeq, { meta: { head: text.encode(`${marker}:head:${j.lastSeq}`) } });
            expected.clear();
          }
          confirmed = requested = j.committedSeq;
        } finally {
          await j.close();
        }
      } catch (err) {
        throw new Error(`${context}: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
      }
    }
    if (process.env.JOURNAL_CRASH_VERBOSE) console.log({ seed, kills, totalAcks, ...stats });
    expect(totalAcks, `JOURNAL_CRASH_SEED=${seed}: the children acknowledged nothing`).toBeGreaterThan(kills);
    expect(await filesContaining(dir, marker), `JOURNAL_CRASH_SEED=${seed}`).toEqual([]);
  });
});
