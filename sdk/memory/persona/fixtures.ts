/**
 * Test fixtures for persona/: cards of each version with everything a round trip could lose (lorebook,
 * extensions, unknown fields, non-ASCII text), and a PNG builder with its own CRC-32, independent of png.ts,
 * so that a bug in the reader cannot be hidden by the same bug in the writer.
 */
import { deflateSync } from "node:zlib";
export { prng as seededRandom } from "../../../test/helpers/prng.js";

/** A V1 card: flat fields, plus fields some V1 tools add. */
export function v1Card(): Record<string, unknown> {
  return {
    name: "Old Tom",
    description: "{{char}} is a lighthouse keeper who talks to gulls.",
    personality: "gruff, kind",
    scenario: "A storm is coming to the island.",
    first_mes: "Who goes there?",
    mes_example: "<START>\n{{user}}: Hello?\n{{char}}: Mind the steps.",
    avatar: "none",
    talkativeness: "0.5",
  };
}

/** A complete V2 card with a lorebook, extensions, unknown fields everywhere, and non-ASCII text. */
export function v2Card(): Record<string, unknown> {
  return {
    spec: "chara_card_v2",
    spec_version: "2.0",
    x_top_level: { kept: [1, 2, { deep: true }] },
    data: {
      name: "Zoë 🌸",
      description: "{{char}} is a botanist from Kyōto who answers {{user}} in haiku. 日本語も話す。",
      personality: "patient, curious",
      scenario: "A greenhouse at dawn.",
      first_mes: "Good morning, {{user}}!",
      mes_example: "<START>\n{{user}}: What is this?\n{{char}}: A moss, older than us.\n<START>\n{{user}}: Tea?\n{{char}}: Matcha, always.",
      creator_notes: "Best with slow replies.",
      system_prompt: "You are {{char}}. {{original}}",
      post_history_instructions: "Stay in character as {{char}}.",
      alternate_greetings: ["Hi!", "¡Hola, {{user}}!"],
      character_book: {
        name: "Greenhouse lore",
        scan_depth: 3,
        token_budget: 500,
        recursive_scanning: false,
        extensions: { "x-book": { v: 1 } },
        x_book_unknown: "kept",
        entries: [
          {
            keys: ["moss", "Bryophyte"],
            content: "Zoë keeps 40 species of moss.",
            extensions: { depth: 4, "x-entry": [null, "ü"] },
            enabled: true,
            insertion_order: 10,
            case_sensitive: false,
            name: "Moss",
            priority: 5,
            id: 1,
            comment: "moss lore",
            selective: false,
            secondary_keys: [],
            constant: false,
            position: "before_char",
            x_entry_unknown: 42,
          },
          {
            keys: ["tea"],
            content: "{{char}} grows her own tea.",
            extensions: {},
            enabled: true,
            insertion_order: 5,
            name: "Tea",
            priority: 1,
            id: "tea-2",
            position: "after_char",
          },
        ],
      },
      tags: ["botany", "wholesome", "日本"],
      creator: "ana",
      character_version: "1.2",
      extensions: { talkativeness: "0.5", fav: false, world: "Greenhouse", depth_prompt: { prompt: "x", depth: 4 } },
      x_data_unknown: { nested: ["a", { b: 1.5 }] },
    },
  };
}

/** A complete V3 card: the V2 fields plus every V3 field, regex entries, decorators. */
export function v3Card(): Record<string, unknown> {
  const v2 = v2Card();
  const data = structuredClone(v2.data) as Record<string, unknown>;
  const book = data.character_book as Record<string, unknown>;
  const entries: Record<string, unknown>[] = (book.entries as Record<string, unknown>[]).map((e) => ({ ...e, use_regex: false }));
  entries.push({
    keys: ["/glas+house/i"],
    content: "@@depth 4\nThe glasshouse was built in 1901.",
    extensions: {},
    enabled: true,
    insertion_order: 1,
    use_regex: true,
    name: "Glasshouse",
    x_regex_unknown: true,
  });
  book.entries = entries;
  return {
    spec: "chara_card_v3",
    spec_version: "3.0",
    x_top_level_v3: "kept",
    data: {
      ...data,
      nickname: "Zo",
      creator_notes_multilingual: { en: "Best with slow replies.", fr: "Mieux avec des réponses lentes." },
      source: ["https://example.org/zoe"],
      group_only_greetings: ["Hello everyone!"],
      creation_date: 1_700_000_000,
      modification_date: 1_700_000_500,
      assets: [
        { type: "icon", uri: "ccdefault:", name: "main", ext: "png" },
        { type: "emotion", uri: "embeded://assets/happy.png", name: "happy", ext: "png", x_asset: 1 },
      ],
    },
  };
}

// -------------------------------------------------------------------------------------------------- PNG

const CRC_TABLE = (() => {
  const table = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    table[n] = c >>> 0;
  }
  return table;
})();

/** CRC-32 (ISO-HDLC), written out here rather than taken from zlib. */
export function testCrc32(bytes: Uint8Array): number {
  let c = 0xffffffff;
  for (const b of bytes) c = CRC_TABLE[(c ^ b) & 0xff]! ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

/** A chunk as bytes: length, type, data, CRC. */
export function chunk(type: string, data: Uint8Array): Uint8Array {
  const out = new Uint8Array(12 + data.length);
  const view = new DataView(out.buffer);
  view.setUint32(0, data.length);
  for (let i = 0; i < 4; i++) out[4 + i] = type.charCodeAt(i);
  out.set(data, 8);
  view.setUint32(8 + data.length, testCrc32(out.subarray(4, 8 + data.length)));
  return out;
}

export const SIGNATURE = Uint8Array.of(0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a);

/** A 2×2 greyscale PNG with `middle` chunks between IHDR and IDAT, a tIME chunk, and optional trailing bytes. */
export function buildPng(middle: Uint8Array[] = [], trailer: Uint8Array = new Uint8Array(0)): Uint8Array {
  const ihdr = new Uint8Array(13);
  const v = new DataView(ihdr.buffer);
  v.setUint32(0, 2);
  v.setUint32(4, 2);
  ihdr[8] = 8; // bit depth
  ihdr[9] = 0; // greyscale
  const pixels = Uint8Array.of(0, 10, 20, 0, 30, 40);
  const time = Uint8Array.of(0x07, 0xe8, 1, 2, 3, 4, 5);
  return concatBytes([SIGNATURE, chunk("IHDR", ihdr), chunk("tIME", time), ...middle, chunk("IDAT", new Uint8Array(deflateSync(pixels))), chunk("IEND", new Uint8Array(0)), trailer]);
}

/** A tEXt chunk (Latin-1 keyword and text). */
export function textChunk(keyword: string, text: string): Uint8Array {
  return chunk("tEXt", latin1Bytes(`${keyword}\0${text}`));
}

/** A zTXt chunk: keyword, method 0, deflated Latin-1 text. */
export function zTextChunk(keyword: string, text: string): Uint8Array {
  return chunk("zTXt", concatBytes([latin1Bytes(`${keyword}\0`), Uint8Array.of(0), new Uint8Array(deflateSync(latin1Bytes(text)))]));
}

/** An iTXt chunk: keyword, compression flag, method, language, translated keyword, UTF-8 text. */
export function iTextChunk(keyword: string, text: string, compressed: boolean): Uint8Array {
  const utf8 = new TextEncoder().encode(text);
  const body = compressed ? new Uint8Array(deflateSync(utf8)) : utf8;
  return chunk("iTXt", concatBytes([latin1Bytes(`${keyword}\0`), Uint8Array.of(compressed ? 1 : 0, 0), latin1Bytes("en\0\0"), body]));
}

export function base64Json(value: unknown): string {
  return Buffer.from(JSON.stringify(value), "utf8").toString("base64");
}

/** The chunks of a PNG as [type, whole-chunk bytes], read independently of png.ts. */
export function listChunks(png: Uint8Array): { type: string; bytes: Uint8Array; data: Uint8Array }[] {
  const out: { type: string; bytes: Uint8Array; data: Uint8Array }[] = [];
  const view = new DataView(png.buffer, png.byteOffset, png.byteLength);
  let at = 8;
  while (at + 12 <= png.length) {
    const length = view.getUint32(at);
    const type = String.fromCharCode(...png.subarray(at + 4, at + 8));
    out.push({ type, bytes: png.subarray(at, at + 12 + length), data: png.subarray(at + 8, at + 8 + length) });
    at += 12 + length;
    if (type === "IEND") break;
  }
  return out;
}

/** The keyword and text of a tEXt chunk's data. */
export function splitText(data: Uint8Array): { keyword: string; text: string } {
  const nul = data.indexOf(0);
  return { keyword: String.fromCharCode(...data.subarray(0, nul)), text: Buffer.from(data.subarray(nul + 1)).toString("latin1") };
}

export function latin1Bytes(s: string): Uint8Array {
  return Uint8Array.from(s, (c) => c.charCodeAt(0));
}

export function concatBytes(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

