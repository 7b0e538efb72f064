/**
 * The child process of vault-crash.test.ts: it opens an agent vault on a Helia block store and a turn
 * journal (recovering what the previous, killed, child left), then appends turns and commits them until the
 * parent kills it with SIGKILL. It tells the parent on stdout what the vault acknowledged, so that the parent
 * can check after the kill that no acknowledged turn was lost, duplicated or reordered.
 *
 * Protocol (one line each; a line is written synchronously, and only once the call it reports resolved):
 * - `loaded <ms>`: modules loaded (ms since the process started). The child then waits for a line `go` on
 *   stdin before it touches either folder, so the parent can spawn it while the previous child still runs
 *   (loading Helia under tsx takes seconds; opening the folders, milliseconds). It exits if stdin closes.
 * - `store <ms>`: the Helia store started (ms since `go`); `journal <pending>`: the journal opened with that
 *   many turns left by a crash; `ready <headSeq> <turnCount> <ms>`: `AgentVault.open` (which commits what
 *   the journal held) resolved.
 * - `send <counter>` just before `appendTurn` of the turn with text `<marker>:<run>:<counter>`, and
 *   `ack <counter>` once it resolved.
 * - `committing` just before `commit()`, `committed <seq> <turnCount> <cid>` once it resolved.
 *
 * Environment: VAULT_CRASH_STORE_DIR, VAULT_CRASH_JOURNAL_DIR, VAULT_CRASH_AGENT_KEY and VAULT_CRASH_OWNER_KEY
 * (hex; the same every run), VAULT_CRASH_MARKER, VAULT_CRASH_RUN (this run's id), VAULT_CRASH_SEED (shapes
 * bursts and commits). VAULT_CRASH_MUTATION is for checking the test itself and must stay unset otherwise:
 * `ack-early` makes appendTurn resolve before the journal write, `lying-store` makes the block store resolve
 * puts before they are written; the test must fail with either.
 *
 * @example
 * VAULT_CRASH_STORE_DIR=/tmp/v/ipfs VAULT_CRASH_JOURNAL_DIR=/tmp/v/journal VAULT_CRASH_AGENT_KEY=… VAULT_CRASH_OWNER_KEY=… \
 *   VAULT_CRASH_MARKER=M VAULT_CRASH_RUN=0 VAULT_CRASH_SEED=1 node --import tsx test/vault/vault-crash-child.ts
 */
import { writeSync } from "node:fs";
import { pathToFileURL } from "node:url";
import { createHeliaBlockStore } from "../../sdk/vault/block-store.js";
import { prng } from "../../sdk/vault/journal-crash-child.js";
import { TurnJournal } from "../../sdk/vault/journal.js";
import type { BlockStore } from "../../sdk/vault/types.js";
import { AgentVault } from "../../sdk/vault/vault.js";

export const VAULT_CRASH_AGENT = {
  agentId: 11n,
  chainId: 31337n,
  registry: "0x5FbDB2315678afecb367f032d93F642f64180aa3",
} as const;

// Synchronous writes: a line is in the pipe before the next await, so the parent never sees an ack before the
// state it describes exists (an ack lost to the kill only weakens the check, never fools it).
function say(line: string): void {
  writeSync(1, line + "\n");
}

/** Test-only faults, to prove the parent's checks catch a vault that acknowledges too early. */
function applyMutation(name: string | undefined, store: BlockStore): BlockStore {
  if (name === undefined || name === "") return store;
  if (name === "ack-early") {
    const append = AgentVault.prototype.appendTurn;
    AgentVault.prototype.appendTurn = function (this: AgentVault, ...args: Parameters<typeof append>) {
      void append.apply(this, args).catch(() => undefined);
      return Promise.resolve({ seq: 0n });
    };
    return store;
  }
  if (name === "lying-store") {
    return new Proxy(store, {
      get(target, prop, receiver) {
        if (prop === "put") {
          return (...args: Parameters<BlockStore["put"]>) => {
            setTimeout(() => void target.put(...args).catch(() => undefined), 50);
            return Promise.resolve();
          };
        }
        const value = Reflect.get(target, prop, receiver) as unknown;
        return typeof value === "function" ? (value as (...a: unknown[]) => unknown).bind(target) : value;
      },
    });
  }
  throw new Error(`unknown VAULT_CRASH_MUTATION ${name}`);
}

/** Resolves on a line `go` on stdin; exits the process if stdin ends first (the parent is gone). */
function waitForGo(): Promise<void> {
  return new Promise((resolve) => {
    let buffered = "";
    process.stdin.setEncoding("utf8");
    process.stdin.on("data", (chunk: string) => {
      buffered += chunk;
      if (buffered.split("\n").includes("go")) resolve();
    });
    process.stdin.on("end", () => process.exit(3));
  });
}

async function main(): Promise<void> {
  const env = process.env;
  const agentKey = Uint8Array.from(Buffer.from(env.VAULT_CRASH_AGENT_KEY!, "hex"));
  const ownerKey = Uint8Array.from(Buffer.from(env.VAULT_CRASH_OWNER_KEY!, "hex"));
  const marker = env.VAULT_CRASH_MARKER!;
  const run = env.VAULT_CRASH_RUN!;
  const random = prng(Number(env.VAULT_CRASH_SEED ?? "1"));
  say(`loaded ${Math.round(performance.now())}`);
  await waitForGo();
  const t0 = performance.now();

  const helia = createHeliaBlockStore({ dir: env.VAULT_CRASH_STORE_DIR! });
  await helia.start();
  say(`store ${Math.round(performance.now() - t0)}`);
  const store = applyMutation(env.VAULT_CRASH_MUTATION, helia);

  const journal = new TurnJournal({ dir: env.VAULT_CRASH_JOURNAL_DIR!, key: agentKey, ...VAULT_CRASH_AGENT });
  await journal.open();
  say(`journal ${(await journal.pending()).length}`);
  const vault = await AgentVault.open({ store, journal, agent: VAULT_CRASH_AGENT, agentKey, ownerKey });
  say(`ready ${vault.head?.seq ?? 0} ${vault.head?.turnCount ?? 0} ${Math.round(performance.now() - t0)}`);

  let counter = 0;
  for (;;) {
    // Bursts of concurrent appends exercise the journal's grouped writes; a commit is sometimes started while
    // a burst is in flight, as a session that commits every N turns would.
    const burst = 1 + Math.floor(random() * 3);
    const calls: Promise<unknown>[] = [];
    const commitAt = random() < 0.3 ? Math.floor(random() * (burst + 1)) : -1;
    for (let i = 0; i <= burst; i++) {
      if (i === commitAt) {
        say("committing");
        calls.push(
          vault.commit().then((head) => {
            if (head !== undefined) say(`committed ${head.seq} ${head.turnCount} ${head.cid.toString()}`);
          }),
        );
      }
      if (i === burst) break;
      const c = counter++;
      const role = c % 2 === 0 ? "user" : "assistant";
      say(`send ${c}`);
      calls.push(
        vault
          .appendTurn({ role, text: `${marker}:${run}:${c}:` + "x".repeat(Math.floor(random() * 300)), time: Date.now() })
          .then(() => say(`ack ${c}`)),
      );
    }
    await Promise.all(calls);
  }
}

// Only when run as a script: the test imports VAULT_CRASH_AGENT from here.
if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main().catch((err: unknown) => {
    process.stderr.write(`vault-crash-child: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exit(2);
  });
}
