import { describe, expect, it } from "vitest";
import { estimateTokens, type TokenCounter } from "../types.js";
import { parseCharacterCard, type CharacterCard } from "./card.js";
import { compilePersona, type CompilePersonaOptions } from "./compile.js";
import { seededRandom, v2Card, v3Card } from "./fixtures.js";

/** A V3 card from data fields and lorebook entries (JSON, as a file would hold them). */
function card(data: Record<string, unknown>, entries?: Record<string, unknown>[], book: Record<string, unknown> = {}): CharacterCard {
  const full: Record<string, unknown> = { name: "Mira", ...data };
  if (entries !== undefined) {
    full.character_book = { extensions: {}, ...book, entries: entries.map((e, i) => ({ extensions: {}, enabled: true, insertion_order: i, use_regex: false, content: `content ${i}`, keys: [], ...e })) };
  }
  return parseCharacterCard({ spec: "chara_card_v3", spec_version: "3.0", data: full });
}

const words: TokenCounter = (text) => (text.trim() === "" ? 0 : text.trim().split(/\s+/).length);
const huge = { budget: 100_000, countTokens: estimateTokens };

function compile(c: CharacterCard, scanText: CompilePersonaOptions["scanText"], extra: Partial<CompilePersonaOptions> = {}) {
  return compilePersona(c, { ...huge, scanText, ...extra });
}

describe("compilePersona: text and macros", () => {
  it("lays the parts out in the documented order", () => {
    const c = card(
      {
        system_prompt: "SYS",
        description: "DESC",
        personality: "PERS",
        scenario: "SCEN",
        mes_example: "<START>\nA: one\n<START>\nB: two",
      },
      [
        { keys: ["x"], content: "AFTER-2", position: "after_char", insertion_order: 2 },
        { keys: ["x"], content: "BEFORE", position: "before_char" },
        { keys: ["x"], content: "AFTER-1", position: "after_char", insertion_order: 1 },
      ],
    );
    expect(compile(c, "x").text).toBe(
      ["SYS", "BEFORE", "DESC", "Mira's personality: PERS", "Scenario: SCEN", "AFTER-1", "AFTER-2", "<START>\nA: one", "<START>\nB: two"].join("\n\n"),
    );
  });

  it("replaces {{char}}, {{user}}, <BOT>, <USER> in any case, and {{original}} in the system prompt", () => {
    const c = card({
      system_prompt: "{{original}} Play {{char}}.",
      description: "{{Char}} likes {{ user }}. <BOT> and <user>. {{unknown}} stays.",
      post_history_instructions: "Answer {{user}} as {{char}}.",
    });
    const out = compile(c, "", { userName: "Ana", originalSystemPrompt: "Be brief." });
    expect(out.text).toBe("Be brief. Play Mira.\n\nMira likes Ana. Mira and Ana. {{unknown}} stays.");
    expect(out.postHistoryInstructions).toBe("Answer Ana as Mira.");
    expect(compile(c, "").text).toContain("Mira likes User.");
  });

  it("uses a V3 nickname for {{char}}, and never re-expands a name that looks like a macro", () => {
    expect(compile(card({ nickname: "Mi", description: "{{char}}" }), "").text).toBe("Mi");
    expect(compile(card({ name: "{{user}}", description: "{{char}} meets {{user}}" }), "", { userName: "{{char}}" }).text).toBe("{{user}} meets {{char}}");
  });

  it("is deterministic", () => {
    const c = parseCharacterCard(v3Card());
    const a = compile(c, "moss tea glasshouse", { budget: 60 });
    const b = compile(c, "moss tea glasshouse", { budget: 60 });
    expect(a).toEqual(b);
  });

  it("refuses a negative or NaN budget; a zero budget gives empty text", () => {
    const c = parseCharacterCard(v2Card());
    expect(() => compile(c, "", { budget: -1 })).toThrow(RangeError);
    expect(() => compile(c, "", { budget: Number.NaN })).toThrow(RangeError);
    const zero = compile(c, "moss", { budget: 0 });
    expect(zero.text).toBe("");
    expect(zero.tokens).toBe(0);
    expect(zero.dropped).toContain("description");
  });
});

describe("compilePersona: lorebook triggers", () => {
  const labels = (c: CharacterCard, scan: CompilePersonaOptions["scanText"], extra: Partial<CompilePersonaOptions> = {}): string[] =>
    compile(c, scan, extra).triggeredEntries;

  it("matches keys without case by default, with case when case_sensitive", () => {
    const c = card({}, [
      { name: "loose", keys: ["Dragon"] },
      { name: "strict", keys: ["Dragon"], case_sensitive: true },
    ]);
    expect(labels(c, "a DRAGON flies")).toEqual(["loose"]);
    expect(labels(c, "a Dragon flies")).toEqual(["loose", "strict"]);
    expect(labels(c, "no wyrm here")).toEqual([]);
  });

  it("matches whole words in spaced scripts, anywhere in unspaced ones, unless told otherwise", () => {
    const c = card({}, [
      { name: "cat", keys: ["cat"] },
      { name: "japan", keys: ["日本"] },
      { name: "umlaut", keys: ["Über"] },
      { name: "hyphen", keys: ["-x-"] },
    ]);
    expect(labels(c, "concatenate the catalogue")).toEqual([]);
    expect(labels(c, "the cat, sat")).toEqual(["cat"]);
    expect(labels(c, "私は日本に行きたい")).toEqual(["japan"]);
    expect(labels(c, "überall")).toEqual([]);
    expect(labels(c, "über alles")).toEqual(["umlaut"]);
    expect(labels(c, "a-x-b")).toEqual(["hyphen"]);
    expect(labels(c, "concatenate", { matchWholeWords: false })).toEqual(["cat"]);
  });

  it("selective entries need a primary AND a secondary key", () => {
    const c = card({}, [
      { name: "both", keys: ["sword"], secondary_keys: ["fire", "ice"], selective: true },
      { name: "unselective", keys: ["sword"], secondary_keys: ["fire"], selective: false },
      { name: "no-secondaries", keys: ["sword"], secondary_keys: [], selective: true },
    ]);
    expect(labels(c, "a sword")).toEqual(["unselective", "no-secondaries"]);
    expect(labels(c, "ice sword")).toEqual(["both", "unselective", "no-secondaries"]);
    expect(labels(c, "fire and ice")).toEqual([]);
  });

  it("constant entries always come in; disabled ones never, constant or not", () => {
    const c = card({}, [
      { name: "always", constant: true, keys: [] },
      { name: "off", enabled: false, keys: ["rain"] },
      { name: "off-constant", enabled: false, constant: true },
      { name: "rain", keys: ["rain"] },
    ]);
    expect(labels(c, "")).toEqual(["always"]);
    expect(labels(c, "rain")).toEqual(["always", "rain"]);
  });

  it("regex keys (use_regex): /pattern/flags with their own case rule, bare patterns with case_sensitive", () => {
    const c = card({}, [
      { name: "slashed", keys: ["/colou?r/i"], use_regex: true },
      { name: "bare", keys: ["gr[ae]y"], use_regex: true },
      { name: "bare-strict", keys: ["Gr[ae]y"], use_regex: true, case_sensitive: true },
      { name: "literal", keys: ["gr[ae]y"], use_regex: false },
    ]);
    expect(labels(c, "COLOR")).toEqual(["slashed"]);
    expect(labels(c, "GREY")).toEqual(["bare"]);
    expect(labels(c, "Gray")).toEqual(["bare", "bare-strict"]);
    expect(labels(c, "gr[ae]y")).toEqual(["literal"]);
  });

  it("guards against bad and catastrophic regexes: skipped with a warning, quickly", () => {
    const c = card({}, [
      { name: "nested", keys: ["(a+)+$"], use_regex: true },
      { name: "backref", keys: ["(a)\\1"], use_regex: true },
      { name: "long", keys: ["a".repeat(300)], use_regex: true },
      { name: "invalid", keys: ["(unclosed"], use_regex: true },
      // passes the static checks, still exponential: caught by the time limit
      { name: "alternation", keys: ["^(a|a)*b$"], use_regex: true },
      { name: "fine", keys: ["a{3}"], use_regex: true },
    ]);
    const started = performance.now();
    // 200 ms in all, 50 for any one key: the exponential key is cut at 50 and the fine one still runs, even on a
    // loaded machine.
    const out = compile(c, "a".repeat(40) + "!", { regexTimeMs: 200 });
    expect(performance.now() - started).toBeLessThan(2_000);
    expect(out.triggeredEntries).toEqual(["fine"]);
    expect(out.warnings).toHaveLength(5);
    expect(out.warnings.join("\n")).toMatch(/nested quantifiers[\s\S]*backreferences[\s\S]*longer than[\s\S]*Invalid regular expression[\s\S]*time/);
  });

  it("honours V3 decorators @@activate and @@dont_activate, and keeps them out of the text", () => {
    const c = card({}, [
      { name: "forced", keys: [], content: "@@activate\nForced text." },
      { name: "muted", keys: ["bell"], content: "@@dont_activate\nNever." },
      { name: "depth", keys: ["bell"], content: "@@depth 4\nBell text." },
    ]);
    const out = compile(c, "bell");
    expect(out.triggeredEntries).toEqual(["forced", "depth"]);
    expect(out.text).toBe("Forced text.\n\nBell text.");
  });

  it("reads decorator-looking lines of a V2 card as text", () => {
    const v2 = parseCharacterCard({
      spec: "chara_card_v2",
      spec_version: "2.0",
      data: { name: "x", character_book: { entries: [{ keys: ["bell"], content: "@@dont_activate\nText.", extensions: {}, enabled: true, insertion_order: 0 }] } },
    });
    expect(compile(v2, "bell").text).toBe("@@dont_activate\nText.");
  });

  it("scans only the last scan_depth messages; a single text is scanned whole", () => {
    const c = card({}, [{ name: "old", keys: ["old"] }, { name: "new", keys: ["new"] }], { scan_depth: 1 });
    expect(labels(c, ["old", "new"])).toEqual(["new"]);
    expect(labels(c, "old\nnew")).toEqual(["old", "new"]);
    const none = card({}, [{ name: "new", keys: ["new"] }, { name: "c", constant: true }], { scan_depth: 0 });
    expect(labels(none, ["new"])).toEqual(["c"]);
  });

  it("with recursive_scanning, an inserted entry's text triggers others", () => {
    const entries = [
      { name: "a", keys: ["apple"], content: "The apple grows near the barn." },
      { name: "b", keys: ["barn"], content: "The barn hides a cellar." },
      { name: "c", keys: ["cellar"], content: "Cellar." },
    ];
    expect(labels(card({}, entries), "apple")).toEqual(["a"]);
    expect(labels(card({}, entries, { recursive_scanning: true }), "apple")).toEqual(["a", "b", "c"]);
  });

  it("labels entries by name, else comment, else id, else index", () => {
    const c = card({}, [
      { keys: ["k"], name: "named" },
      { keys: ["k"], comment: "commented" },
      { keys: ["k"], id: 77 },
      { keys: ["k"] },
    ]);
    expect(labels(c, "k")).toEqual(["named", "commented", "#77", "#3"]);
  });
});

describe("compilePersona: budget", () => {
  it("drops a whole entry that does not fit, and still takes a smaller one after it", () => {
    const c = card({ description: "one two three" }, [
      { name: "big", keys: ["k"], priority: 10, content: "w ".repeat(50).trim() },
      { name: "small", keys: ["k"], priority: 1, content: "tiny entry" },
    ]);
    const out = compile(c, "k", { budget: 10, countTokens: words });
    expect(out.triggeredEntries).toEqual(["small"]);
    expect(out.dropped).toEqual(["entry:big"]);
    expect(out.text).toBe("tiny entry\n\none two three");
    expect(out.text).not.toContain("w w");
    expect(out.tokens).toBe(5);
  });

  it("gives the budget to higher priority first and places entries by insertion_order", () => {
    const entries = [0, 1, 2, 3].map((i) => ({ name: `p${i}`, keys: ["k"], priority: i, insertion_order: 10 - i, content: `entry number ${i}` }));
    const c = card({}, entries);
    // each entry is 3 words; 2 entries and a separator fit in 6 words
    const out = compile(c, "k", { budget: 6, countTokens: words });
    expect(out.triggeredEntries).toEqual(["p3", "p2"]);
    expect(out.text).toBe("entry number 3\n\nentry number 2");
    expect(out.dropped).toEqual(["entry:p1", "entry:p0"]);
    // equal priority: lower insertion_order wins
    const tie = card({}, [
      { name: "late", keys: ["k"], insertion_order: 9, content: "a b c" },
      { name: "early", keys: ["k"], insertion_order: 1, content: "d e f" },
    ]);
    expect(compile(tie, "k", { budget: 3, countTokens: words }).triggeredEntries).toEqual(["early"]);
  });

  it("drops example dialogue first, then scenario, personality, system prompt; the description last", () => {
    const c = card({
      description: "d d d d",
      system_prompt: "s s s",
      personality: "p",
      scenario: "c",
      mes_example: "<START>\ne e\n<START>\nf f",
    });
    const ids = (budget: number): string[] => compile(c, "", { budget, countTokens: words }).dropped;
    expect(ids(100)).toEqual([]);
    expect(ids(16)).toEqual(["example:1"]);
    expect(ids(13)).toEqual(["example:0", "example:1"]);
    expect(ids(11)).toEqual(["scenario", "example:0", "example:1"]);
    expect(ids(7)).toEqual(["personality", "scenario", "example:0", "example:1"]);
    expect(ids(4)).toEqual(["system_prompt", "personality", "scenario", "example:0", "example:1"]);
  });

  it("when even the description does not fit, drops it and keeps what does, saying so", () => {
    const c = card({ description: "d ".repeat(100), personality: "kind", scenario: "a ship" });
    const out = compile(c, "", { budget: 10, countTokens: words });
    expect(out.dropped).toEqual(["description"]);
    expect(out.text).toBe("Mira's personality: kind\n\nScenario: a ship");
    expect(out.tokens).toBeLessThanOrEqual(10);
  });

  it("keeps lorebook entries within the book's token_budget", () => {
    const entries = [0, 1, 2].map((i) => ({ name: `e${i}`, keys: ["k"], priority: 3 - i, content: `x${i} y${i}` }));
    const out = compile(card({}, entries, { token_budget: 4 }), "k", { countTokens: words });
    expect(out.triggeredEntries).toEqual(["e0", "e1"]);
    expect(out.dropped).toEqual(["entry:e2"]);
  });

  it("never exceeds the budget, never cuts a part, and triggers exactly the right entries (random cards)", () => {
    const rand = seededRandom(0x5eed);
    const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rand() * xs.length)]!;
    const vocabulary = ["sun", "moon", "Star", "river", "stone", "fox", "Owl", "rain", "ember", "ash", "élan", "ночь", "夜"];
    const sentence = (n: number): string => Array.from({ length: n }, () => pick(vocabulary)).join(" ");
    const counters: TokenCounter[] = [estimateTokens, words, (t) => t.length + 3, (t) => Math.ceil(new TextEncoder().encode(t).length / 3)];
    for (let iteration = 0; iteration < 300; iteration++) {
      const entryCount = Math.floor(rand() * 12);
      const entries = Array.from({ length: entryCount }, (_, i) => ({
        name: `E${i}`,
        keys: Array.from({ length: 1 + Math.floor(rand() * 2) }, () => pick(vocabulary)),
        secondary_keys: rand() < 0.3 ? [pick(vocabulary)] : [],
        selective: rand() < 0.5,
        case_sensitive: rand() < 0.3,
        constant: rand() < 0.1,
        enabled: rand() < 0.9,
        priority: Math.floor(rand() * 5),
        insertion_order: Math.floor(rand() * 5),
        position: pick(["before_char", "after_char"]),
        content: `⟦E${i}⟧ ${sentence(1 + Math.floor(rand() * 30))}`,
      }));
      const c = card(
        {
          description: `⟦D⟧ ${sentence(Math.floor(rand() * 60))}`,
          personality: rand() < 0.7 ? sentence(Math.floor(rand() * 10)) : "",
          scenario: rand() < 0.7 ? sentence(Math.floor(rand() * 10)) : "",
          system_prompt: rand() < 0.5 ? `{{char}} ${sentence(Math.floor(rand() * 20))}` : "",
          mes_example: Array.from({ length: Math.floor(rand() * 4) }, (_, i) => `<START>\n⟦X${i}⟧ {{user}}: ${sentence(5)}`).join("\n"),
        },
        entries,
        rand() < 0.3 ? { token_budget: Math.floor(rand() * 80) } : {},
      );
      const scan = sentence(Math.floor(rand() * 15));
      const budget = Math.floor(rand() * 300);
      const countTokens = pick(counters);
      const out = compilePersona(c, { budget, countTokens, scanText: scan, userName: "U" });
      const context = `iteration ${iteration}, budget ${budget}`;
      expect(out.tokens, context).toBeLessThanOrEqual(budget);
      expect(out.tokens, context).toBe(out.text === "" ? 0 : countTokens(out.text));
      expect(compilePersona(c, { budget, countTokens, scanText: scan, userName: "U" }), context).toEqual(out);

      // Oracle for triggering: whole-word match on a space-separated vocabulary.
      const scanWords = scan.split(" ");
      const has = (key: string, caseSensitive: boolean): boolean =>
        scanWords.some((w) => (caseSensitive ? w === key : w.toLowerCase() === key.toLowerCase()));
      const expected = entries
        .filter((e) => e.enabled)
        .filter((e) => {
          if (e.constant) return true;
          const primary = e.keys.some((k) => has(k, e.case_sensitive));
          const secondary = !e.selective || e.secondary_keys.length === 0 || e.secondary_keys.some((k) => has(k, e.case_sensitive));
          return primary && secondary;
        })
        .map((e) => e.name);
      const droppedEntries = out.dropped.filter((d) => d.startsWith("entry:")).map((d) => d.slice(6));
      expect([...out.triggeredEntries, ...droppedEntries].sort(), context).toEqual([...expected].sort());

      // Whole or nothing: each entry's full content is in the text exactly when it is listed as included.
      for (const e of entries) {
        const included = out.triggeredEntries.includes(e.name);
        expect(out.text.includes(e.content), `${context}, ${e.name}`).toBe(included);
        expect(out.text.includes(`⟦${e.name}⟧`), `${context}, ${e.name}`).toBe(included);
      }
      expect(out.text.includes("⟦D⟧"), context).toBe(!out.dropped.includes("description"));
      expect(out.text.includes(c.description.trim()), context).toBe(!out.dropped.includes("description"));
    }
  });
});
