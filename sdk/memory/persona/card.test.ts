import { describe, expect, it } from "vitest";
import { cardToJson, exportCharacterCard, parseCharacterCard, type CharacterCard } from "./card.js";
import { CardDecodeError, CardTooLargeError, NotACharacterCardError, NotPngError } from "./errors.js";
import { v1Card, v2Card, v3Card } from "./fixtures.js";

describe("parseCharacterCard: JSON", () => {
  it("upgrades a V1 card to V2, keeping its flat fields in raw", () => {
    const card = parseCharacterCard(v1Card());
    expect(card.spec).toBe("chara_card_v2");
    expect(card.name).toBe("Old Tom");
    expect(card.firstMessage).toBe("Who goes there?");
    expect(card.exampleDialogue).toContain("Mind the steps");
    expect(card.systemPrompt).toBe("");
    expect(card.tags).toEqual([]);
    expect(card.alternateGreetings).toEqual([]);
    expect(card.extensions).toEqual({});
    expect(card.characterBook).toBeUndefined();
    expect(card.raw).toEqual(v1Card());
  });

  it("exports a V1 card as V2 with a data object and the V1 fields beside it for old readers", () => {
    const out = JSON.parse(exportCharacterCard(parseCharacterCard(v1Card()), { format: "json" }));
    expect(out.spec).toBe("chara_card_v2");
    expect(out.spec_version).toBe("2.0");
    expect(out.data.name).toBe("Old Tom");
    expect(out.data.mes_example).toBe(v1Card().mes_example);
    expect(out.data.tags).toEqual([]);
    expect(out.data.extensions).toEqual({});
    expect(out.name).toBe("Old Tom");
    expect(out.avatar).toBe("none");
    const again = parseCharacterCard(out);
    expect(again.description).toBe(v1Card().description);
  });

  it("reads every V2 field, the lorebook and its entries", () => {
    const card = parseCharacterCard(v2Card());
    expect(card.spec).toBe("chara_card_v2");
    expect(card.name).toBe("Zoë 🌸");
    expect(card.systemPrompt).toBe("You are {{char}}. {{original}}");
    expect(card.postHistoryInstructions).toBe("Stay in character as {{char}}.");
    expect(card.alternateGreetings).toEqual(["Hi!", "¡Hola, {{user}}!"]);
    expect(card.tags).toEqual(["botany", "wholesome", "日本"]);
    expect(card.creator).toBe("ana");
    expect(card.characterVersion).toBe("1.2");
    expect(card.creatorNotes).toBe("Best with slow replies.");
    expect(card.extensions.world).toBe("Greenhouse");
    expect(card.groupOnlyGreetings).toEqual([]);
    const book = card.characterBook!;
    expect(book.name).toBe("Greenhouse lore");
    expect(book.scanDepth).toBe(3);
    expect(book.tokenBudget).toBe(500);
    expect(book.recursiveScanning).toBe(false);
    expect(book.extensions).toEqual({ "x-book": { v: 1 } });
    expect(book.entries).toHaveLength(2);
    const [moss, tea] = book.entries;
    expect(moss).toMatchObject({ keys: ["moss", "Bryophyte"], insertionOrder: 10, caseSensitive: false, priority: 5, id: 1, comment: "moss lore", selective: false, secondaryKeys: [], constant: false, position: "before_char" });
    expect(moss!.raw.x_entry_unknown).toBe(42);
    expect(tea).toMatchObject({ keys: ["tea"], id: "tea-2", position: "after_char", enabled: true });
    expect(tea!.caseSensitive).toBeUndefined();
    expect(tea!.useRegex).toBeUndefined();
  });

  it("reads the V3 fields and regex entries", () => {
    const card = parseCharacterCard(v3Card());
    expect(card.spec).toBe("chara_card_v3");
    expect(card.nickname).toBe("Zo");
    expect(card.creatorNotesMultilingual).toEqual({ en: "Best with slow replies.", fr: "Mieux avec des réponses lentes." });
    expect(card.source).toEqual(["https://example.org/zoe"]);
    expect(card.groupOnlyGreetings).toEqual(["Hello everyone!"]);
    expect(card.creationDate).toBe(1_700_000_000);
    expect(card.modificationDate).toBe(1_700_000_500);
    expect(card.assets).toHaveLength(2);
    expect(card.assets![1]!.x_asset).toBe(1);
    const regex = card.characterBook!.entries[2]!;
    expect(regex.useRegex).toBe(true);
    expect(regex.keys).toEqual(["/glas+house/i"]);
  });

  it("reads the same card from an object, a string, UTF-8 bytes and bytes with a BOM", () => {
    const fromObject = parseCharacterCard(v3Card());
    const text = JSON.stringify(v3Card(), null, 2);
    expect(parseCharacterCard(text)).toEqual(fromObject);
    expect(parseCharacterCard(new TextEncoder().encode(text))).toEqual(fromObject);
    expect(parseCharacterCard(new TextEncoder().encode("\uFEFF" + text))).toEqual(fromObject);
    expect(parseCharacterCard("\uFEFF" + text)).toEqual(fromObject);
  });

  it("never shares objects with the caller's input", () => {
    const input = v2Card();
    const card = parseCharacterCard(input);
    ((input.data as Record<string, unknown>).extensions as Record<string, unknown>).world = "changed";
    expect(card.extensions.world).toBe("Greenhouse");
    expect((card.raw.data as { extensions: { world: string } }).extensions.world).toBe("Greenhouse");
  });

  it("reads a V2 card whose spec header is missing", () => {
    const { spec: _spec, spec_version: _version, ...headless } = v2Card();
    const card = parseCharacterCard(headless);
    expect(card.spec).toBe("chara_card_v2");
    expect(card.name).toBe("Zoë 🌸");
    const out = cardToJson(card);
    expect(out.spec).toBe("chara_card_v2");
    expect((out.data as Record<string, unknown>).x_data_unknown).toEqual({ nested: ["a", { b: 1.5 }] });
  });
});

describe("exportCharacterCard: JSON round trip", () => {
  for (const [label, make] of [["V2", v2Card], ["V3", v3Card]] as const) {
    it(`${label}: import → export → import is deep-equal, and the export equals the original JSON`, () => {
      const first = parseCharacterCard(make());
      const json = exportCharacterCard(first, { format: "json" });
      expect(JSON.parse(json)).toEqual(make());
      // Untouched key order survives too: the text is the original's, byte for byte.
      expect(json).toBe(JSON.stringify(make()));
      const second = parseCharacterCard(json);
      expect(second).toEqual(first);
      expect(exportCharacterCard(second, { format: "json", indent: 2 })).toBe(JSON.stringify(make(), null, 2));
    });
  }

  it("writes edits over the raw JSON and keeps what it does not know", () => {
    const card = parseCharacterCard(v2Card());
    const edited: CharacterCard = {
      ...card,
      name: "Zoé",
      tags: [...card.tags, "new"],
      characterBook: {
        ...card.characterBook!,
        entries: [{ ...card.characterBook!.entries[0]!, content: "Now 41 species.", priority: undefined }, ...card.characterBook!.entries.slice(1)],
      },
    };
    const out = JSON.parse(exportCharacterCard(edited, { format: "json" }));
    expect(out.data.name).toBe("Zoé");
    expect(out.data.tags).toEqual(["botany", "wholesome", "日本", "new"]);
    expect(out.data.x_data_unknown).toEqual({ nested: ["a", { b: 1.5 }] });
    expect(out.x_top_level).toEqual({ kept: [1, 2, { deep: true }] });
    const entry = out.data.character_book.entries[0];
    expect(entry.content).toBe("Now 41 species.");
    expect("priority" in entry).toBe(false);
    expect(entry.x_entry_unknown).toBe(42);
    expect(entry.extensions).toEqual({ depth: 4, "x-entry": [null, "ü"] });
    expect(out.data.character_book.x_book_unknown).toBe("kept");
    const again = parseCharacterCard(out);
    expect(again.name).toBe("Zoé");
    expect(again.characterBook!.entries[0]!.priority).toBeUndefined();
  });

  it("keeps the V1 mirror fields of a V2 file in step with edits", () => {
    const file = { ...v2Card(), name: "Zoë 🌸", description: "old mirror" };
    const card = parseCharacterCard(file);
    const out = cardToJson({ ...card, name: "Renamed" });
    expect(out.name).toBe("Renamed");
    expect(out.description).toBe(card.description);
    expect("personality" in out).toBe(false);
  });

  it("converts V2 → V3 with the fields V3 requires", () => {
    const out = cardToJson(parseCharacterCard(v2Card()), "chara_card_v3");
    const data = out.data as Record<string, unknown>;
    expect(out.spec).toBe("chara_card_v3");
    expect(out.spec_version).toBe("3.0");
    expect(data.group_only_greetings).toEqual([]);
    const entries = (data.character_book as { entries: Record<string, unknown>[] }).entries;
    expect(entries.every((e) => e.use_regex === false)).toBe(true);
    expect(entries[0]!.x_entry_unknown).toBe(42);
    expect(parseCharacterCard(out).spec).toBe("chara_card_v3");
  });

  it("converts V3 → V2 without the V3-only fields, keeping the unknown ones", () => {
    const out = cardToJson(parseCharacterCard(v3Card()), "chara_card_v2");
    const data = out.data as Record<string, unknown>;
    expect(out.spec).toBe("chara_card_v2");
    expect(out.spec_version).toBe("2.0");
    for (const key of ["nickname", "creator_notes_multilingual", "source", "group_only_greetings", "creation_date", "modification_date", "assets"]) {
      expect(key in data).toBe(false);
    }
    const entries = (data.character_book as { entries: Record<string, unknown>[] }).entries;
    expect(entries.some((e) => "use_regex" in e)).toBe(false);
    expect(entries[2]!.x_regex_unknown).toBe(true);
    expect(data.x_data_unknown).toEqual({ nested: ["a", { b: 1.5 }] });
    expect(out.x_top_level_v3).toBe("kept");
  });

  it("keeps a V2 card's own fields that share V3 names, even ill-typed", () => {
    const file = v2Card();
    (file.data as Record<string, unknown>).source = "not-an-array";
    (file.data as Record<string, unknown>).nickname = "Z";
    const card = parseCharacterCard(file);
    expect(card.source).toBeUndefined();
    expect(card.nickname).toBe("Z");
    expect(cardToJson(card)).toEqual(file);
  });

  it("normalizes an incomplete card once, then round trips unchanged; a null optional field stays null", () => {
    const sparse = {
      spec: "chara_card_v2",
      spec_version: "2.0",
      data: {
        name: "Sparse",
        description: null,
        x_unknown: 1,
        character_book: { entries: [{ keys: ["k"], content: "c", priority: null }] },
      },
    };
    const card = parseCharacterCard(sparse);
    expect(card.description).toBe("");
    expect(card.characterBook!.entries[0]!.enabled).toBe(true);
    expect(card.characterBook!.entries[0]!.priority).toBeUndefined();
    const out = cardToJson(card);
    const data = out.data as Record<string, unknown>;
    expect(data.description).toBe("");
    expect(data.tags).toEqual([]);
    expect(data.x_unknown).toBe(1);
    const entry = (data.character_book as { entries: Record<string, unknown>[] }).entries[0]!;
    expect(entry).toEqual({ keys: ["k"], content: "c", priority: null, extensions: {}, enabled: true, insertion_order: 0 });
    const again = parseCharacterCard(out);
    expect(cardToJson(again)).toEqual(out);
    expect(parseCharacterCard(cardToJson(again))).toEqual(again);
  });
});

describe("parseCharacterCard: bad input", () => {
  it("refuses JSON that is not a card, with its issues", () => {
    expect(() => parseCharacterCard("[1,2]")).toThrow(NotACharacterCardError);
    expect(() => parseCharacterCard("null")).toThrow(NotACharacterCardError);
    expect(() => parseCharacterCard('"text"')).toThrow(NotACharacterCardError);
    expect(() => parseCharacterCard({ hello: "world" })).toThrow(NotACharacterCardError);
    expect(() => parseCharacterCard({ spec: "chara_card_v9", data: { name: "x" } })).toThrow(/unknown spec/);
    expect(() => parseCharacterCard({ spec: "chara_card_v2", spec_version: "2.0" })).toThrow(/"data" object/);
    const bad = v3Card();
    Object.assign(bad.data as object, { name: 7, tags: "x", source: 3 });
    try {
      parseCharacterCard(bad);
      expect.unreachable();
    } catch (err) {
      expect(err).toBeInstanceOf(NotACharacterCardError);
      const e = err as NotACharacterCardError;
      expect(e.name).toBe("NotACharacterCardError");
      expect(e.issues.some((i) => i.startsWith("data.name:"))).toBe(true);
      expect(e.issues.some((i) => i.startsWith("data.tags:"))).toBe(true);
      expect(e.issues.some((i) => i.startsWith("data.source:"))).toBe(true);
    }
  });

  it("refuses ill-typed lorebook entries with their path", () => {
    const bad = v2Card();
    const entries = ((bad.data as Record<string, unknown>).character_book as { entries: Record<string, unknown>[] }).entries;
    entries[1]!.keys = [1];
    expect(() => parseCharacterCard(bad)).toThrow(/data\.character_book\.entries\.1\.keys\.0/);
  });

  it("refuses text that is not JSON, bytes that are not UTF-8, and bytes that are neither PNG nor JSON", () => {
    expect(() => parseCharacterCard("{not json")).toThrow(CardDecodeError);
    try {
      parseCharacterCard(Uint8Array.of(0x7b, 0xff, 0xfe, 0x7d));
      expect.unreachable();
    } catch (err) {
      expect((err as CardDecodeError).problem).toBe("utf8");
    }
    expect(() => parseCharacterCard(Uint8Array.of(1, 2, 3))).toThrow(NotPngError);
    expect(() => parseCharacterCard(new Uint8Array(0))).toThrow(NotPngError);
  });

  it("refuses objects that cannot be JSON", () => {
    const cyclic: Record<string, unknown> = { name: "x", description: "y" };
    cyclic.self = cyclic;
    expect(() => parseCharacterCard(cyclic)).toThrow(NotACharacterCardError);
    expect(() => parseCharacterCard({ name: "x", description: "y", big: 1n })).toThrow(NotACharacterCardError);
  });

  it("refuses oversized card JSON as text, bytes and object, before parsing it", () => {
    const card = v2Card();
    (card.data as Record<string, unknown>).description = "x".repeat(2 * 1024 * 1024);
    const text = JSON.stringify(card);
    expect(() => parseCharacterCard(text)).toThrow(CardTooLargeError);
    expect(() => parseCharacterCard(new TextEncoder().encode(text))).toThrow(CardTooLargeError);
    expect(() => parseCharacterCard(card)).toThrow(CardTooLargeError);
    expect(() => parseCharacterCard(JSON.stringify(v2Card()), { maxCardJsonBytes: 100 })).toThrow(CardTooLargeError);
    expect(parseCharacterCard(text, { maxCardJsonBytes: 4 * 1024 * 1024 }).description).toHaveLength(2 * 1024 * 1024);
  });

  it("refuses JSON nested deeper than the limit, whatever brackets hide in strings", () => {
    const deep = `{"name":"x","description":"y","z":${"[".repeat(200)}${"]".repeat(200)}}`;
    expect(() => parseCharacterCard(deep)).toThrow(/nested 201 levels/);
    const shallow = { name: "x", description: "[[[[{{{{".repeat(100) + '\\"' };
    expect(parseCharacterCard(shallow).description).toBe(shallow.description);
  });
});
