/**
 * Reaching out: when a follow-up in working memory falls due, the agent writes to that user without being
 * asked ("How did it go at the hospital?"), once per follow-up, and never twice in a row to a user who
 * has not answered.
 */
import type { AgentMemory } from "./memory.js";
import { compilePersona } from "./persona/index.js";
import type { Complete } from "./types.js";
import { dueFollowUps, type FollowUp } from "./working-memory.js";

/** What {@link wake} needs. */
export interface WakeOptions {
  memory: AgentMemory;
  /** Milliseconds since the epoch. */
  now: number;
  /** Writes the message in the persona's voice (metered); without it, or if it fails, a plain question is sent. */
  complete?: Complete;
  signal?: AbortSignal;
}

/** A message the agent wrote on its own, already recorded as its turn and saved. */
export interface WakeMessage {
  userId: string;
  followUp: FollowUp;
  text: string;
  /** The index of the recorded agent turn. */
  turn: number;
  /** Whether `complete` wrote it (false: the plain question). */
  written: boolean;
}

/** Tokens for an outreach message. */
export const WAKE_MAX_TOKENS = 160;

/**
 * Sends the soonest due follow-up, if any: writes the message, marks the follow-up asked and the user
 * waiting for an answer, records it as the agent's turn, and saves, so that it fires at most once even
 * across a reload. Returns undefined when nothing is due or every due user has an unanswered outreach.
 *
 * @example
 * const msg = await wake({ memory, now: Date.now(), complete })
 * if (msg) await deliver(msg.userId, msg.text)
 */
export async function wake(options: WakeOptions): Promise<WakeMessage | undefined> {
  const { memory, now, signal } = options;
  const followUp = dueFollowUps(memory.workingMemory, now)[0];
  if (followUp === undefined) return undefined;
  const written = options.complete === undefined ? undefined : await write(options.complete, memory, followUp, signal);
  const text = written ?? followUp.question;
  const o = signal !== undefined ? { signal } : {};

  // Spent before the message exists: a crash in between loses one message rather than sending it twice.
  const predicted = memory.turns.length;
  memory.markReachedOut(followUp, predicted, now);
  await memory.save(o);
  const recorded = await memory.recordTurn({ role: "assistant", text, time: now }, { ...o, to: followUp.userId });
  if (recorded.index !== predicted) {
    const outreach = memory.workingMemory.outreach.findLast((r) => r.followUpId === followUp.id);
    if (outreach !== undefined) memory.markOutreachTurn(outreach, recorded.index);
  }
  await memory.save(o);
  return { userId: followUp.userId, followUp, text, turn: recorded.index, written: written !== undefined };
}

async function write(complete: Complete, memory: AgentMemory, followUp: FollowUp, signal: AbortSignal | undefined): Promise<string | undefined> {
  const persona =
    memory.persona === undefined
      ? ""
      : compilePersona(memory.persona, { budget: 768, countTokens: memory.countTokens, scanText: followUp.context, userName: followUp.userId }).text;
  const facts = memory.profile(followUp.userId).slice(-8).map((f) => `- ${f.text}`);
  const system = [
    persona,
    `You are writing to ${followUp.userId} on your own initiative, not in reply to a message.`,
    facts.length > 0 ? `What you know about ${followUp.userId}:\n${facts.join("\n")}` : "",
  ]
    .filter((s) => s.length > 0)
    .join("\n\n");
  const prompt =
    `Earlier ${followUp.userId} said: "${followUp.context}". You meant to follow up: ${followUp.question}\n` +
    "Write the short, warm message you send now (one to three sentences). Answer with the message only.";
  try {
    const answer = await complete({ system, prompt, maxTokens: WAKE_MAX_TOKENS, ...(signal !== undefined && { signal }) });
    const text = answer.trim().replace(/^["“](.*)["”]$/s, "$1").trim();
    return text.length > 0 ? text : undefined;
  } catch (error) {
    // A model that is down must not silence a due follow-up; a cancelled wake must not send one.
    if (signal?.aborted === true) throw error;
    return undefined;
  }
}
