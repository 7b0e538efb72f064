/**
 * The agent's working memory: its current view of itself and of each user (notes, as memory items so the
 * privacy rule applies to them too), the follow-ups it means to make with a due time, and the times it
 * reached out on its own (so that it does not nag a user who has not answered).
 */
import type { MemoryItem } from "./types.js";

/** Something to ask a user about later ("How did it go at the hospital?"). */
export interface FollowUp {
  id: string;
  userId: string;
  /** What to ask, in the agent's words. */
  question: string;
  /** What the user said that it follows up on. */
  context: string;
  /** Milliseconds since the epoch from which it may be asked. */
  due: number;
  created: number;
  /** The turn it came from (`turn:N`), for provenance and to let a model's follow-up replace a pattern's. */
  source: string;
  /** Who found it: the pattern at the turn, or the model in maintenance. */
  origin: "pattern" | "model";
  /** When `wake` asked it; a follow-up is asked at most once. */
  firedAt?: number;
}

/** A message the agent wrote without user input. */
export interface Outreach {
  userId: string;
  followUpId: string;
  /** The turn index of the message. */
  turn: number;
  time: number;
  /** Whether the user has spoken since: until then, no new outreach to them. */
  answered: boolean;
}

/** The whole of working memory as stored in the vault's "working-memory" item. */
export interface WorkingMemory {
  /** Notes of the agent about itself ("agent") and about users (speaker = the user). */
  notes: MemoryItem[];
  followUps: FollowUp[];
  outreach: Outreach[];
}

/** Notes kept per subject (the agent itself, or one user): the newest win. */
export const NOTES_PER_SUBJECT = 12;

/** An empty working memory. */
export function emptyWorkingMemory(): WorkingMemory {
  return { notes: [], followUps: [], outreach: [] };
}

const HOUR = 3_600_000;

// "When" phrases and how long after the turn to follow up: after the event, not before it.
const WHEN: readonly { pattern: RegExp; after: (match: RegExpExecArray) => number }[] = [
  { pattern: /\b(?:the )?day after tomorrow\b/i, after: () => 54 * HOUR },
  { pattern: /\btomorrow\b/i, after: () => 30 * HOUR },
  { pattern: /\b(?:tonight|this evening)\b/i, after: () => 14 * HOUR },
  { pattern: /\bthis (?:afternoon|morning)\b/i, after: () => 8 * HOUR },
  { pattern: /\b(?:this|next) weekend\b/i, after: () => 6 * 24 * HOUR },
  { pattern: /\bnext week\b/i, after: () => 8 * 24 * HOUR },
  {
    pattern: /\bin (\d{1,2}|a|an|one|two|three|four|five|six|seven) (hour|day|week)s?\b/i,
    after: (m) => {
      const words: Record<string, number> = { a: 1, an: 1, one: 1, two: 2, three: 3, four: 4, five: 5, six: 6, seven: 7 };
      const n = words[m[1]!.toLowerCase()] ?? Number(m[1]);
      const unit = m[2]!.toLowerCase() === "hour" ? HOUR : m[2]!.toLowerCase() === "day" ? 24 * HOUR : 7 * 24 * HOUR;
      return n * unit + (unit === HOUR ? HOUR : 6 * HOUR);
    },
  },
];

// A plan or an appointment of the speaker's own: "I'm going to", "I have", "my interview is"…
const OWN_PLAN =
  /\b(?:i'?m|i am|i'?ll|i will|i'?ve got|i have|i've|i got|we'?re|we are|we'?ll|we have|my [a-z]+(?: [a-z]+)? (?:is|are))\b/i;

/**
 * A follow-up for what a user says about their own plans with a time ("I'm going to the hospital
 * tomorrow" → ask after it); undefined when the turn has none. Pattern-only, so it costs no model call;
 * maintenance may replace it with the model's.
 *
 * @example
 * detectFollowUp({ text: "I'm going to the hospital tomorrow", userId: "alice", time: 0, turnIndex: 3 })?.due // 30 hours
 */
export function detectFollowUp(input: { text: string; userId: string; time: number; turnIndex: number }): FollowUp | undefined {
  for (const sentence of input.text.split(/(?<=[.!?])\s+|\n+/)) {
    if (!OWN_PLAN.test(sentence) || /\?\s*$/.test(sentence)) continue;
    for (const when of WHEN) {
      const match = when.pattern.exec(sentence);
      if (match === null) continue;
      const context = sentence.trim();
      return {
        id: `follow-up:${input.turnIndex}`,
        userId: input.userId,
        question: `You mentioned "${context}". How did it go?`,
        context,
        due: input.time + when.after(match),
        created: input.time,
        source: `turn:${input.turnIndex}`,
        origin: "pattern",
      };
    }
  }
  return undefined;
}

/**
 * The follow-ups `wake` may ask now, soonest due first: due, never asked, and their user not waiting on an
 * unanswered outreach.
 *
 * @example
 * dueFollowUps(memory, Date.now())[0]?.question
 */
export function dueFollowUps(memory: WorkingMemory, now: number): FollowUp[] {
  const waiting = new Set(memory.outreach.filter((o) => !o.answered).map((o) => o.userId));
  return memory.followUps
    .filter((f) => f.firedAt === undefined && f.due <= now && !waiting.has(f.userId))
    .sort((a, b) => a.due - b.due || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
}

/** Marks the outreach to `userId` answered: they spoke again. Returns whether anything changed. */
export function markAnswered(memory: WorkingMemory, userId: string): boolean {
  let changed = false;
  for (const o of memory.outreach) {
    if (o.userId === userId && !o.answered) {
      o.answered = true;
      changed = true;
    }
  }
  return changed;
}

/**
 * Adds notes, keeping the newest {@link NOTES_PER_SUBJECT} per subject (speaker) and no two of the same
 * text. Returns the ids removed (for the retrieval index).
 */
export function addNotes(memory: WorkingMemory, notes: readonly MemoryItem[]): string[] {
  const removed: string[] = [];
  for (const note of notes) {
    const same = memory.notes.findIndex((n) => n.speaker === note.speaker && n.audience === note.audience && normalize(n.text) === normalize(note.text));
    if (same >= 0) removed.push(...memory.notes.splice(same, 1).map((n) => n.id));
    memory.notes.push(note);
  }
  const bySubject = new Map<string, MemoryItem[]>();
  for (const n of memory.notes) bySubject.set(n.speaker, [...(bySubject.get(n.speaker) ?? []), n]);
  for (const list of bySubject.values()) {
    const excess = list.sort((a, b) => b.time - a.time).slice(NOTES_PER_SUBJECT);
    for (const old of excess) {
      memory.notes.splice(memory.notes.indexOf(old), 1);
      removed.push(old.id);
    }
  }
  return removed.filter((id) => !memory.notes.some((n) => n.id === id));
}

function normalize(text: string): string {
  return text.toLowerCase().replace(/\s+/g, " ").trim();
}

/** Validates a stored working memory loosely: unknown fields are dropped, a wrong shape is refused. */
export function isWorkingMemory(value: unknown): value is WorkingMemory {
  const v = value as WorkingMemory;
  return (
    typeof v === "object" &&
    v !== null &&
    Array.isArray(v.notes) &&
    Array.isArray(v.followUps) &&
    Array.isArray(v.outreach) &&
    v.followUps.every((f) => typeof f.id === "string" && typeof f.userId === "string" && typeof f.due === "number") &&
    v.outreach.every((o) => typeof o.userId === "string" && typeof o.answered === "boolean")
  );
}
