/**
 * How text becomes terms for BM25 and words for word vectors: lowercase, split on Unicode letters and digits
 * (an apostrophe inside a word keeps it whole: "don't", "alice's" → "alice"), English stop words dropped, and
 * a light suffix stemmer so that "paint", "paints", "painted" and "painting" meet.
 */

/**
 * Function words that carry no topic. The list is short on purpose: words such as "first", "never", "why"
 * or pronoun-like names matter to memory questions ("when did she first…").
 */
export const STOP_WORDS: ReadonlySet<string> = new Set(
  (
    "a an the and or but if then than so as of at by for with about into onto from to in on off over under " +
    "up down out is am are was were be been being do does did doing done have has had having " +
    "i me my mine myself you your yours yourself he him his himself she her hers herself it its itself " +
    "we us our ours ourselves they them their theirs themselves this that these those there here " +
    "what which who whom whose when where how " +
    "will would shall should can could may might must just also too very really " +
    "not no nor s t d ll m re ve hey oh yeah yes ok okay wow hi hello"
  ).split(" "),
);

const WORD = /[\p{L}\p{N}]+(?:['’][\p{L}]+)*/gu;

/**
 * The lowercase words of a text, apostrophe contractions kept whole ("don't") and possessives cut ("mel's" →
 * "mel"). Stop words are kept: callers decide.
 *
 * @example
 * words("Hey Mel's dog, don't!") // ["hey", "mel", "dog", "don't"]
 */
export function words(text: string): string[] {
  const out: string[] = [];
  for (const match of text.toLowerCase().matchAll(WORD)) {
    let word = match[0].replace(/’/g, "'");
    if (word.endsWith("'s")) word = word.slice(0, -2);
    out.push(word);
  }
  return out;
}

const VOWEL = /[aeiouy]/;

/**
 * A light English stemmer (plural, -ed, -ing, -ly endings; no Porter rules beyond that): enough to match
 * inflections without merging unrelated words. Words of four letters or fewer and non-Latin words are kept.
 *
 * @example
 * stem("painting") // "paint"
 * stem("stories") // "story"
 */
export function stem(word: string): string {
  if (word.length <= 4 || !/^[a-z]+$/.test(word)) return word;
  let w = word;
  if (w.endsWith("ies") && w.length > 5) w = `${w.slice(0, -3)}y`;
  else if (w.endsWith("sses")) w = w.slice(0, -2);
  else if (w.endsWith("s") && !w.endsWith("ss") && !w.endsWith("us") && !w.endsWith("is")) w = w.slice(0, -1);
  if (w.endsWith("ing") && w.length > 5 && VOWEL.test(w.slice(0, -3))) w = undouble(w.slice(0, -3));
  else if (w.endsWith("ed") && w.length > 4 && VOWEL.test(w.slice(0, -2))) w = undouble(w.slice(0, -2));
  else if (w.endsWith("ly") && w.length > 5) w = w.slice(0, -2);
  return w.endsWith("e") && w.length > 4 ? w.slice(0, -1) : w;
}

/** "running" → "runn" → "run"; "falling" keeps its "ll" ("fall"). */
function undouble(w: string): string {
  const last = w[w.length - 1];
  if (w.length > 3 && last === w[w.length - 2] && last !== "l" && last !== "s" && last !== "z") return w.slice(0, -1);
  return w;
}

/**
 * The BM25 terms of a text: its words, stop words dropped, stemmed.
 *
 * @example
 * terms("Caroline went to the support groups") // ["caroline", "went", "support", "group"]
 */
export function terms(text: string): string[] {
  const out: string[] = [];
  for (const word of words(text)) {
    if (STOP_WORDS.has(word) || word.includes("'")) continue;
    out.push(stem(word));
  }
  return out;
}
