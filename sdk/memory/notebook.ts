/**
 * What a turn says about how it must be remembered, found by pattern so that no model call is needed and
 * the turn's acknowledgement is not delayed: confidence cues ("between us") and explicit instructions to
 * the agent ("remember that…", "don't do that again", "always…", "never…").
 */
import type { Audience, MemoryItem } from "./types.js";

/** A notebook entry: an instruction from the owner or the creator, kept with who gave it. */
export interface NotebookEntry extends MemoryItem {
  kind: "notebook";
  /** A standing rule of conduct (always / never / don't do that again), in every prompt it may reach. */
  rule: boolean;
  /** The user id that gave it. */
  givenBy: string;
}

// Phrases by which a speaker asks that what they say stay with the agent. Deliberately phrase-level: a
// false positive hides a turn from other users (safe); a missed cue can still be marked by the caller.
const CONFIDENCE_CUES: readonly RegExp[] = [
  /\bbetween (?:you and me|you and i|the two of us|us)\b/i,
  /\b(?:don'?t|do not|never) (?:tell|mention (?:this|it|that) to|repeat (?:this|it|that) to) (?:anyone|anybody|a soul|others|other people|the others)\b/i,
  /\bkeep (?:this|it|that) (?:a )?(?:secret|private|confidential|between us|to yourself|quiet)\b/i,
  /\b(?:this|it) (?:is|'s|stays) (?:a secret|secret|confidential|private|between us)\b/i,
  /\bin (?:strict |strictest )?confidence\b/i,
  /\boff the record\b/i,
  /\bpromise (?:me )?(?:not to|you won'?t) tell\b/i,
  /\bjust between\b/i,
];

/**
 * Whether the text asks to be kept in confidence.
 *
 * @example
 * hasConfidenceCue("Between us, I'm changing jobs") // true
 * hasConfidenceCue("We went to the zoo") // false
 */
export function hasConfidenceCue(text: string): boolean {
  return CONFIDENCE_CUES.some((cue) => cue.test(text));
}

/** An instruction found in one sentence. */
export interface CapturedInstruction {
  /** The instruction as it goes in the notebook. */
  text: string;
  rule: boolean;
}

const LEAD = String.raw`^(?:(?:please|also|and|oh|ok|okay|hey|so|from now on|going forward|in future|in the future)[\s,:;-]+)*`;
const REMEMBER = new RegExp(
  `${LEAD}(?:remember|don'?t forget|do not forget|make a note|note)\\b(?![\\s,]+(?:when|how|what|where|who|why|if|whether|me)\\b)[\\s,:;-]*(?:that\\s+|this[\\s:,-]+)?(.+)`,
  "i",
);
const DO_THAT_AGAIN = /\b(?:don'?t|do not|never|please don'?t|stop and never) (?:ever )?(?:do|say|write|use) (?:that|this|it) (?:ever )?again\b/i;
const ALWAYS_NEVER = new RegExp(`${LEAD}(always|never|don'?t ever|do not ever)\\b(?![\\s,]+mind\\b)[\\s,]*(.+)`, "i");
const FROM_NOW_ON = /^(?:from now on|going forward|in (?:the )?future)[\s,:;-]+(.+)/i;

/** Splits into sentences at . ! ? and line breaks, keeping each sentence's text trimmed. */
function sentences(text: string): string[] {
  return text
    .split(/(?<=[.!?])\s+|\n+/)
    .map((s) => s.trim())
    .filter((s) => s.length > 0);
}

function clip(text: string, max: number): string {
  if (text.length <= max) return text;
  const cut = text.slice(0, max);
  const space = cut.lastIndexOf(" ");
  return `${(space > max / 2 ? cut.slice(0, space) : cut).trimEnd()}…`;
}

/**
 * The explicit instructions in a turn, one per sentence that gives one. `previousReply` is the agent's
 * last words before it, which "don't do that again" refers to.
 *
 * @example
 * captureInstructions("Remember that my sister is called Ana. Never use emojis.")
 * // [{ text: "Remember: my sister is called Ana.", rule: false }, { text: "Never use emojis.", rule: true }]
 */
export function captureInstructions(text: string, previousReply?: string): CapturedInstruction[] {
  const found: CapturedInstruction[] = [];
  for (const sentence of sentences(text)) {
    if (DO_THAT_AGAIN.test(sentence)) {
      const context = previousReply === undefined ? "" : ` (said about your reply: "${clip(previousReply.replace(/\s+/g, " "), 240)}")`;
      found.push({ text: `${sentence}${context}`, rule: true });
      continue;
    }
    const always = ALWAYS_NEVER.exec(sentence);
    if (always !== null) {
      found.push({ text: `${capitalize(always[1]!)} ${always[2]!}`, rule: true });
      continue;
    }
    const remember = REMEMBER.exec(sentence);
    if (remember !== null && remember[1]!.trim().length > 2) {
      found.push({ text: `Remember: ${remember[1]!.trim()}`, rule: false });
      continue;
    }
    const fromNowOn = FROM_NOW_ON.exec(sentence);
    if (fromNowOn !== null) found.push({ text: `From now on: ${fromNowOn[1]!}`, rule: true });
  }
  return found;
}

function capitalize(word: string): string {
  return word.charAt(0).toUpperCase() + word.slice(1).toLowerCase();
}

/**
 * The notebook entries of one turn by the owner or the creator. Rules of conduct apply to every user; the
 * owner's notes ("remember…") and anything said in confidence stay with the owner.
 *
 * @example
 * notebookEntries({ text: "Never swear.", givenBy: "0xabc", role: "owner", turnIndex: 7, time, confidential: false })
 */
export function notebookEntries(input: {
  text: string;
  givenBy: string;
  role: "owner" | "creator";
  turnIndex: number;
  time: number;
  confidential: boolean;
  previousReply?: string;
}): NotebookEntry[] {
  return captureInstructions(input.text, input.previousReply).map((found, n): NotebookEntry => {
    const audience: Audience = input.confidential || (!found.rule && input.role === "owner") ? "owner" : "everyone";
    return {
      id: `notebook:${input.turnIndex}:${n}`,
      kind: "notebook",
      text: found.text,
      speaker: input.role,
      audience,
      time: input.time,
      importance: found.rule ? 0.9 : 0.8,
      sources: [`turn:${input.turnIndex}`],
      rule: found.rule,
      givenBy: input.givenBy,
    };
  });
}
