/**
 * Dates a query names ("on 16 November, 2023", "in July 2022", "in June", "in 2023"), as time spans: a
 * question about what was said on a day or in a month leans toward memories from that span. Words alone
 * cannot do it: a turn rarely states its own date, but every memory carries its time.
 *
 * Spans are UTC calendar days, months or years; the caller widens them (a user's local day may straddle two
 * UTC days, and what happened on a day is often told a day or two later: "yesterday I went bowling").
 * English month names only, as the tokenizer's stop words are English.
 */

/** A span of time a query names, [from, to) in milliseconds since the epoch. */
export interface DateSpan {
  from: number;
  to: number;
  /** How precise the query was: a day, a month or a whole year. */
  unit: "day" | "month" | "year";
  /** Where the query names it: [start, end) in the query's UTF-16 units. */
  at: [number, number];
}

const MONTHS = ["january", "february", "march", "april", "may", "june", "july", "august", "september", "october", "november", "december"];
/** Full month names and the unambiguous abbreviations ("may" is only ever full; "mar", "jun" are not words here). */
const MONTH_OF = new Map<string, number>([
  ...MONTHS.map((m, i) => [m, i] as [string, number]),
  ...["jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec"].map(
    (m) => [m, MONTHS.findIndex((full) => full.startsWith(m.slice(0, 3)))] as [string, number],
  ),
]);
const MONTH = "(january|february|march|april|may|june|july|august|september|october|november|december|jan|feb|mar|apr|jun|jul|aug|sept?|oct|nov|dec)\\.?";
const DAY = "(\\d{1,2})(?:st|nd|rd|th)?";
const YEAR = "((?:19|20)\\d\\d)";
/** Each pattern names its groups' roles; the first pattern that matches a stretch of text claims it. */
const PATTERNS: { re: RegExp; roles: ("day" | "month" | "year")[] }[] = [
  { re: new RegExp(`\\b${DAY}\\s+(?:of\\s+)?${MONTH},?\\s+${YEAR}\\b`, "gi"), roles: ["day", "month", "year"] },
  { re: new RegExp(`\\b${MONTH}\\s+${DAY},?\\s+${YEAR}\\b`, "gi"), roles: ["month", "day", "year"] },
  { re: new RegExp(`\\b${MONTH},?\\s+${YEAR}\\b`, "gi"), roles: ["month", "year"] },
  { re: new RegExp(`\\b${DAY}\\s+(?:of\\s+)?${MONTH}\\b`, "gi"), roles: ["day", "month"] },
  { re: new RegExp(`\\b${MONTH}\\s+${DAY}\\b`, "gi"), roles: ["month", "day"] },
  // "may" alone is too often the verb: a bare month needs a preposition before it.
  { re: new RegExp(`\\b(?:in|during|since|before|after|of|last|early|late|mid)[\\s-]+${MONTH}\\b`, "gi"), roles: ["month"] },
  { re: new RegExp(`\\b${YEAR}\\b`, "g"), roles: ["year"] },
];

/**
 * The date spans `query` names. A date without a year is the latest one not after `now` (a user who asks
 * about "June" in March means last June). Days that do not exist ("31 June") are ignored.
 *
 * @example
 * dateSpans("What did Tim say on 16 November, 2023?", Date.now())
 * // [{ from: Date.UTC(2023, 10, 16), to: Date.UTC(2023, 10, 17), unit: "day" }]
 */
export function dateSpans(query: string, now: number): DateSpan[] {
  const claimed = new Uint8Array(query.length);
  const spans: DateSpan[] = [];
  for (const { re, roles } of PATTERNS) {
    for (const match of query.matchAll(re)) {
      const start = match.index;
      const end = start + match[0].length;
      if (claimed.subarray(start, end).some((c) => c === 1)) continue;
      const parts: Partial<Record<"day" | "month" | "year", number>> = {};
      roles.forEach((role, i) => {
        const text = match[i + 1]!.toLowerCase();
        parts[role] = role === "month" ? MONTH_OF.get(text)! : Number(text);
      });
      const span = toSpan(parts, now);
      if (span === undefined) continue;
      claimed.fill(1, start, end);
      spans.push({ ...span, at: [start, end] });
    }
  }
  return spans;
}

function toSpan(parts: Partial<Record<"day" | "month" | "year", number>>, now: number): Omit<DateSpan, "at"> | undefined {
  const { day, month } = parts;
  if (month === undefined) {
    const year = parts.year!;
    return { from: Date.UTC(year, 0, 1), to: Date.UTC(year + 1, 0, 1), unit: "year" };
  }
  let year = parts.year;
  if (year === undefined) {
    year = new Date(now).getUTCFullYear();
    if (Date.UTC(year, month, day ?? 1) > now) year--;
  }
  if (day === undefined) return { from: Date.UTC(year, month, 1), to: Date.UTC(year, month + 1, 1), unit: "month" };
  const from = Date.UTC(year, month, day);
  if (day < 1 || new Date(from).getUTCMonth() !== month) return undefined;
  return { from, to: from + DAY_MS, unit: "day" };
}

const DAY_MS = 86_400_000;
