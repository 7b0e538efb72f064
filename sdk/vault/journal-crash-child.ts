/**
 * The child process of journal.test.ts's crash test: it appends turns as fast as it can until the parent
 * kills it with SIGKILL, and tells the parent on stdout what the journal acknowledged, so the parent can check
 * after the kill that nothing acknowledged was lost.
 *
 * Protocol (one line each, written only once the matching call resolved):
 * - `ready <lastSeq> <committedSeq>`: the journal opened.
 * - `ack <seq> <counter>`: append of turn `<marker>:<run>:<counter>` resolved with `seq`.
 * - `committing <seq>` before calling markCommitted(seq), `committed <seq>` once it resolved.
 *
 * Environment: JOURNAL_DIR, JOURNAL_KEY (hex), JOURNAL_MARKER, JOURNAL_RUN (this run's id), JOURNAL_SEED
 * (shapes the bursts and commits, so a failing run can be replayed up to timing).
 *
 * @example
 * JOURNAL_DIR=/tmp/j JOURNAL_KEY=… JOURNAL_MARKER=M JOURNAL_RUN=0 JOURNAL_SEED=1 node --import tsx sdk/vault/journal-crash-child.ts
 */
import { writeSync } from "node:fs";
import { pathToFileURL } from "node:url";
import { TurnJournal } from "./journal.js";
export { prng } from "../../test/helpers/prng.js";
import { prng } from "../../test/helpers/prng.js";

export const CRASH_AGENT = {
  agentId: 7n,
  chainId: 31337n,
  registry: "0x5FbDB2315678afecb367f032d93F642f64180aa3",
} as const;


// Synchronous writes: a line is in the pipe before the next await, so the parent never sees an ack later
// than the kernel state it describes (an ack lost to the kill only weakens the check, never fools it).
function say(line: string): void {
  writeSync(1, line + "\n");
}

async function main(): Promise<void> {
  const env = process.env;
  const dir = env.JOURNAL_DIR!;
  const key = Uint8Array.from(Buffer.from(env.JOURNAL_KEY!, "hex"));
  const marker = env.JOURNAL_MARKER!;
  const run = env.JOURNAL_RUN!;
  const random = prng(Number(env.JOURNAL_SEED ?? "1"));

  const journal = new TurnJournal({ dir, key, ...CRASH_AGENT });
  await journal.open();
  say(`ready ${journal.lastSeq} ${journal.committedSeq}`);

  let counter = 0;
  let lastAcked = journal.lastSeq;
  for (;;) {
    // Bursts of concurrent appends exercise the grouped writes; single ones the one-turn path.
    const burst = 1 + Math.floor(random() * 4);
    const calls: Promise<void>[] = [];
    for (let i = 0; i < burst; i++) {
      const c = counter++;
      const body = new TextEncoder().encode(`${marker}:${run}:${c}:` + "x".repeat(Math.floor(random() * 200)));
      calls.push(
        journal.append(body).then(({ seq }) => {
          if (seq > lastAcked) lastAcked = seq;
          say(`ack ${seq} ${c}`);
        })
      );
    }
    await Promise.all(calls);
    if (random() < 0.25 && lastAcked > journal.committedSeq) {
      // Commit a prefix of what was acknowledged, as the vault does after publishing to IPFS.
      const span = lastAcked - journal.committedSeq;
      const upto = journal.committedSeq + 1n + BigInt(Math.floor(random() * Number(span)));
      say(`committing ${upto}`);
      await journal.markCommitted(upto, { meta: { head: new TextEncoder().encode(`${marker}:head:${upto}`) } });
      say(`committed ${upto}`);
    }
  }
}

// Only when run as a script: the test imports CRASH_AGENT and prng from here.
if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main().catch((err: unknown) => {
    process.stderr.write(`journal-crash-child: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exit(2);
  });
}
