import { describe, expect, it } from "vitest";
import { dateSpans, type DateSpan } from "./dates.js";

const NOW = Date.UTC(2023, 9, 20, 12); // 20 October 2023
const DAY = 86_400_000;

const plain = (spans: DateSpan[]): [string, string, string][] =>
  spans.map((s) => [new Date(s.from).toISOString().slice(0, 10), new Date(s.to).toISOString().slice(0, 10), s.unit]);

describe("dateSpans", () => {
  it("reads a day in its usual English forms, with or without a comma, ordinal or year", () => {
    const day: [string, string, string] = ["2023-11-16", "2023-11-17", "day"];
    expect(plain(dateSpans("What did Tim say on 16 November, 2023?", NOW))).toEqual([day]);
    expect(plain(dateSpans("on November 16th 2023", NOW))).toEqual([day]);
    expect(plain(dateSpans("the 16th of Nov. 2023", NOW))).toEqual([day]);
    expect(plain(dateSpans("Who did Maria have dinner with on May 3, 2023?", NOW))).toEqual([["2023-05-03", "2023-05-04", "day"]]);
    const [span] = dateSpans("dinner on May 3, 2023?", NOW);
    expect(span!.to - span!.from).toBe(DAY);
    expect(span!.at).toEqual([10, 21]);
  });

  it("reads months and years, and gives a date without a year the latest year that is not after now", () => {
    expect(plain(dateSpans("in mid-August 2023", NOW))).toEqual([["2023-08-01", "2023-09-01", "month"]]);
    expect(plain(dateSpans("When did Melanie go camping in June?", NOW))).toEqual([["2023-06-01", "2023-07-01", "month"]]);
    expect(plain(dateSpans("what happened in December?", NOW))).toEqual([["2022-12-01", "2023-01-01", "month"]]);
    expect(plain(dateSpans("on 25 October", NOW))).toEqual([["2022-10-25", "2022-10-26", "day"]]);
    expect(plain(dateSpans("How many times in 2023?", NOW))).toEqual([["2023-01-01", "2024-01-01", "year"]]);
    expect(plain(dateSpans("between August 11 and August 15 2023", NOW))).toEqual([
      ["2023-08-15", "2023-08-16", "day"],
      ["2023-08-11", "2023-08-12", "day"],
    ]);
  });

  it("names no date for words that only look like one, and skips days that do not exist", () => {
    expect(dateSpans("May I ask what you may like to do?", NOW)).toEqual([]);
    expect(dateSpans("I ran 5 miles and read 300 pages", NOW)).toEqual([]);
    expect(dateSpans("", NOW)).toEqual([]);
    // 31 June does not exist: the month still counts.
    expect(plain(dateSpans("on 31 June 2023", NOW))).toEqual([["2023-06-01", "2023-07-01", "month"]]);
  });
});
