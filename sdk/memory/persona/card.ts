/**
 * Character Cards (V1, V2 "chara_card_v2", V3 "chara_card_v3"): import from JSON or PNG into one typed
 * shape, and export back without losing what this code does not understand.
 *
 * Lossless export works by overlay: every typed object (card, character book, book entry) keeps the JSON it
 * was read from in `raw`; export starts from that JSON and writes a known field only where the typed value
 * differs from it (or the field is required by the target spec and missing). Unknown fields, `extensions`,
 * key order and even non-canonical spellings of untouched fields (a `null` optional field) survive.
 */
import { z } from "zod";
import { CardDecodeError, CardTooLargeError, NotACharacterCardError, NotPngError } from "./errors.js";
import { findCardText, isPng, writeTextChunks, DEFAULT_MAX_PNG_BYTES, type PngText } from "./png.js";

/** Largest card JSON accepted by default (decoded bytes). Real cards with big lorebooks are a few hundred KiB. */
export const DEFAULT_MAX_CARD_JSON_BYTES = 1024 * 1024;

/** Deepest JSON nesting accepted: cards are shallow, and a deep array would only exhaust the stack later. */
export const MAX_CARD_JSON_DEPTH = 128;

export type CardSpec = "chara_card_v2" | "chara_card_v3";
export type JsonObject = { [key: string]: unknown };

/** One lorebook entry: inserted into the prompt when one of its keys appears in the recent messages. */
export interface CharacterBookEntry {
  keys: string[];
  content: string;
  extensions: JsonObject;
  enabled: boolean;
  /** Lower is placed earlier among the inserted entries. */
  insertionOrder: number;
  caseSensitive?: boolean;
  /** V3: keys are regular expressions ("/pattern/flags" or a bare pattern). */
  useRegex?: boolean;
  /** Always inserted (when enabled), whatever the messages say. */
  constant?: boolean;
  name?: string;
  /** When the budget is short, lower priority is dropped first. */
  priority?: number;
  id?: number | string;
  comment?: string;
  /** Requires a key from `keys` AND one from `secondaryKeys`. */
  selective?: boolean;
  secondaryKeys?: string[];
  /** "before_char" or "after_char" (the character's description); other values are kept but read as "before_char". */
  position?: string;
  /** The entry's JSON as read (unknown fields included); export overlays the fields above onto it. */
  raw: JsonObject;
}

/** A card's lorebook ("character_book"). */
export interface CharacterBook {
  name?: string;
  description?: string;
  /** How many recent messages are scanned for keys. */
  scanDepth?: number;
  /** Tokens the inserted entries may use together. */
  tokenBudget?: number;
  /** Whether inserted entries' text is scanned for further keys. */
  recursiveScanning?: boolean;
  extensions: JsonObject;
  entries: CharacterBookEntry[];
  /** The book's JSON as read; see CharacterBookEntry.raw. */
  raw: JsonObject;
}

/** A V3 asset (icon, background, emotion…); unknown fields are kept. */
export interface CardAsset {
  type: string;
  uri: string;
  name: string;
  ext: string;
  [key: string]: unknown;
}

/** A character card of any version, as one typed shape (V1 cards are read as V2). */
export interface CharacterCard {
  spec: CardSpec;
  name: string;
  description: string;
  personality: string;
  scenario: string;
  firstMessage: string;
  exampleDialogue: string;
  systemPrompt: string;
  postHistoryInstructions: string;
  alternateGreetings: string[];
  tags: string[];
  creator: string;
  creatorNotes: string;
  characterVersion: string;
  extensions: JsonObject;
  characterBook?: CharacterBook;
  /** V3: replaces the name in {{char}}. */
  nickname?: string;
  /** V3: creator notes by ISO 639-1 language code. */
  creatorNotesMultilingual?: Record<string, string>;
  /** V3: where the card came from (URLs, ids). */
  source?: string[];
  /** V3: greetings used only in group chats. */
  groupOnlyGreetings: string[];
  /** V3: Unix seconds. */
  creationDate?: number;
  /** V3: Unix seconds. */
  modificationDate?: number;
  /** V3: icons, backgrounds, emotions… */
  assets?: CardAsset[];
  /** The whole original JSON, for lossless export. */
  raw: JsonObject;
}

/** Limits for parsing; defaults are DEFAULT_MAX_PNG_BYTES and DEFAULT_MAX_CARD_JSON_BYTES. */
export interface ParseCardOptions {
  maxPngBytes?: number;
  maxCardJsonBytes?: number;
}

/** Export as card JSON (compact unless `indent`), in the card's own spec unless `spec` says otherwise. */
export interface JsonExportOptions {
  format: "json";
  spec?: CardSpec;
  indent?: number;
}

/**
 * Export into a PNG: `image` (its card chunks replaced, every other chunk kept byte for byte) or a minimal
 * 1×1 PNG. A V3 card gets a "ccv3" chunk and a V2-compatible "chara" chunk; a V2 card a "chara" chunk only.
 */
export interface PngExportOptions {
  format: "png";
  image?: Uint8Array;
  spec?: CardSpec;
  /** Largest `image` accepted; default DEFAULT_MAX_PNG_BYTES. */
  maxPngBytes?: number;
}

// --------------------------------------------------------------------------------------------- field tables

type Version = "v2" | "v3";

/** One known JSON field and the typed property it maps to. */
interface Field {
  key: string;
  prop: string;
  schema: z.ZodType;
  /** Value of the typed property when the JSON lacks the field (typed property is then never undefined). */
  fallback?: () => unknown;
  /** Specs in which the field must be present on export. */
  requiredIn: readonly Version[];
  /** Defined by V3 only: read leniently from V2 cards, removed when a V3 card is exported as V2. */
  v3Only?: boolean;
  nested?: "book" | "entries";
  /** What export writes for a required field the typed object leaves undefined and that has no fallback. */
  exportDefault?: unknown;
}

const text = z.string().nullish();
const textList = z.array(z.string()).nullish();
const jsonObject = z.record(z.string(), z.unknown()).nullish();
const finite = z.number().nullish();
const flag = z.boolean().nullish();
const BOTH: readonly Version[] = ["v2", "v3"];
const V3: readonly Version[] = ["v3"];
const NONE: readonly Version[] = [];

const ENTRY_FIELDS: readonly Field[] = [
  { key: "keys", prop: "keys", schema: textList, fallback: () => [], requiredIn: BOTH },
  { key: "content", prop: "content", schema: text, fallback: () => "", requiredIn: BOTH },
  { key: "extensions", prop: "extensions", schema: jsonObject, fallback: () => ({}), requiredIn: BOTH },
  { key: "enabled", prop: "enabled", schema: flag, fallback: () => true, requiredIn: BOTH },
  { key: "insertion_order", prop: "insertionOrder", schema: finite, fallback: () => 0, requiredIn: BOTH },
  { key: "case_sensitive", prop: "caseSensitive", schema: flag, requiredIn: NONE },
  { key: "use_regex", prop: "useRegex", schema: flag, requiredIn: V3, v3Only: true, exportDefault: false },
  { key: "constant", prop: "constant", schema: flag, requiredIn: NONE },
  { key: "name", prop: "name", schema: text, requiredIn: NONE },
  { key: "priority", prop: "priority", schema: finite, requiredIn: NONE },
  { key: "id", prop: "id", schema: z.union([z.number(), z.string()]).nullish(), requiredIn: NONE },
  { key: "comment", prop: "comment", schema: text, requiredIn: NONE },
  { key: "selective", prop: "selective", schema: flag, requiredIn: NONE },
  { key: "secondary_keys", prop: "secondaryKeys", schema: textList, requiredIn: NONE },
  { key: "position", prop: "position", schema: text, requiredIn: NONE },
];

const BOOK_FIELDS: readonly Field[] = [
  { key: "name", prop: "name", schema: text, requiredIn: NONE },
  { key: "description", prop: "description", schema: text, requiredIn: NONE },
  { key: "scan_depth", prop: "scanDepth", schema: z.number().min(0).nullish(), requiredIn: NONE },
  { key: "token_budget", prop: "tokenBudget", schema: z.number().min(0).nullish(), requiredIn: NONE },
  { key: "recursive_scanning", prop: "recursiveScanning", schema: flag, requiredIn: NONE },
  { key: "extensions", prop: "extensions", schema: jsonObject, fallback: () => ({}), requiredIn: BOTH },
  { key: "entries", prop: "entries", schema: z.array(z.record(z.string(), z.unknown())).nullish(), fallback: () => [], requiredIn: BOTH, nested: "entries" },
];

const ASSET = z.looseObject({ type: z.string(), uri: z.string(), name: z.string(), ext: z.string() });

const DATA_FIELDS: readonly Field[] = [
  { key: "name", prop: "name", schema: z.string(), fallback: () => "", requiredIn: BOTH },
  { key: "description", prop: "description", schema: text, fallback: () => "", requiredIn: BOTH },
  { key: "personality", prop: "personality", schema: text, fallback: () => "", requiredIn: BOTH },
  { key: "scenario", prop: "scenario", schema: text, fallback: () => "", requiredIn: BOTH },
  { key: "first_mes", prop: "firstMessage", schema: text, fallback: () => "", requiredIn: BOTH },
  { key: "mes_example", prop: "exampleDialogue", schema: text, fallback: () => "", requiredIn: BOTH },
  { key: "creator_notes", prop: "creatorNotes", schema: text, fallback: () => "", requiredIn: BOTH },
  { key: "system_prompt", prop: "systemPrompt", schema: text, fallback: () => "", requiredIn: BOTH },
  { key: "post_history_instructions", prop: "postHistoryInstructions", schema: text, fallback: () => "", requiredIn: BOTH },
  { key: "alternate_greetings", prop: "alternateGreetings", schema: textList, fallback: () => [], requiredIn: BOTH },
  { key: "character_book", prop: "characterBook", schema: z.record(z.string(), z.unknown()).nullish(), requiredIn: NONE, nested: "book" },
  { key: "tags", prop: "tags", schema: textList, fallback: () => [], requiredIn: BOTH },
  { key: "creator", prop: "creator", schema: text, fallback: () => "", requiredIn: BOTH },
  { key: "character_version", prop: "characterVersion", schema: text, fallback: () => "", requiredIn: BOTH },
  { key: "extensions", prop: "extensions", schema: jsonObject, fallback: () => ({}), requiredIn: BOTH },
  { key: "nickname", prop: "nickname", schema: text, requiredIn: NONE, v3Only: true },
  { key: "creator_notes_multilingual", prop: "creatorNotesMultilingual", schema: z.record(z.string(), z.string()).nullish(), requiredIn: NONE, v3Only: true },
  { key: "source", prop: "source", schema: textList, requiredIn: NONE, v3Only: true },
  { key: "group_only_greetings", prop: "groupOnlyGreetings", schema: textList, fallback: () => [], requiredIn: V3, v3Only: true },
  { key: "creation_date", prop: "creationDate", schema: finite, requiredIn: NONE, v3Only: true },
  { key: "modification_date", prop: "modificationDate", schema: finite, requiredIn: NONE, v3Only: true },
  { key: "assets", prop: "assets", schema: z.array(ASSET).nullish(), requiredIn: NONE, v3Only: true },
];

/** V1 fields, also mirrored at the top level of many V2 files for old readers. */
const V1_FIELDS: readonly Field[] = DATA_FIELDS.filter((f) => ["name", "description", "personality", "scenario", "first_mes", "mes_example"].includes(f.key));

// ------------------------------------------------------------------------------------------------- import

/**
 * Reads a character card: V1, V2 or V3 JSON (text, UTF-8 bytes or a parsed object) or a PNG with the card
 * in a "ccv3" (preferred) or "chara" text chunk. V1 cards are read as V2. Throws NotPngError,
 * PngTruncatedError, PngCrcError, CardChunkMissingError, CardDecodeError, NotACharacterCardError or
 * CardTooLargeError.
 *
 * @example
 * const card = parseCharacterCard(readFileSync("seraphina.png"))
 * card.spec // "chara_card_v3"
 * card.characterBook?.entries.length // 4
 */
export function parseCharacterCard(input: Uint8Array | string | object, options: ParseCardOptions = {}): CharacterCard {
  const maxJson = options.maxCardJsonBytes ?? DEFAULT_MAX_CARD_JSON_BYTES;
  return cardFromJson(readCardJson(input, maxJson, options.maxPngBytes ?? DEFAULT_MAX_PNG_BYTES));
}

function readCardJson(input: Uint8Array | string | object, maxJson: number, maxPng: number): unknown {
  if (input instanceof Uint8Array) {
    if (isPng(input)) return readPngCard(input, maxJson, maxPng);
    if (!looksLikeJson(input)) throw new NotPngError("signature", "the bytes are neither a PNG nor card JSON");
    if (input.length > maxJson) throw new CardTooLargeError("card-json", input.length, maxJson);
    return parseJsonText(decodeUtf8(input), maxJson);
  }
  if (typeof input === "string") return parseJsonText(input, maxJson);
  // A caller's object: copied through JSON so the card never shares (or mutates) the caller's objects, and
  // so that what is kept in `raw` is exactly what export will write.
  let json: string;
  try {
    json = JSON.stringify(input);
  } catch (err) {
    throw new NotACharacterCardError(`the object cannot be written as JSON (${(err as Error).message})`);
  }
  if (json === undefined) throw new NotACharacterCardError("the value cannot be written as JSON");
  return parseJsonText(json, maxJson);
}

function readPngCard(bytes: Uint8Array, maxJson: number, maxPng: number): unknown {
  // base64 needs 4 characters per 3 bytes; a little slack for line breaks some writers add.
  const maxText = Math.ceil(maxJson / 3) * 4 + 4096;
  const { keyword, text: chunkText } = findCardText(bytes, { maxBytes: maxPng, maxTextBytes: maxText });
  const trimmed = chunkText.trim();
  // Some tools store the JSON itself rather than base64 of it; "{" is not a base64 character, so no ambiguity.
  if (trimmed.startsWith("{")) return parseJsonText(trimmed, maxJson);
  const compact = trimmed.replace(/\s+/g, "");
  if (!/^[A-Za-z0-9+/]*={0,2}$/.test(compact) || compact.length % 4 === 1 || compact.length === 0) {
    throw new CardDecodeError("base64", `the "${keyword}" chunk is not base64`);
  }
  const bytesOut = new Uint8Array(Buffer.from(compact, "base64"));
  if (bytesOut.length > maxJson) throw new CardTooLargeError("card-json", bytesOut.length, maxJson);
  return parseJsonText(decodeUtf8(bytesOut), maxJson);
}

function looksLikeJson(bytes: Uint8Array): boolean {
  let i = bytes[0] === 0xef && bytes[1] === 0xbb && bytes[2] === 0xbf ? 3 : 0;
  while (i < bytes.length && (bytes[i] === 0x20 || bytes[i] === 0x09 || bytes[i] === 0x0a || bytes[i] === 0x0d)) i++;
  return bytes[i] === 0x7b; // "{"
}

function decodeUtf8(bytes: Uint8Array): string {
  try {
    return new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch (err) {
    throw new CardDecodeError("utf8", "the card JSON is not valid UTF-8", { cause: err });
  }
}

function parseJsonText(json: string, maxJson: number): unknown {
  const size = Buffer.byteLength(json, "utf8");
  if (size > maxJson) throw new CardTooLargeError("card-json", size, maxJson);
  const depth = jsonDepth(json);
  if (depth > MAX_CARD_JSON_DEPTH) throw new CardDecodeError("json", `nested ${depth} levels deep (limit ${MAX_CARD_JSON_DEPTH})`);
  try {
    return JSON.parse(json.charCodeAt(0) === 0xfeff ? json.slice(1) : json);
  } catch (err) {
    throw new CardDecodeError("json", (err as Error).message, { cause: err });
  }
}

/** Deepest bracket nesting outside strings, in one pass: checked before JSON.parse builds anything. */
function jsonDepth(json: string): number {
  let depth = 0;
  let max = 0;
  let inString = false;
  for (let i = 0; i < json.length; i++) {
    const c = json.charCodeAt(i);
    if (inString) {
      if (c === 0x5c) i++; // backslash: skip the escaped character
      else if (c === 0x22) inString = false;
    } else if (c === 0x22) inString = true;
    else if (c === 0x7b || c === 0x5b) max = Math.max(max, ++depth);
    else if (c === 0x7d || c === 0x5d) depth--;
  }
  return max;
}

function cardFromJson(json: unknown): CharacterCard {
  if (!isObject(json)) throw new NotACharacterCardError(`the JSON is ${json === null ? "null" : Array.isArray(json) ? "an array" : `a ${typeof json}`}, not an object`);
  const spec = json.spec;
  if (spec === "chara_card_v3" || spec === "chara_card_v2") {
    if (!isObject(json.data)) throw new NotACharacterCardError(`a ${spec} card needs a "data" object`);
    return decodeCard(json, json.data, spec === "chara_card_v3" ? "chara_card_v3" : "chara_card_v2", "data");
  }
  if (spec !== undefined) throw new NotACharacterCardError(`unknown spec ${JSON.stringify(spec).slice(0, 40)}`);
  // No spec: a V2 card written without its header, or a V1 card (flat fields).
  if (isWrapped(json)) return decodeCard(json, json.data as JsonObject, "chara_card_v2", "data");
  const v1 = typeof json.name === "string" && V1_FIELDS.some((f) => f.key !== "name" && typeof json[f.key] === "string");
  if (v1) return decodeCard(json, json, "chara_card_v2", "");
  throw new NotACharacterCardError('no "spec" field and no V1 fields (name with description, personality, scenario, first_mes or mes_example)');
}

function decodeCard(raw: JsonObject, data: JsonObject, spec: CardSpec, path: string): CharacterCard {
  const issues: string[] = [];
  const version: Version = spec === "chara_card_v3" ? "v3" : "v2";
  // From a V1 card only the V1 fields are known; everything else at its top level is the caller's.
  const fields = path === "" ? V1_FIELDS : DATA_FIELDS;
  const typed = decodeObject(data, fields, version, path, issues);
  if (path === "") {
    for (const f of DATA_FIELDS) if (f.fallback !== undefined && typed[f.prop] === undefined) typed[f.prop] = f.fallback();
  }
  if (issues.length > 0) throw new NotACharacterCardError("fields of the wrong type", issues);
  return { ...(typed as Omit<CharacterCard, "spec" | "raw">), spec, raw };
}

function decodeObject(obj: JsonObject, fields: readonly Field[], version: Version, path: string, issues: string[]): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const f of fields) {
    const where = path === "" ? f.key : `${path}.${f.key}`;
    const result = f.schema.safeParse(obj[f.key]);
    let value: unknown;
    if (result.success) value = result.data ?? undefined;
    else if (f.v3Only && version === "v2") value = undefined; // a V2 card's own unknown field that happens to share a V3 name
    else issues.push(...result.error.issues.map((i) => `${[where, ...i.path].join(".")}: ${i.message}`));
    if (value !== undefined && f.nested === "book") value = decodeBook(value as JsonObject, version, where, issues);
    if (value !== undefined && f.nested === "entries") {
      value = (value as JsonObject[]).map((e, i) => decodeEntry(e, version, `${where}.${i}`, issues));
    }
    if (value === undefined && f.fallback !== undefined) value = f.fallback();
    if (value !== undefined) out[f.prop] = value;
  }
  return out;
}

function decodeBook(raw: JsonObject, version: Version, path: string, issues: string[]): CharacterBook {
  return { ...(decodeObject(raw, BOOK_FIELDS, version, path, issues) as Omit<CharacterBook, "raw">), raw };
}

function decodeEntry(raw: JsonObject, version: Version, path: string, issues: string[]): CharacterBookEntry {
  return { ...(decodeObject(raw, ENTRY_FIELDS, version, path, issues) as Omit<CharacterBookEntry, "raw">), raw };
}

// ------------------------------------------------------------------------------------------------- export

/**
 * Writes a card as JSON text or into a PNG. Fields this code does not know, `extensions` and the lorebook
 * come out as they came in; edits to the typed fields are written over them.
 *
 * @example
 * const json = exportCharacterCard(card, { format: "json" })
 * const png = exportCharacterCard(card, { format: "png", image: portrait })
 * deepEqual(parseCharacterCard(png), card) // true (for a card that came in complete)
 */
export function exportCharacterCard(card: CharacterCard, options: JsonExportOptions): string;
export function exportCharacterCard(card: CharacterCard, options: PngExportOptions): Uint8Array;
export function exportCharacterCard(card: CharacterCard, options: JsonExportOptions | PngExportOptions): string | Uint8Array;
export function exportCharacterCard(card: CharacterCard, options: JsonExportOptions | PngExportOptions): string | Uint8Array {
  const spec = options.spec ?? card.spec;
  if (options.format === "json") return JSON.stringify(cardToJson(card, spec), null, options.indent);
  const texts: PngText[] = [];
  if (spec === "chara_card_v3") {
    // V3 recommends both: "ccv3" for V3 readers, "chara" so V2-only readers still find a card.
    texts.push({ keyword: "chara", text: toBase64(JSON.stringify(cardToJson(card, "chara_card_v2"))) });
    texts.push({ keyword: "ccv3", text: toBase64(JSON.stringify(cardToJson(card, "chara_card_v3"))) });
  } else {
    texts.push({ keyword: "chara", text: toBase64(JSON.stringify(cardToJson(card, "chara_card_v2"))) });
  }
  return writeTextChunks(options.image, texts, ["chara", "ccv3"], { maxBytes: options.maxPngBytes ?? DEFAULT_MAX_PNG_BYTES });
}

/**
 * The card as a JSON object of the given spec (the card's own by default): its raw JSON with the typed
 * fields written over it. A V1 card keeps its flat fields at the top level, beside the new "data".
 *
 * @example
 * cardToJson(card, "chara_card_v2").spec_version // "2.0"
 */
export function cardToJson(card: CharacterCard, spec: CardSpec = card.spec): JsonObject {
  const version: Version = spec === "chara_card_v3" ? "v3" : "v2";
  const downgrade = version === "v2" && card.spec === "chara_card_v3";
  const raw = card.raw;
  const wrapped = isWrapped(raw);
  const out: JsonObject = { ...raw };
  out.spec = spec;
  out.spec_version = raw.spec === spec && raw.spec_version !== undefined ? raw.spec_version : version === "v3" ? "3.0" : "2.0";
  const card_ = card as unknown as Record<string, unknown>;
  out.data = overlay(wrapped ? (raw.data as JsonObject) : {}, DATA_FIELDS, card_, version, downgrade);
  // Keep the V1 mirror fields that old readers use in step with edits.
  for (const f of V1_FIELDS) {
    if (typeof out[f.key] === "string" && out[f.key] !== card_[f.prop]) out[f.key] = card_[f.prop];
  }
  return out;
}

function overlay(raw: JsonObject, fields: readonly Field[], typed: Record<string, unknown>, version: Version, downgrade: boolean): JsonObject {
  const out: JsonObject = { ...raw };
  for (const f of fields) {
    if (f.v3Only && version === "v2") {
      // Exporting a V3 card as V2: its V3 fields go (the ccv3 chunk keeps them). A V2 card's same-named
      // fields are its own unknown fields and stay.
      if (downgrade) delete out[f.key];
      continue;
    }
    let value = typed[f.prop];
    if (value === undefined && f.requiredIn.includes(version)) value = f.fallback !== undefined ? f.fallback() : f.exportDefault;
    const present = raw[f.key] !== undefined && raw[f.key] !== null;
    if (value === undefined) {
      // Removed by the caller; a raw null (this code's "absent") is left as it was.
      if (present) delete out[f.key];
    } else if (f.nested === "book") {
      const book = value as CharacterBook;
      out[f.key] = overlay(book.raw ?? {}, BOOK_FIELDS, book as unknown as Record<string, unknown>, version, downgrade);
    } else if (f.nested === "entries") {
      out[f.key] = (value as CharacterBookEntry[]).map((e) => overlay(e.raw ?? {}, ENTRY_FIELDS, e as unknown as Record<string, unknown>, version, downgrade));
    } else if (!(present && jsonEqual(raw[f.key], value))) {
      out[f.key] = structuredClone(value);
    }
  }
  return out;
}

/** Whether card JSON keeps its fields under "data" (V2, V3) rather than flat at the top level (V1). */
function isWrapped(json: JsonObject): boolean {
  if (json.spec === "chara_card_v2" || json.spec === "chara_card_v3") return true;
  return isObject(json.data) && typeof json.data.name === "string";
}

function toBase64(text: string): string {
  return Buffer.from(text, "utf8").toString("base64");
}

function isObject(value: unknown): value is JsonObject {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/**
 * Structural equality of JSON values (key order ignored).
 *
 * @example
 * jsonEqual({ a: [1, 2] }, { a: [1, 2] }) // true
 */
export function jsonEqual(a: unknown, b: unknown): boolean {
  if (a === b) return true;
  if (typeof a !== "object" || typeof b !== "object" || a === null || b === null) return false;
  if (Array.isArray(a) !== Array.isArray(b)) return false;
  if (Array.isArray(a)) {
    const bs = b as unknown[];
    return a.length === bs.length && a.every((x, i) => jsonEqual(x, bs[i]));
  }
  const ak = Object.keys(a);
  const bo = b as JsonObject;
  if (ak.length !== Object.keys(bo).length) return false;
  return ak.every((k) => Object.hasOwn(bo, k) && jsonEqual((a as JsonObject)[k], bo[k]));
}
