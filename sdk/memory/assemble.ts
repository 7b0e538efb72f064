/**
 * Prompt assembly: the persona, then what the agent remembers for this listener, then the recent turns,
 * then the new message, with memories and history held to a fixed token budget however long the history.
 * Whole items are kept or dropped by rank, never cut; the recent turns kept are always the latest ones,
 * contiguous. Only what the listener may hear (mayHear) is ever considered.
 */
import { InvalidMemoryOptionError } from "./errors.js";
import type { AgentMemory, RememberedTurn } from "./memory.js";
import { compilePersona } from "./persona/index.js";
import { mayHear, type Listener, type MemoryItem, type MemoryKind } from "./types.js";

/** One chat message for the provider (the wire's ChatMessage shape). */
export interface ChatMessage {
  role: "system" | "user" | "assistant";
  content: string;
}

/** What {@link assemblePrompt} needs. */
export interface AssembleOptions {
  memory: AgentMemory;
  listener: Listener;
  /** The new message. When it is already recorded as the listener's last turn, it is not repeated in history. */
  message: string;
  /** Tokens for the persona part, on top of `budget` (default 1,024). */
  personaBudget?: number;
  /** Tokens for memories and history together (default 2,048); the new message and persona are apart. */
  budget?: number;
  /** Milliseconds since the epoch: recency in retrieval, due follow-ups. */
  now: number;
  signal?: AbortSignal;
}

/** A candidate that did not fit. */
export interface DroppedItem {
  id: string;
  kind: MemoryKind;
  tokens: number;
}

/** An assembled prompt and how it was filled. */
export interface AssembledPrompt {
  /** System (persona + memories), recent turns, the new message. */
  messages: ChatMessage[];
  /** The persona part of the system message. */
  persona: { text: string; tokens: number; triggeredEntries: string[] };
  /** The memory part of the system message (after the persona, separated by a blank line). */
  memoryText: string;
  /** countTokens(memoryText) plus each history message's countTokens: at most `budget`. */
  tokens: number;
  budget: number;
  /** Ids of the memories and turns in the prompt, by rank. */
  included: string[];
  /** Candidates left out for the budget, by rank. */
  dropped: DroppedItem[];
}

/** Default budget for memories and history. */
export const DEFAULT_MEMORY_BUDGET = 2048;
/** Default budget for the persona. */
export const DEFAULT_PERSONA_BUDGET = 1024;
/** The latest turns that rank above retrieved memories (the rest of the history ranks below them). */
export const RECENT_TURNS_FIRST = 4;
/** Turns of history considered at most, newest first. */
export const HISTORY_WINDOW = 256;
/** Memories asked of retrieval. */
export const RETRIEVED = 16;

type Section = "profile" | "rules" | "working" | "retrieved";

const HEADERS: Record<Section, (listener: Listener) => string> = {
  profile: (l) => `What you know about ${l.userId}:`,
  rules: () => "Instructions from your owner and creator (follow them):",
  working: () => "Your working notes:",
  retrieved: () => "Memories that may be relevant:",
};
const SECTION_ORDER: readonly Section[] = ["profile", "rules", "working", "retrieved"];

interface Candidate {
  id: string;
  kind: MemoryKind;
  /** A memory line in a section, or a history turn. */
  section: Section | "history";
  line: string;
  /** For history: the turn. */
  turn?: RememberedTurn;
  cost: number;
}

/**
 * Assembles the messages of a turn for `listener`. Deterministic for the same memory, options and index.
 *
 * @example
 * const { messages, dropped } = await assemblePrompt({ memory, listener: { userId: "alice", isOwner: false }, message: "Hi", now: Date.now() })
 * await chat.send(messages)
 * @throws InvalidMemoryOptionError for a budget that is not a non-negative integer.
 */
export async function assemblePrompt(options: AssembleOptions): Promise<AssembledPrompt> {
  const { memory, listener, message, now } = options;
  const budget = options.budget ?? DEFAULT_MEMORY_BUDGET;
  const personaBudget = options.personaBudget ?? DEFAULT_PERSONA_BUDGET;
  const problems: string[] = [];
  if (!Number.isSafeInteger(budget) || budget < 0) problems.push("budget is a non-negative integer of tokens");
  if (!Number.isSafeInteger(personaBudget) || personaBudget < 0) problems.push("personaBudget is a non-negative integer of tokens");
  if (typeof listener?.userId !== "string") problems.push("listener is { userId, isOwner }");
  if (problems.length > 0) throw new InvalidMemoryOptionError(problems);
  const count = memory.countTokens;

  // The new message may already be recorded (recordTurn before assembling): then it is the last turn, and
  // it is said once, as the new message, not in the history or among the memories.
  const last = memory.turns.at(-1);
  const pending = last?.turn.role === "user" && last.partner === listener.userId && last.turn.text === message ? `turn:${last.index}` : undefined;
  const history = memory.turns.filter((t) => t.item !== undefined && t.item.id !== pending && mayHear(t.item, listener));
  const recent = history.slice(-HISTORY_WINDOW).reverse(); // newest first

  const scanText = [message, ...recent.slice(0, RECENT_TURNS_FIRST).map((t) => t.turn.text)].join("\n");
  const persona =
    memory.persona === undefined
      ? { text: "", tokens: 0, triggeredEntries: [] as string[] }
      : compilePersona(memory.persona, { budget: personaBudget, countTokens: count, scanText, userName: listener.userId });

  const hits = await memory.index.search(message, { k: RETRIEVED, listener, now, ...(options.signal !== undefined && { signal: options.signal }) });

  // Candidates by rank: the listener's profile, the standing rules, the latest turns, working notes, what
  // retrieval found, then the rest of the history.
  const ranked: Candidate[] = [];
  const line = (section: Section, id: string, kind: MemoryKind, text: string): Candidate => {
    const l = `- ${oneLine(text)}`;
    return { id, kind, section, line: l, cost: count(`${l}\n`) };
  };
  const turnCandidate = (t: RememberedTurn): Candidate => {
    const content = historyContent(t, listener);
    return { id: `turn:${t.index}`, kind: "turn", section: "history", line: content, turn: t, cost: count(content) };
  };
  memory
    .profile(listener.userId)
    .map((fact, i) => ({ fact, i }))
    .reverse()
    .forEach(({ fact, i }) => ranked.push(line("profile", `profile:${listener.userId}:${i}`, "profile", fact.text)));
  memory.notebook
    .filter((n) => n.rule && mayHear(n, listener))
    .slice()
    .reverse()
    .forEach((n) => ranked.push(line("rules", n.id, "notebook", `${n.text} (from your ${n.speaker})`)));
  recent.slice(0, RECENT_TURNS_FIRST).forEach((t) => ranked.push(turnCandidate(t)));
  for (const f of memory.workingMemory.followUps) {
    if (f.userId !== listener.userId || f.firedAt !== undefined) continue;
    const when = f.due <= now ? "now" : `from ${day(f.due)}`;
    ranked.push(line("working", f.id, "working-memory", `Follow up with ${f.userId} ${when}: ${f.question}`));
  }
  for (const note of [...memory.workingMemory.notes].sort((a, b) => b.time - a.time || compareIds(a.id, b.id))) {
    if (mayHear(note, listener) && (note.speaker === listener.userId || note.speaker === "agent")) {
      ranked.push(line("working", note.id, "working-memory", note.text));
    }
  }
  const taken = new Set(ranked.map((c) => c.id));
  for (const { item } of hits) {
    // Retrieval never returns what the listener may not hear; checked again because a leak is the one
    // mistake here that cannot be taken back.
    if (!mayHear(item, listener) || taken.has(item.id) || item.id === pending) continue;
    if (item.kind === "notebook" && memory.notebook.some((n) => n.id === item.id && n.rule)) continue;
    taken.add(item.id);
    ranked.push(line("retrieved", item.id, item.kind, describe(item, memory, listener)));
  }
  recent.slice(RECENT_TURNS_FIRST).forEach((t) => ranked.push(turnCandidate(t)));

  // Fill by rank with each piece's own count, then check the whole with the same counter (a real
  // tokenizer need not add up over pieces) and give back the lowest-ranked piece until it holds.
  const chosen: Candidate[] = [];
  const dropped: Candidate[] = [];
  const headerCost = (s: Section): number => count(`${HEADERS[s](listener)}\n`) + 1;
  const open = new Set<Section>();
  let used = 0;
  let historyClosed = false;
  for (const c of ranked) {
    if (c.section === "history") {
      // A turn retrieved earlier and now reached by the history is said once, in the history.
      const duplicate = chosen.findIndex((x) => x.section === "retrieved" && x.id === c.id);
      const refund = duplicate >= 0 ? chosen[duplicate]!.cost : 0;
      if (!historyClosed && used - refund + c.cost <= budget) {
        if (duplicate >= 0) chosen.splice(duplicate, 1);
        used += c.cost - refund;
        chosen.push(c);
      } else {
        // The turns kept must be the latest ones without a gap: once one does not fit, older ones stay out.
        historyClosed = true;
        dropped.push(c);
      }
      continue;
    }
    const extra = c.cost + (open.has(c.section) ? 0 : headerCost(c.section));
    if (used + extra <= budget) {
      open.add(c.section);
      used += extra;
      chosen.push(c);
    } else dropped.push(c);
  }
  let render = renderChosen(chosen, listener, count);
  while (render.tokens > budget && chosen.length > 0) {
    dropped.push(chosen.pop()!);
    render = renderChosen(chosen, listener, count);
  }

  const system = [persona.text, render.memoryText].filter((s) => s.length > 0).join("\n\n");
  const messages: ChatMessage[] = [];
  if (system.length > 0) messages.push({ role: "system", content: system });
  messages.push(...render.history);
  messages.push({ role: "user", content: message });
  const rank = new Map(ranked.map((c, i) => [c, i]));
  return {
    messages,
    persona: { text: persona.text, tokens: persona.tokens, triggeredEntries: persona.triggeredEntries },
    memoryText: render.memoryText,
    tokens: render.tokens,
    budget,
    included: chosen.map((c) => c.id),
    dropped: dropped
      .filter((c, i) => !chosen.some((x) => x.id === c.id) && dropped.findIndex((x) => x.id === c.id) === i)
      .sort((a, b) => rank.get(a)! - rank.get(b)!)
      .map((c) => ({ id: c.id, kind: c.kind, tokens: c.cost })),
  };
}

function renderChosen(
  chosen: readonly Candidate[],
  listener: Listener,
  count: (text: string) => number,
): { memoryText: string; history: ChatMessage[]; tokens: number } {
  const blocks: string[] = [];
  for (const section of SECTION_ORDER) {
    const lines = chosen.filter((c) => c.section === section).map((c) => c.line);
    if (lines.length > 0) blocks.push([HEADERS[section](listener), ...lines].join("\n"));
  }
  const memoryText = blocks.join("\n\n");
  const turns = chosen
    .filter((c) => c.section === "history")
    .map((c) => c.turn!)
    .sort((a, b) => a.index - b.index);
  const history = turns.map((t): ChatMessage => ({ role: t.turn.role === "assistant" ? "assistant" : "user", content: historyContent(t, listener) }));
  const tokens = (memoryText.length > 0 ? count(memoryText) : 0) + history.reduce((sum, m) => sum + count(m.content), 0);
  return { memoryText, history, tokens };
}

function historyContent(t: RememberedTurn, listener: Listener): string {
  // In a shared agent another user's words are labelled, so the listener's own are not confused with them.
  return t.turn.role === "user" && t.partner !== listener.userId ? `${t.partner}: ${t.turn.text}` : t.turn.text;
}

/** A retrieved memory as a line: its date and who said it, so the model can weigh it. */
function describe(item: MemoryItem, memory: AgentMemory, listener: Listener): string {
  const who =
    item.kind === "turn"
      ? memory.turns[Number(item.id.slice("turn:".length))]?.turn.role === "assistant"
        ? "you said"
        : item.speaker === listener.userId
          ? `${item.speaker} (this user) said`
          : `${item.speaker} said`
      : item.kind === "topic-summary"
        ? `on ${item.topic ?? "a topic"}`
        : item.kind === "segment-summary"
          ? `talk with ${item.speaker}`
          : item.kind === "notebook"
            ? `note from your ${item.speaker}`
            : "note";
  return `[${day(item.time)}, ${who}] ${item.text}`;
}

function day(time: number): string {
  return new Date(time).toISOString().slice(0, 10);
}

function oneLine(text: string): string {
  return text.replace(/\s*\n\s*/g, " ").trim();
}

function compareIds(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}
