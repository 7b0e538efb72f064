/**
 * The shapes every part of an agent's memory shares: what a memory is, who said it and who may hear it
 * again, and how text is measured against a token budget. Persona cards (persona/), retrieval (retrieval/)
 * and the memory engine (memory.ts, assemble.ts, maintenance.ts, wake.ts) all speak these.
 */

/** The kinds of memory (ARCHITECTURE.md, Memory), each with its own weight in retrieval. */
export const MEMORY_KINDS = ["turn", "segment-summary", "topic-summary", "profile", "notebook", "working-memory"] as const;
export type MemoryKind = (typeof MEMORY_KINDS)[number];

/**
 * Who may see a memory again in a prompt. "everyone": any user the agent talks to; "speaker": only the user
 * who said it (said in confidence); "owner": only the agent's owner (the notebook, the agent's private view).
 */
export type Audience = "everyone" | "speaker" | "owner";

/** One memory: a unit that is retrieved, ranked and put in a prompt whole or not at all. */
export interface MemoryItem {
  /** Stable id, unique within the agent (e.g. "turn:42", "topic:pets"). */
  id: string;
  kind: MemoryKind;
  text: string;
  /**
   * Who said it: a user id (an address or a name) for what a user said, "agent" for the agent's own words
   * and notes, "creator" or "owner" for notebook instructions.
   */
  speaker: string;
  audience: Audience;
  /** Milliseconds since the epoch: when it was said or last confirmed. */
  time: number;
  /** 0 (trivial) to 1 (must not be forgotten); default 0.5. */
  importance?: number;
  /** For topic summaries: the topic key; a newer summary of the same topic replaces the older one. */
  topic?: string;
  /** Ids of the memories it was made from (a summary's turns), for provenance and forgetting. */
  sources?: string[];
  /**
   * Text around the memory that helps find it but is not part of it: for a turn, the turns just before and
   * after it in the same conversation ("what did you paint?" → "a sunset"). Retrieval matches it at a lower
   * weight than `text`; prompts show `text` only.
   */
  context?: string;
}

/** Who is asking: retrieval and prompt assembly only ever show what this listener may hear. */
export interface Listener {
  /** The user the agent is talking to now. */
  userId: string;
  /** Whether that user is the agent's owner (who may hear "owner" memories). */
  isOwner: boolean;
}

/**
 * Whether `listener` may hear `item` again: the privacy rule. What a user said in confidence ("speaker")
 * reaches that user's prompts only; "owner" memories reach the owner's only.
 *
 * @example
 * mayHear({ ...item, audience: "speaker", speaker: "alice" }, { userId: "bob", isOwner: true }) // false
 */
export function mayHear(item: Pick<MemoryItem, "audience" | "speaker">, listener: Listener): boolean {
  switch (item.audience) {
    case "everyone":
      return true;
    case "speaker":
      return item.speaker === listener.userId;
    case "owner":
      return listener.isOwner;
  }
}

/** Counts the tokens of a text on the model the prompt is for (e.g. a LocalTokenizer's count). */
export type TokenCounter = (text: string) => number;

/**
 * A counter for when no tokenizer is at hand: about four characters a token (English on SentencePiece and
 * BPE vocabularies), rounded up so that a budget it approves holds on a real tokenizer more often than not.
 *
 * @example
 * estimateTokens("Hello there") // 3
 */
export const estimateTokens: TokenCounter = (text) => Math.ceil(text.length / 4);

/**
 * Asks the model for a completion through the metered network path (a ChatSession turn): how summaries,
 * profile updates and follow-ups are written. Returns the model's text.
 */
export type Complete = (request: { system: string; prompt: string; maxTokens: number; signal?: AbortSignal }) => Promise<string>;
