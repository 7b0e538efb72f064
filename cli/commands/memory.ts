/**
 * `soulmesh memory show|search|export|import|forget AGENT`: look into and manage the memory of an agent you
 * own. No provider is needed: the memory is decrypted on this machine from its folder or, on a new machine,
 * from IPFS by the head published on chain. Changes (import, forget) are saved to IPFS and the new head is
 * published when the command ends.
 *
 * Export format (version 1): one JSON object, plaintext,
 * `{ format: "soulmesh-agent-memory", version: 1, exportedAt, chainId, agentId, personaId, owner, head,
 *    turns: [{ role, text, time, speaker?, confidential? }], profile: { userId: ProfileFact[] }, notebook,
 *    segmentSummaries, topicSummaries, workingMemory }`.
 * Import reads only `turns` (the rest derives from them): each is appended through the memory engine, so the
 * index, notebook and follow-ups update as if it had been said; a turn already present (same time, role and
 * text) is skipped, so importing into a non-empty agent appends only what it lacks and importing twice adds
 * nothing.
 */
import { chmod, readFile, writeFile } from "node:fs/promises";
import { resolve } from "node:path";
import { createInterface } from "node:readline/promises";
import type { Command } from "commander";
import { InvalidArgumentError } from "commander";
import type { Agent } from "../../sdk/client/agent/agent.js";
import { SoulmeshError } from "../../sdk/errors.js";
import type { ProfileFact } from "../../sdk/memory/memory.js";
import type { ItemKind } from "../../sdk/vault/dag.js";
import { ITEM_KINDS } from "../../sdk/vault/dag.js";
import type { Turn } from "../../sdk/vault/vault.js";
import { openCliAgent, parseAgentId } from "../agent-session.js";
import type { CliAgent } from "../agent-session.js";
import { withContext } from "../context.js";
import type { CommandContext } from "../context.js";
import { plural } from "../output.js";

/** The `format` field of an export. */
export const MEMORY_EXPORT_FORMAT = "soulmesh-agent-memory";
/** The export format version this version writes and reads. */
export const MEMORY_EXPORT_VERSION = 1;
/** Largest export file `import` reads. */
const MAX_IMPORT_BYTES = 256 * 1024 * 1024;

/** A file given to `memory import` that is not an export this version reads. Nothing was changed. */
export class MemoryImportFormatError extends SoulmeshError {
  override readonly name = "MemoryImportFormatError";
  constructor(
    readonly path: string,
    readonly problems: string[],
  ) {
    super(
      `${path} is not a Soulmesh memory export this version can import (${problems.slice(0, 5).join("; ")}` +
        `${problems.length > 5 ? `; and ${problems.length - 5} more` : ""}). Nothing was imported. ` +
        `Export one with \`soulmesh memory export AGENT --out FILE\` (format version ${MEMORY_EXPORT_VERSION}).`,
    );
  }
}

/** `memory forget` without saying what to forget. */
export class ForgetSelectorError extends SoulmeshError {
  override readonly name = "ForgetSelectorError";
  constructor(detail: string) {
    super(
      `${detail}. Say what to forget: --turn N (repeatable; numbers from \`soulmesh memory show AGENT --turns 20\`), ` +
        "--match TEXT (turns containing it), or --all. Nothing was forgotten.",
    );
  }
}

/** A destructive command that cannot ask for confirmation (no terminal) and was not given --yes. */
export class ConfirmationRequiredError extends SoulmeshError {
  override readonly name = "ConfirmationRequiredError";
  constructor(what: string) {
    super(`${what} cannot be undone and there is no terminal to confirm it on: add --yes to go ahead. Nothing was changed.`);
  }
}

/** The user answered no. */
export class ForgetDeclinedError extends SoulmeshError {
  override readonly name = "ForgetDeclinedError";
  constructor() {
    super("Nothing was forgotten (not confirmed). Add --yes to skip the question.");
  }
}

/** A plaintext copy of an agent's memory. */
export interface MemoryExport {
  format: typeof MEMORY_EXPORT_FORMAT;
  version: typeof MEMORY_EXPORT_VERSION;
  exportedAt: string;
  chainId: number;
  agentId: string;
  personaId: string;
  owner: string;
  head: { cid: string; seq: number } | null;
  turns: Turn[];
  profile: Record<string, ProfileFact[]>;
  notebook: unknown[];
  segmentSummaries: unknown[];
  topicSummaries: unknown[];
  workingMemory: unknown;
}

function parsePositiveInt(value: string): number {
  const n = Number(value);
  if (!/^\d+$/.test(value.trim()) || !Number.isSafeInteger(n) || n < 1) throw new InvalidArgumentError("expected a positive integer.");
  return n;
}

function parseTurnIndex(value: string, previous: number[] = []): number[] {
  const n = Number(value);
  if (!/^\d+$/.test(value.trim()) || !Number.isSafeInteger(n)) throw new InvalidArgumentError("expected a turn number (0 is the first turn).");
  return [...previous, n];
}

/** Opens the agent for a memory command: no provider, no maintenance, no deposit needed. */
function openForMemory(ctx: CommandContext, agentId: bigint): Promise<CliAgent> {
  return openCliAgent(ctx, agentId, { connect: false, maintenance: false, onProgress: (m) => ctx.out.progress(m), signal: ctx.signal });
}

/** Every user the memory may hold a profile of. */
function profileUsers(agent: Agent): string[] {
  const users = new Set<string>([agent.owner]);
  for (const t of agent.memory.turns) users.add(t.partner);
  if (agent.memory.creator !== undefined) users.add(agent.memory.creator);
  return [...users];
}

function profiles(agent: Agent): Record<string, ProfileFact[]> {
  const out: Record<string, ProfileFact[]> = {};
  for (const user of profileUsers(agent)) {
    const facts = agent.memory.profile(user);
    if (facts.length > 0) out[user] = [...facts];
  }
  return out;
}

function headJson(session: CliAgent): { cid: string; seq: number; published: boolean } | null {
  const head = session.agent.vault.head;
  if (head === undefined) return null;
  return { cid: head.cid.toString(), seq: head.seq, published: BigInt(head.seq) <= session.agent.publishedSeq };
}

function clip(text: string, max = 160): string {
  const one = text.replace(/\s+/g, " ").trim();
  return one.length > max ? `${one.slice(0, max - 1)}…` : one;
}

function when(ms: number): string {
  return new Date(ms).toISOString().replace("T", " ").slice(0, 16);
}

function turnLine(index: number, t: Turn, owner: string): string {
  const who = t.role === "user" ? (t.speaker === undefined || t.speaker === owner ? "you" : t.speaker) : t.role === "assistant" ? "agent" : "system";
  return `  ${String(index).padStart(4)}  ${when(t.time)}  ${who.padEnd(6)} ${t.confidential === true ? "(confidential) " : ""}${clip(t.text)}`;
}

async function runShow(ctx: CommandContext, agentId: bigint, opts: { turns?: number }): Promise<void> {
  const session = await openForMemory(ctx, agentId);
  try {
    const { agent } = session;
    const memory = agent.memory;
    const history = agent.history();
    const last = opts.turns === undefined ? [] : history.map((turn, index) => ({ index, ...turn })).slice(-opts.turns);
    const now = Date.now();
    const followUps = memory.workingMemory.followUps.filter((f) => f.firedAt === undefined);
    const head = headJson(session);
    const value = {
      agentId,
      personaId: session.persona.personaId,
      persona: session.persona.card.name,
      owner: agent.owner,
      loaded: agent.loaded,
      turnCount: history.length,
      head,
      profile: profiles(agent),
      notebook: memory.notebook.map((n) => ({ text: n.text, rule: n.rule, givenBy: n.givenBy, audience: n.audience, time: n.time })),
      topicSummaries: memory.topicSummaries.map((s) => ({ topic: s.topic, text: s.text, time: s.time })),
      segmentSummaries: memory.segmentSummaries.map((s) => ({ text: s.text, time: s.time, sources: s.sources })),
      workingMemory: {
        notes: memory.workingMemory.notes.map((n) => ({ about: n.speaker, text: n.text, time: n.time })),
        followUps: followUps.map((f) => ({ userId: f.userId, question: f.question, due: f.due, isDue: f.due <= now })),
      },
      ...(opts.turns !== undefined && { turns: last }),
      dataDir: session.dataDir,
      ipfs: session.ipfs,
    };
    const lines = [
      `agent #${agentId} (${session.persona.card.name}, persona #${session.persona.personaId}), owner ${agent.owner}`,
      `turns     ${history.length} (loaded from ${agent.loaded.from === "chain" ? "IPFS by the head on chain" : agent.loaded.from === "local" ? "this machine" : "nowhere: a new agent"})`,
      `head      ${head === null ? "none yet" : `${head.cid} (#${head.seq}, ${head.published ? "published on chain" : "not yet published"})`}`,
      "profile:",
      ...(Object.keys(value.profile).length === 0 ? ["  (nothing yet)"] : Object.entries(value.profile).flatMap(([user, facts]) => [
        `  ${user === agent.owner ? "you" : user}:`,
        ...facts.map((f) => `    - (${f.kind}) ${clip(f.text)}`),
      ])),
      "notebook:",
      ...(value.notebook.length === 0 ? ["  (nothing yet)"] : value.notebook.map((n) => `  - ${n.rule ? "[rule] " : ""}${clip(n.text)}`)),
      "summaries:",
      ...(value.topicSummaries.length + value.segmentSummaries.length === 0
        ? ["  (none yet)"]
        : [...value.topicSummaries.map((s) => `  [${s.topic ?? "topic"}] ${clip(s.text)}`), ...value.segmentSummaries.map((s) => `  ${when(s.time)} ${clip(s.text)}`)]),
      "working memory:",
      ...(value.workingMemory.notes.length + followUps.length === 0
        ? ["  (empty)"]
        : [
            ...value.workingMemory.notes.map((n) => `  note about ${n.about}: ${clip(n.text)}`),
            ...value.workingMemory.followUps.map((f) => `  follow-up ${f.isDue ? "due now" : `due ${when(f.due)}`}: ${clip(f.question)}`),
          ]),
      ...(opts.turns === undefined ? [] : [`last ${last.length} turns:`, ...last.map((t) => turnLine(t.index, t, agent.owner))]),
    ];
    ctx.out.result(value, lines.join("\n"));
  } finally {
    await session.close();
  }
}

async function runSearch(ctx: CommandContext, agentId: bigint, query: string, opts: { top: number }): Promise<void> {
  const session = await openForMemory(ctx, agentId);
  try {
    const { agent } = session;
    const hits = await agent.memory.index.search(query, { k: opts.top, listener: { userId: agent.owner, isOwner: true }, signal: ctx.signal });
    const results = hits.map((h) => ({ score: h.score, kind: h.item.kind, id: h.item.id, speaker: h.item.speaker, time: h.item.time, text: h.item.text }));
    ctx.out.result(
      { agentId, query, results },
      results.length === 0
        ? `Nothing in agent #${agentId}'s memory matches "${query}".`
        : results
            .map((r) => `${r.score.toFixed(3)}  ${r.kind.padEnd(9)} ${(r.speaker === agent.owner ? "you" : clip(r.speaker, 12)).padEnd(12)} ${when(r.time)}  ${clip(r.text)}`)
            .join("\n"),
    );
  } finally {
    await session.close();
  }
}

/**
 * The plaintext export of an opened agent's memory.
 *
 * @example
 * const data = exportMemory(session) // { format: "soulmesh-agent-memory", version: 1, turns: [...], … }
 */
export function exportMemory(session: CliAgent): MemoryExport {
  const { agent } = session;
  const memory = agent.memory;
  const head = agent.vault.head;
  return {
    format: MEMORY_EXPORT_FORMAT,
    version: MEMORY_EXPORT_VERSION,
    exportedAt: new Date().toISOString(),
    chainId: session.chainId,
    agentId: agent.agentId.toString(),
    personaId: session.persona.personaId.toString(),
    owner: agent.owner,
    head: head === undefined ? null : { cid: head.cid.toString(), seq: head.seq },
    turns: agent.history().map((t) => ({ ...t })),
    profile: profiles(agent),
    notebook: [...memory.notebook],
    segmentSummaries: [...memory.segmentSummaries],
    topicSummaries: [...memory.topicSummaries],
    workingMemory: memory.workingMemory,
  };
}

async function runExport(ctx: CommandContext, agentId: bigint, opts: { out?: string }): Promise<void> {
  const session = await openForMemory(ctx, agentId);
  let data: MemoryExport;
  try {
    data = exportMemory(session);
  } finally {
    await session.close();
  }
  const text = `${JSON.stringify(data, null, 2)}\n`;
  if (opts.out === undefined) {
    process.stderr.write("warning: this is your agent's memory in plaintext; keep it on this machine.\n");
    process.stdout.write(text);
    return;
  }
  const path = resolve(opts.out);
  // 0600 from the first byte: the plaintext never exists readable by others, even briefly.
  await writeFile(path, text, { mode: 0o600, flag: "w" });
  await chmod(path, 0o600);
  ctx.out.result(
    { agentId, path, turns: data.turns.length, bytes: Buffer.byteLength(text), format: MEMORY_EXPORT_FORMAT, version: MEMORY_EXPORT_VERSION, plaintext: true },
    `Exported ${data.turns.length} turns of agent #${agentId} to ${path} (readable by you only).\n` +
      "warning: it is plaintext, unlike the encrypted memory on IPFS: keep it on this machine, and delete it when done.",
  );
}

/**
 * Checks an export file's content and returns its turns; every problem is collected before anything is changed.
 *
 * @example
 * const turns = parseMemoryExport(JSON.parse(text), "memory.json")
 * @throws MemoryImportFormatError for another format or version, or malformed turns.
 */
export function parseMemoryExport(value: unknown, path: string): Turn[] {
  const problems: string[] = [];
  if (typeof value !== "object" || value === null || Array.isArray(value)) throw new MemoryImportFormatError(path, ["it is not a JSON object"]);
  const v = value as Record<string, unknown>;
  if (v.format !== MEMORY_EXPORT_FORMAT) problems.push(`its format is ${JSON.stringify(v.format ?? null)}, not "${MEMORY_EXPORT_FORMAT}"`);
  if (v.version !== MEMORY_EXPORT_VERSION) problems.push(`its format version is ${JSON.stringify(v.version ?? null)}; this version reads ${MEMORY_EXPORT_VERSION}`);
  if (!Array.isArray(v.turns)) problems.push("it has no turns array");
  if (problems.length > 0) throw new MemoryImportFormatError(path, problems);
  const turns: Turn[] = [];
  for (const [i, raw] of (v.turns as unknown[]).entries()) {
    const t = raw as Partial<Turn> | null;
    const bad = (why: string): void => void problems.push(`turn ${i} ${why}`);
    if (typeof t !== "object" || t === null) {
      bad("is not an object");
      continue;
    }
    if (t.role !== "user" && t.role !== "assistant" && t.role !== "system") bad(`has role ${JSON.stringify(t.role ?? null)}`);
    if (typeof t.text !== "string" || t.text.length === 0 || t.text.length > 1 << 20) bad("has no text (or more than 1 MiB)");
    if (typeof t.time !== "number" || !Number.isSafeInteger(t.time) || t.time < 0) bad("has no time in milliseconds since the epoch");
    if (t.speaker !== undefined && (typeof t.speaker !== "string" || t.speaker.length > 256)) bad("has a speaker that is not a short string");
    if (t.confidential !== undefined && typeof t.confidential !== "boolean") bad("has a confidential flag that is not a boolean");
    turns.push({
      role: t.role as Turn["role"],
      text: t.text as string,
      time: t.time as number,
      ...(typeof t.speaker === "string" && { speaker: t.speaker }),
      ...(t.confidential === true && { confidential: true }),
    });
  }
  if (problems.length > 0) throw new MemoryImportFormatError(path, problems);
  return turns;
}

const turnKey = (t: Turn): string => JSON.stringify([t.time, t.role, t.text]);

async function runImport(ctx: CommandContext, agentId: bigint, file: string): Promise<void> {
  const path = resolve(file);
  const bytes = await readFile(path);
  if (bytes.byteLength > MAX_IMPORT_BYTES) throw new MemoryImportFormatError(path, [`it is larger than ${MAX_IMPORT_BYTES} bytes`]);
  let value: unknown;
  try {
    value = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes));
  } catch {
    throw new MemoryImportFormatError(path, ["it is not UTF-8 JSON"]);
  }
  // Checked whole before the agent is even opened: a bad file changes nothing.
  const turns = parseMemoryExport(value, path);
  const session = await openForMemory(ctx, agentId);
  let added = 0;
  let skipped = 0;
  let published;
  try {
    const present = new Set(session.agent.history().map(turnKey));
    for (const turn of turns) {
      const key = turnKey(turn);
      if (present.has(key)) {
        skipped++;
        continue;
      }
      await session.agent.memory.recordTurn(turn, { signal: ctx.signal });
      present.add(key);
      added++;
    }
  } finally {
    ({ published } = await session.close());
  }
  const head = headJson(session);
  ctx.out.result(
    { agentId, path, imported: added, skipped, turnCount: session.agent.history().length, head, published: published ?? null },
    `Imported ${added} turns into agent #${agentId}${skipped > 0 ? ` (${skipped} already there, skipped)` : ""}; it now has ` +
      `${session.agent.history().length} turns.` +
      (published !== undefined ? ` New memory head ${published.cid} (#${published.seq}) published on chain.` : ""),
  );
}

interface ForgetOptions {
  turn?: number[];
  match?: string;
  all: boolean;
  yes: boolean;
}

/** The turns a forget selects, by index. */
function selectTurns(history: readonly Turn[], opts: ForgetOptions): number[] {
  if (opts.all) return history.map((_, i) => i);
  const chosen = new Set<number>();
  for (const i of opts.turn ?? []) {
    if (i >= history.length) throw new ForgetSelectorError(`Turn ${i} does not exist: the agent has ${history.length} turns (0 to ${history.length - 1})`);
    chosen.add(i);
  }
  if (opts.match !== undefined) {
    const needle = opts.match.toLowerCase();
    history.forEach((t, i) => t.text.toLowerCase().includes(needle) && chosen.add(i));
  }
  return [...chosen].sort((a, b) => a - b);
}

/** The memory kinds that may hold what the forgotten turns said, and go with them. */
function derivedKinds(agent: Agent, forgotten: readonly number[], all: boolean): ItemKind[] {
  if (all) return [...ITEM_KINDS];
  const ids = new Set(forgotten.map((i) => `turn:${i}`));
  const from = (sources: readonly string[] | undefined): boolean => (sources ?? []).some((s) => ids.has(s));
  // Summaries, topics and the index are made from turns and are rebuilt or remade from what remains.
  const kinds: ItemKind[] = ["summaries", "topics", "retrieval-index"];
  const memory = agent.memory;
  if (profileUsers(agent).some((u) => memory.profile(u).some((f) => from(f.sources)))) kinds.push("profile");
  if (memory.notebook.some((n) => from(n.sources))) kinds.push("notebook");
  const w = memory.workingMemory;
  if (w.followUps.some((f) => ids.has(f.source)) || w.notes.some((n) => from(n.sources))) kinds.push("working-memory");
  return kinds;
}

async function confirm(question: string): Promise<boolean> {
  const rl = createInterface({ input: process.stdin, output: process.stderr });
  try {
    return /^y(es)?$/i.test((await rl.question(`${question} [y/N] `)).trim());
  } finally {
    rl.close();
  }
}

async function runForget(ctx: CommandContext, agentId: bigint, opts: ForgetOptions): Promise<void> {
  const selectors = [opts.all, (opts.turn?.length ?? 0) > 0, opts.match !== undefined].filter(Boolean).length;
  if (selectors === 0) throw new ForgetSelectorError("No selector given");
  if (opts.all && selectors > 1) throw new ForgetSelectorError("--all forgets everything: give it alone");
  if (opts.match !== undefined && opts.match.trim() === "") throw new ForgetSelectorError("--match is empty");
  const interactive = process.stdin.isTTY === true && process.stderr.isTTY === true;
  if (!opts.yes && !interactive) throw new ConfirmationRequiredError("Forgetting");

  const session = await openForMemory(ctx, agentId);
  let forgotten: number[] = [];
  let items: ItemKind[] = [];
  let closed = false;
  try {
    const { agent } = session;
    const history = agent.history();
    forgotten = selectTurns(history, opts);
    if (forgotten.length === 0 && !opts.all) {
      ctx.out.result({ agentId, forgotten: { turns: 0, items: [] }, turnCount: history.length, head: headJson(session) }, "No turn matched: nothing was forgotten.");
      return;
    }
    if (!opts.yes) {
      const preview = forgotten.slice(0, 5).map((i) => turnLine(i, history[i]!, agent.owner));
      process.stderr.write(`${[`These ${forgotten.length} turns will be forgotten:`, ...preview, ...(forgotten.length > 5 ? [`  … and ${forgotten.length - 5} more`] : [])].join("\n")}\n`);
      if (!(await confirm(`Forget ${opts.all ? "everything agent #" + agentId + " remembers" : `${forgotten.length} turns`}?`))) throw new ForgetDeclinedError();
    }
    // Whatever the memory holds unsaved goes into the vault first, so the forget commit builds on all of it.
    await agent.memory.save({ signal: ctx.signal });
    items = derivedKinds(agent, forgotten, opts.all);
    const result = await agent.vault.forget({ turns: forgotten, items }, { signal: ctx.signal });
    items = result.items;
    closed = true;
    await session.close();
  } finally {
    if (!closed) await session.close();
  }

  // Opened again: the index and what derives from the turns are rebuilt from what remains, and published.
  const again = await openForMemory(ctx, agentId);
  const { published } = await again.close();
  const head = headJson(again);
  const remaining = again.agent.history().length;
  ctx.out.result(
    { agentId, forgotten: { turns: forgotten.length, indexes: forgotten, items }, turnCount: remaining, head, published: published ?? null },
    `Forgot ${plural(forgotten.length, "turn")} of agent #${agentId}${items.length > 0 ? ` and its ${items.join(", ")} (remade from what remains)` : ""}; ` +
      `${remaining} turns remain. ` +
      (head !== null ? `New memory head ${head.cid} (#${head.seq}) ${head.published ? "published on chain" : "saved; publishing it failed, it is tried again next time"}.` : "") +
      "\nThe old blocks stay in this machine's IPFS store until it drops them; nothing reachable from the new head refers to them.",
  );
}

/** Registers `soulmesh memory show|search|export|import|forget`. */
export function registerMemory(program: Command): void {
  const memory = program
    .command("memory")
    .description("Look into and manage an agent's memory (decrypted on this machine; no provider needed)");

  memory
    .command("show")
    .description("Turns, memory head, profile, notebook, summaries and working memory of an agent")
    .argument("<agent>", "the agent's id", parseAgentId)
    .option("--turns <n>", "also list the last N turns", parsePositiveInt)
    .addHelpText(
      "after",
      `
Examples:
  $ soulmesh memory show 1
  $ soulmesh memory show 1 --turns 20
  $ soulmesh memory show 1 --json`,
    )
    .action((agentId: bigint, opts: { turns?: number }, cmd: Command) => withContext(cmd, (ctx) => runShow(ctx, agentId, opts)));

  memory
    .command("search")
    .description("Search the agent's memory as its retrieval does (keywords and meaning)")
    .argument("<agent>", "the agent's id", parseAgentId)
    .argument("<query>", "what to look for")
    .option("--top <n>", "how many results", parsePositiveInt, 10)
    .addHelpText(
      "after",
      `
Examples:
  $ soulmesh memory search 1 "my cat's name"
  $ soulmesh memory search 1 holidays --top 3 --json`,
    )
    .action((agentId: bigint, query: string, opts: { top: number }, cmd: Command) => withContext(cmd, (ctx) => runSearch(ctx, agentId, query, opts)));

  memory
    .command("export")
    .description("Write the agent's memory as plaintext JSON (turns, profile, notebook, summaries, working memory)")
    .argument("<agent>", "the agent's id", parseAgentId)
    .option("--out <file>", "write it to FILE (created readable by you only) instead of stdout")
    .addHelpText(
      "after",
      `
Examples:
  $ soulmesh memory export 1 --out agent-1.json
  $ soulmesh memory export 1 | jq '.turns | length'

The export is plaintext: keep it on this machine. Import it with \`soulmesh memory import AGENT FILE\`.`,
    )
    .action((agentId: bigint, opts: { out?: string }, cmd: Command) => withContext(cmd, (ctx) => runExport(ctx, agentId, opts)));

  memory
    .command("import")
    .description("Append the turns of an export to an agent you own (turns already there are skipped)")
    .argument("<agent>", "the agent's id", parseAgentId)
    .argument("<file>", `an export of format version ${MEMORY_EXPORT_VERSION} (from \`soulmesh memory export\`)`)
    .addHelpText(
      "after",
      `
Examples:
  $ soulmesh memory import 2 agent-1.json        # agent 2 learns what agent 1 was told
  $ soulmesh memory import 1 backup.json --json

Turns are appended in the file's order through the memory engine (index, notebook and follow-ups
update); a turn with the same time, role and text as one the agent has is skipped, so importing
twice adds nothing. Summaries and the profile are remade from the turns as the agent chats.`,
    )
    .action((agentId: bigint, file: string, _opts: unknown, cmd: Command) => withContext(cmd, (ctx) => runImport(ctx, agentId, file)));

  memory
    .command("forget")
    .description("Forget turns for good: a new memory head without them is published")
    .argument("<agent>", "the agent's id", parseAgentId)
    .option("--turn <n>", "forget turn N (repeatable; numbers from `memory show --turns`)", parseTurnIndex)
    .option("--match <text>", "forget every turn containing TEXT (case-insensitive)")
    .option("--all", "forget everything the agent remembers", false)
    .option("-y, --yes", "do not ask for confirmation", false)
    .addHelpText(
      "after",
      `
Examples:
  $ soulmesh memory forget 1 --match "my password"
  $ soulmesh memory forget 1 --turn 4 --turn 5 --yes
  $ soulmesh memory forget 1 --all --yes --json

Summaries, topics and the search index go with the turns and are remade from what remains; the
profile, notebook or working memory go too when something in them came from a forgotten turn.`,
    )
    .action((agentId: bigint, opts: ForgetOptions, cmd: Command) => withContext(cmd, (ctx) => runForget(ctx, agentId, opts)));
}

