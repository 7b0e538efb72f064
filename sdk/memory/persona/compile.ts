/**
 * Compiles a character card into the persona part of a system prompt, within a token budget.
 *
 * Layout of the text (parts separated by a blank line):
 *   1. the card's system prompt
 *   2. lorebook entries positioned "before_char" (by insertion_order)
 *   3. the description
 *   4. "{{char}}'s personality: …"
 *   5. "Scenario: …"
 *   6. lorebook entries positioned "after_char" (by insertion_order)
 *   7. the example dialogue, one "<START>" block at a time
 *
 * Which parts get the budget, first to last: description, system prompt, personality, scenario, example
 * blocks (in order), then triggered lorebook entries by priority (higher first; then insertion_order, then
 * book order). Each part is taken whole if the whole text still fits, else dropped whole and named in
 * `dropped`; later, smaller parts may still fit. So when the budget is short the example dialogue goes
 * first, then the scenario, and so on; the description goes only if it alone is over the budget.
 */
import { Script, createContext, type Context } from "node:vm";
import type { TokenCounter } from "../types.js";
import type { CharacterBookEntry, CharacterCard } from "./card.js";

/** Longest regex key accepted; longer ones are skipped (with a warning), not run. */
export const MAX_REGEX_KEY_CHARS = 256;
/** Regex keys see only the last this-many characters of the scanned text. */
export const MAX_REGEX_SCAN_CHARS = 16_384;
/** Default wall-clock time all regex keys of one compile may take together. */
export const DEFAULT_REGEX_TIME_MS = 100;

export interface CompilePersonaOptions {
  /** Tokens the persona text may take, as counted by `countTokens` on the whole text. */
  budget: number;
  countTokens: TokenCounter;
  /**
   * The recent messages scanned for lorebook keys: one text, or messages oldest first (then the book's
   * scan_depth keeps only the last scan_depth of them; a single text is always scanned whole).
   */
  scanText: string | readonly string[];
  /** Replaces {{user}} and <USER>; default "User". */
  userName?: string;
  /** Replaces {{original}} in the card's system prompt (the app's own system prompt); default "". */
  originalSystemPrompt?: string;
  /**
   * Whether a plain key must match whole words ("cat" not in "concatenate"); default true. Keys in scripts
   * written without spaces (Chinese, Japanese, Thai…) match anywhere regardless.
   */
  matchWholeWords?: boolean;
  /**
   * Wall-clock limit for all regex keys together (one key may use a quarter of it); a regex that runs past
   * its share counts as not matching, and keys left when the time is up are skipped.
   */
  regexTimeMs?: number;
}

export interface CompiledPersona {
  /** The persona text, within the budget. */
  text: string;
  /** countTokens(text). */
  tokens: number;
  /** Labels of the lorebook entries in `text` (name, else comment, else "#id" or "#index"), in text order. */
  triggeredEntries: string[];
  /**
   * What did not fit, in the order it was tried: "description", "system_prompt", "personality", "scenario",
   * "example:<n>" (0-based block), "entry:<label>".
   */
  dropped: string[];
  /** Regex keys skipped (too long, unsafe, invalid or too slow), for the card's author. */
  warnings: string[];
  /** The card's post-history instructions with macros replaced; not part of `text` nor of `tokens`. */
  postHistoryInstructions: string;
}

/** A piece of the text that is kept or dropped whole. */
interface Unit {
  id: string;
  text: string;
  /** Position in the text: [group, rank within group]. */
  layout: readonly [number, number];
  entryLabel?: string;
}

/**
 * Builds the persona text of `card` for the current conversation: macros replaced, lorebook entries
 * triggered by `scanText`, all within `budget` tokens (see the module comment for order and priority).
 * The same inputs always give the same text, unless a regex key runs past `regexTimeMs`.
 *
 * @example
 * const persona = compilePersona(card, { budget: 600, countTokens: estimateTokens, scanText: lastMessages, userName: "Ana" })
 * persona.text // "You are Seraphina…\n\nSeraphina is a guardian…"
 * persona.triggeredEntries // ["Eldoria"]
 */
export function compilePersona(card: CharacterCard, options: CompilePersonaOptions): CompiledPersona {
  if (Number.isNaN(options.budget) || options.budget < 0) throw new RangeError(`budget must be a non-negative number, not ${options.budget}`);
  const macros = macroReplacer(card, options);
  const warnings: string[] = [];
  const fixed = fixedUnits(card, macros, options.originalSystemPrompt ?? "");
  const entries = triggeredEntries(card, options, macros, warnings);
  const dropped: string[] = [];
  const accepted: Unit[] = [];
  const bookBudget = card.characterBook?.tokenBudget;
  let bookTokens = 0;
  for (const unit of [...fixed, ...entries]) {
    const own = options.countTokens(unit.text);
    const overBook = unit.entryLabel !== undefined && bookBudget !== undefined && bookTokens + own > bookBudget;
    if (own > options.budget || overBook || options.countTokens(render([...accepted, unit])) > options.budget) {
      dropped.push(unit.id);
      continue;
    }
    accepted.push(unit);
    if (unit.entryLabel !== undefined) bookTokens += own;
  }
  const text = render(accepted);
  return {
    text,
    tokens: text === "" ? 0 : options.countTokens(text),
    triggeredEntries: sortByLayout(accepted).flatMap((u) => (u.entryLabel === undefined ? [] : [u.entryLabel])),
    dropped,
    warnings,
    postHistoryInstructions: macros(card.postHistoryInstructions).trim(),
  };
}

function render(units: readonly Unit[]): string {
  return sortByLayout(units)
    .map((u) => u.text)
    .join("\n\n");
}

function sortByLayout(units: readonly Unit[]): Unit[] {
  return [...units].sort((a, b) => a.layout[0] - b.layout[0] || a.layout[1] - b.layout[1]);
}

// ---------------------------------------------------------------------------------------------- fixed parts

const GROUP = { system: 0, before: 1, description: 2, personality: 3, scenario: 4, after: 5, example: 6 } as const;

/** The card's own parts, in the order they claim the budget. */
function fixedUnits(card: CharacterCard, macros: (s: string, original?: string) => string, original: string): Unit[] {
  const units: Unit[] = [];
  const push = (id: string, text: string, group: number, rank = 0): void => {
    if (text.trim() !== "") units.push({ id, text: text.trim(), layout: [group, rank] });
  };
  push("description", macros(card.description), GROUP.description);
  push("system_prompt", macros(card.systemPrompt, original), GROUP.system);
  const personality = macros(card.personality).trim();
  if (personality !== "") push("personality", `${displayName(card)}'s personality: ${personality}`, GROUP.personality);
  const scenario = macros(card.scenario).trim();
  if (scenario !== "") push("scenario", `Scenario: ${scenario}`, GROUP.scenario);
  exampleBlocks(macros(card.exampleDialogue)).forEach((block, i) => push(`example:${i}`, `<START>\n${block}`, GROUP.example, i));
  return units;
}

/** Splits example dialogue at its <START> markers; text without markers is one block. */
function exampleBlocks(dialogue: string): string[] {
  return dialogue
    .split(/<START>/i)
    .map((b) => b.trim())
    .filter((b) => b !== "");
}

function displayName(card: CharacterCard): string {
  // V3: a nickname, when set, is what {{char}} stands for.
  return card.nickname !== undefined && card.nickname !== "" ? card.nickname : card.name;
}

/** Replaces {{char}}, {{user}}, <BOT>, <USER> (any case) and, where given, {{original}}; in one pass, so a name containing a macro stays as it is. */
function macroReplacer(card: CharacterCard, options: CompilePersonaOptions): (s: string, original?: string) => string {
  const char = displayName(card);
  const user = options.userName ?? "User";
  return (s, original = "") =>
    s.replace(/\{\{\s*(char|user|original)\s*\}\}|<(bot|user)>/gi, (_m, braced: string | undefined, angled: string | undefined) => {
      const which = (braced ?? angled ?? "").toLowerCase();
      if (which === "char" || which === "bot") return char;
      if (which === "user") return user;
      return original;
    });
}

// ------------------------------------------------------------------------------------------------ lorebook

interface PreparedEntry {
  index: number;
  entry: CharacterBookEntry;
  label: string;
  content: string;
  force: "activate" | "never" | undefined;
}

/** The lorebook entries triggered by the scanned text, as units in the order they claim the budget. */
function triggeredEntries(card: CharacterCard, options: CompilePersonaOptions, macros: (s: string) => string, warnings: string[]): Unit[] {
  const book = card.characterBook;
  if (book === undefined) return [];
  const prepared = book.entries.map((entry, index) => prepareEntry(entry, index, card.spec === "chara_card_v3", macros));
  const messages = typeof options.scanText === "string" ? [options.scanText] : [...options.scanText];
  const depth = typeof options.scanText === "string" || book.scanDepth === undefined ? messages.length : Math.floor(book.scanDepth);
  let haystack = depth > 0 ? messages.slice(-depth).join("\n") : "";
  const matcher = new KeyMatcher(options.matchWholeWords ?? true, options.regexTimeMs ?? DEFAULT_REGEX_TIME_MS, warnings);
  const triggered = new Set<number>();
  // Recursive scanning lets an inserted entry's text trigger others; each pass adds at least one entry or stops.
  for (let pass = 0; pass <= prepared.length; pass++) {
    const added = prepared.filter((p) => !triggered.has(p.index) && isTriggered(p, haystack, matcher, macros));
    for (const p of added) triggered.add(p.index);
    if (added.length === 0 || book.recursiveScanning !== true) break;
    haystack += "\n" + added.map((p) => p.content).join("\n");
  }
  const chosen = prepared.filter((p) => triggered.has(p.index) && p.content !== "");
  const byInsertion = [...chosen].sort((a, b) => a.entry.insertionOrder - b.entry.insertionOrder || a.index - b.index);
  const rank = new Map(byInsertion.map((p, i) => [p.index, i]));
  const byPriority = [...chosen].sort((a, b) => (b.entry.priority ?? 0) - (a.entry.priority ?? 0) || a.entry.insertionOrder - b.entry.insertionOrder || a.index - b.index);
  return byPriority.map((p) => ({
    id: `entry:${p.label}`,
    text: p.content,
    layout: [p.entry.position === "after_char" ? GROUP.after : GROUP.before, rank.get(p.index) ?? 0] as const,
    entryLabel: p.label,
  }));
}

function prepareEntry(entry: CharacterBookEntry, index: number, v3: boolean, macros: (s: string) => string): PreparedEntry {
  let content = entry.content;
  let force: PreparedEntry["force"];
  if (v3) {
    // V3 decorators: "@@name value" lines at the top of the content; they steer activation and are not text.
    const lines = content.split("\n");
    let i = 0;
    for (; i < lines.length && lines[i]!.startsWith("@@"); i++) {
      const name = lines[i]!.slice(2).trim().split(/\s+/)[0];
      if (name === "activate") force = "activate";
      else if (name === "dont_activate") force = "never";
    }
    content = lines.slice(i).join("\n");
  }
  const label = nonEmpty(entry.name) ?? nonEmpty(entry.comment) ?? `#${entry.id ?? index}`;
  return { index, entry, label, content: macros(content).trim(), force };
}

function nonEmpty(s: string | undefined): string | undefined {
  return s !== undefined && s.trim() !== "" ? s.trim() : undefined;
}

function isTriggered(p: PreparedEntry, haystack: string, matcher: KeyMatcher, macros: (s: string) => string): boolean {
  const { entry } = p;
  if (!entry.enabled || p.force === "never") return false;
  if (entry.constant === true || p.force === "activate") return true;
  const any = (keys: readonly string[]): boolean => keys.some((k) => matcher.matches(macros(k), haystack, entry));
  if (!any(entry.keys)) return false;
  const secondary = entry.secondaryKeys ?? [];
  return entry.selective !== true || secondary.length === 0 || any(secondary);
}

/** Compiled once per module: runs `re.test(s)` inside a context so that a timeout can interrupt it. */
const REGEX_TEST = new Script("re.test(s)");

/** Matches keys against the scanned text: plain keys by (whole-word) search, regex keys under guards. */
class KeyMatcher {
  private context: Context | undefined;
  /** Set at the first regex key, so that parsing, counting and the context's creation do not use up its time. */
  private deadline: number | undefined;
  /** One slow key may take a quarter of the time, so that it cannot starve the keys after it. */
  private readonly perKeyMs: number;
  private readonly regexCache = new Map<string, RegExp | null>();
  /** The scanned text lowered once, not once per key: it may be long and a book may have hundreds of keys. */
  private lowered: { text: string; lower: string } | undefined;

  constructor(
    private readonly wholeWords: boolean,
    private readonly regexTimeMs: number,
    private readonly warnings: string[],
  ) {
    this.perKeyMs = Math.max(1, Math.ceil(regexTimeMs / 4));
  }

  matches(key: string, haystack: string, entry: CharacterBookEntry): boolean {
    if (key.trim() === "") return false;
    if (entry.useRegex === true) return this.matchesRegex(key, haystack, entry.caseSensitive === true);
    const caseSensitive = entry.caseSensitive === true;
    const text = caseSensitive ? haystack : this.lower(haystack);
    return containsKey(text, caseSensitive ? key.trim() : key.trim().toLowerCase(), this.wholeWords);
  }

  private lower(haystack: string): string {
    if (this.lowered?.text !== haystack) this.lowered = { text: haystack, lower: haystack.toLowerCase() };
    return this.lowered.lower;
  }

  private matchesRegex(key: string, haystack: string, caseSensitive: boolean): boolean {
    const re = this.compile(key, caseSensitive);
    if (re === null) return false;
    this.context ??= createContext({});
    this.deadline ??= performance.now() + this.regexTimeMs;
    const remaining = this.deadline - performance.now();
    if (remaining < 1) {
      this.warn(`regex key ${quote(key)} skipped: the time for regex keys ran out`);
      return false;
    }
    this.context.re = re;
    this.context.s = haystack.length > MAX_REGEX_SCAN_CHARS ? haystack.slice(-MAX_REGEX_SCAN_CHARS) : haystack;
    // The limit is wall-clock time: on a loaded machine a fast regex can lose its slice to another process.
    // A second try tells the two apart, since a catastrophic pattern runs out again (within the same deadline).
    for (let attempt = 0; ; attempt++) {
      const left = this.deadline - performance.now();
      try {
        return REGEX_TEST.runInContext(this.context, { timeout: Math.max(1, Math.min(Math.ceil(left), this.perKeyMs)) }) === true;
      } catch (err) {
        const timedOut = (err as { code?: unknown }).code === "ERR_SCRIPT_EXECUTION_TIMEOUT";
        if (timedOut && attempt === 0 && this.deadline - performance.now() >= 1) continue;
        this.warn(`regex key ${quote(key)} skipped: it ran past the time limit`);
        return false;
      }
    }
  }

  private compile(key: string, caseSensitive: boolean): RegExp | null {
    const cacheKey = `${caseSensitive ? 1 : 0}${key}`;
    const cached = this.regexCache.get(cacheKey);
    if (cached !== undefined) return cached;
    const re = this.build(key, caseSensitive);
    this.regexCache.set(cacheKey, re);
    return re;
  }

  private build(key: string, caseSensitive: boolean): RegExp | null {
    const literal = /^\/([\s\S]+)\/([a-z]*)$/.exec(key);
    const source = literal ? literal[1]! : key;
    // A "/…/flags" key says its own case rule; a bare pattern follows the entry's case_sensitive.
    const flags = literal ? literal[2]!.replace(/[gy]/g, "") : caseSensitive ? "" : "i";
    const unsafe = unsafeRegex(source);
    if (unsafe !== undefined) {
      this.warn(`regex key ${quote(key)} skipped: ${unsafe}`);
      return null;
    }
    try {
      return new RegExp(source, flags);
    } catch (err) {
      this.warn(`regex key ${quote(key)} skipped: ${(err as Error).message}`);
      return null;
    }
  }

  private warn(message: string): void {
    if (!this.warnings.includes(message)) this.warnings.push(message);
  }
}

/**
 * Why a pattern is refused before it runs: too long, backreferences, or a quantified group that itself
 * contains a quantifier ("(a+)+", "(x*y)*"), the shapes behind catastrophic backtracking. The time limit
 * catches what this misses.
 */
function unsafeRegex(source: string): string | undefined {
  if (source.length > MAX_REGEX_KEY_CHARS) return `longer than ${MAX_REGEX_KEY_CHARS} characters`;
  if (/\\[1-9]|\\k</.test(source)) return "backreferences are not allowed";
  if (/\((?:[^()\\]|\\.)*(?:[*+]|\{\d+,\d*\})(?:[^()\\]|\\.)*\)(?:[*+]|\{\d+,\d*\})/.test(source)) return "nested quantifiers are not allowed";
  return undefined;
}

function quote(key: string): string {
  return JSON.stringify(key.length > 60 ? `${key.slice(0, 60)}…` : key);
}

const WORD_CHAR = /[\p{L}\p{N}_]/u;
const UNSPACED_SCRIPT = /[\p{Script=Han}\p{Script=Hiragana}\p{Script=Katakana}\p{Script=Thai}\p{Script=Lao}\p{Script=Khmer}\p{Script=Myanmar}]/u;

/**
 * Whether `needle` occurs in `hay` (both already lowered when matching without case); with `wholeWords`, an
 * edge of the key that is a word character must not touch another word character in the text (unless it
 * is of a script written without spaces).
 */
function containsKey(hay: string, needle: string, wholeWords: boolean): boolean {
  const first = [...needle][0] ?? "";
  const last = [...needle].at(-1) ?? "";
  const checkStart = wholeWords && WORD_CHAR.test(first) && !UNSPACED_SCRIPT.test(first);
  const checkEnd = wholeWords && WORD_CHAR.test(last) && !UNSPACED_SCRIPT.test(last);
  for (let at = hay.indexOf(needle); at >= 0; at = hay.indexOf(needle, at + 1)) {
    if (checkStart && WORD_CHAR.test(charBefore(hay, at))) continue;
    if (checkEnd && WORD_CHAR.test(charAt(hay, at + needle.length))) continue;
    return true;
  }
  return false;
}

function charBefore(s: string, index: number): string {
  if (index <= 0) return "";
  const low = s.charCodeAt(index - 1);
  // A low surrogate: the character is the pair ending here.
  return low >= 0xdc00 && low <= 0xdfff && index >= 2 ? s.slice(index - 2, index) : s.slice(index - 1, index);
}

function charAt(s: string, index: number): string {
  const cp = s.codePointAt(index);
  return cp === undefined ? "" : String.fromCodePoint(cp);
}
