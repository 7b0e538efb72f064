/**
 * The PNG container of character cards: a chunk reader that checks every CRC, the text chunks that carry a
 * card (keyword "chara" for V2, "ccv3" for V3; tEXt, zTXt or iTXt), and a writer that swaps the card chunks
 * of an image while copying every other chunk byte for byte. Written by hand so that a hostile file meets
 * the limits below before any allocation it asks for.
 */
import { crc32, deflateSync, inflateSync } from "node:zlib";
import { CardChunkMissingError, CardDecodeError, CardTooLargeError, NotPngError, PngCrcError, PngTruncatedError } from "./errors.js";

/** The eight bytes every PNG starts with. */
export const PNG_SIGNATURE: Uint8Array = Uint8Array.of(0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a);

/** Largest PNG accepted by default: a portrait card is well under this; a lorebook adds little. */
export const DEFAULT_MAX_PNG_BYTES = 16 * 1024 * 1024;

/** Text keywords of card chunks, in the order they are preferred when a file has both. */
export const CARD_KEYWORDS = ["ccv3", "chara"] as const;
export type CardKeyword = (typeof CARD_KEYWORDS)[number];

/** PNG's own maximum chunk length (2^31 − 1). */
const MAX_CHUNK_LENGTH = 0x7fff_ffff;
const TEXT_CHUNK_TYPES: ReadonlySet<string> = new Set(["tEXt", "zTXt", "iTXt"]);

/** One chunk as it lies in the file. */
export interface PngChunk {
  /** Four ASCII letters, e.g. "IHDR", "tEXt". */
  type: string;
  /** Byte offset of the chunk's length field in the file. */
  offset: number;
  /** The chunk's data (a view into the file). */
  data: Uint8Array;
  /** The whole chunk — length, type, data and CRC — as in the file, for copying unchanged. */
  bytes: Uint8Array;
}

/** A parsed PNG: its chunks up to and including IEND, and whatever bytes followed IEND. */
export interface PngFile {
  chunks: PngChunk[];
  /** Bytes after IEND (some tools append data there); kept so that a rewrite changes nothing else. */
  trailer: Uint8Array;
}

/**
 * Whether `bytes` starts with the PNG signature.
 *
 * @example
 * isPng(readFileSync("card.png")) // true
 */
export function isPng(bytes: Uint8Array): boolean {
  if (bytes.length < PNG_SIGNATURE.length) return false;
  return PNG_SIGNATURE.every((b, i) => bytes[i] === b);
}

/**
 * Splits a PNG into chunks, checking the signature, each chunk's bounds and CRC, that IHDR comes first and
 * that IEND is present. Throws NotPngError, PngTruncatedError, PngCrcError or CardTooLargeError.
 *
 * @example
 * const { chunks } = readPngChunks(bytes)
 * chunks.map((c) => c.type) // ["IHDR", "tEXt", "IDAT", "IEND"]
 */
export function readPngChunks(bytes: Uint8Array, options: { maxBytes?: number } = {}): PngFile {
  const maxBytes = options.maxBytes ?? DEFAULT_MAX_PNG_BYTES;
  if (bytes.length > maxBytes) throw new CardTooLargeError("png", bytes.length, maxBytes);
  if (!isPng(bytes)) throw new NotPngError("signature", "the file does not start with the PNG signature");
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const chunks: PngChunk[] = [];
  let offset = PNG_SIGNATURE.length;
  for (;;) {
    if (offset + 8 > bytes.length) {
      throw new PngTruncatedError(offset, chunks.length === 0 ? "no IHDR chunk" : "the file ends before the IEND chunk");
    }
    const length = view.getUint32(offset);
    const typeBytes = bytes.subarray(offset + 4, offset + 8);
    const type = chunkTypeName(typeBytes, offset);
    if (length > MAX_CHUNK_LENGTH) throw new NotPngError("chunk-length", `chunk ${type} at byte ${offset} declares ${length} bytes`);
    const end = offset + 12 + length;
    if (end > bytes.length) {
      throw new PngTruncatedError(offset, `chunk ${type} declares ${length} bytes but only ${Math.max(0, bytes.length - offset - 12)} follow`);
    }
    const data = bytes.subarray(offset + 8, offset + 8 + length);
    const stored = view.getUint32(offset + 8 + length);
    const computed = crc32(data, crc32(typeBytes));
    if (stored !== computed) throw new PngCrcError(type, offset, computed, stored);
    if (chunks.length === 0 && type !== "IHDR") throw new NotPngError("no-ihdr", `the first chunk is ${type}, not IHDR`);
    chunks.push({ type, offset, data, bytes: bytes.subarray(offset, end) });
    offset = end;
    if (type === "IEND") return { chunks, trailer: bytes.subarray(offset) };
  }
}

/** A text chunk's keyword and its text, decompressed. */
export interface PngText {
  keyword: string;
  text: string;
}

/**
 * Finds the card text in a PNG: the first "ccv3" text chunk if there is one, else the first "chara" one
 * (keywords compared without case, as card tools write both spellings). Throws CardChunkMissingError when
 * neither is present, and the errors of readPngChunks.
 *
 * @example
 * findCardText(bytes) // { keyword: "ccv3", text: "eyJzcGVjIjoiY2hhcmFfY2FyZF92MyIs…" }
 */
export function findCardText(bytes: Uint8Array, options: { maxBytes?: number; maxTextBytes?: number } = {}): { keyword: CardKeyword; text: string } {
  const { chunks } = readPngChunks(bytes, options.maxBytes === undefined ? {} : { maxBytes: options.maxBytes });
  const found = new Map<CardKeyword, PngChunk>();
  const keywords: string[] = [];
  for (const chunk of chunks) {
    if (!TEXT_CHUNK_TYPES.has(chunk.type)) continue;
    const keyword = textKeyword(chunk);
    keywords.push(keyword);
    const card = cardKeyword(keyword);
    if (card !== undefined && !found.has(card)) found.set(card, chunk);
  }
  for (const keyword of CARD_KEYWORDS) {
    const chunk = found.get(keyword);
    if (chunk !== undefined) return { keyword, text: readTextChunk(chunk, options.maxTextBytes ?? Number.MAX_SAFE_INTEGER).text };
  }
  throw new CardChunkMissingError(keywords);
}

/**
 * Decodes a tEXt (Latin-1), zTXt (Latin-1, deflated) or iTXt (UTF-8, maybe deflated) chunk. Inflated text
 * is capped at `maxTextBytes`: a few kilobytes of zlib can claim gigabytes.
 *
 * @example
 * readTextChunk(chunk, 1 << 20) // { keyword: "chara", text: "eyJ…" }
 */
export function readTextChunk(chunk: PngChunk, maxTextBytes: number): PngText {
  const data = chunk.data;
  const nul = data.indexOf(0);
  if (nul < 1 || nul > 79) throw new CardDecodeError("text-chunk", `${chunk.type} chunk at byte ${chunk.offset} has no valid keyword`);
  const keyword = latin1(data.subarray(0, nul));
  const rest = data.subarray(nul + 1);
  switch (chunk.type) {
    case "tEXt":
      return { keyword, text: latin1(capped(rest, maxTextBytes)) };
    case "zTXt":
      if (rest[0] !== 0) throw new CardDecodeError("text-chunk", `zTXt chunk "${keyword}" uses unknown compression method ${rest[0]}`);
      return { keyword, text: latin1(inflate(rest.subarray(1), maxTextBytes)) };
    case "iTXt":
      return { keyword, text: readInternationalText(keyword, rest, maxTextBytes) };
    default:
      throw new CardDecodeError("text-chunk", `${chunk.type} is not a text chunk`);
  }
}

/**
 * Writes text chunks into a PNG: every existing text chunk whose keyword is one of `replace` goes, the new
 * tEXt chunks go just before IEND, and every other chunk (and any bytes after IEND) is kept byte for byte.
 * Without an image, a minimal valid 1×1 transparent PNG is used.
 *
 * @example
 * writeTextChunks(undefined, [{ keyword: "chara", text: base64 }], ["chara", "ccv3"])
 */
export function writeTextChunks(
  image: Uint8Array | undefined,
  texts: readonly PngText[],
  replace: readonly string[],
  options: { maxBytes?: number } = {},
): Uint8Array {
  const png = readPngChunks(image ?? minimalPng(), options);
  const drop = new Set(replace.map((k) => k.toLowerCase()));
  const kept = png.chunks.filter((c) => !(TEXT_CHUNK_TYPES.has(c.type) && drop.has(textKeyword(c).toLowerCase())));
  const added = texts.map((t) => encodeChunk("tEXt", textChunkData(t)));
  const parts: Uint8Array[] = [PNG_SIGNATURE];
  for (const chunk of kept) {
    if (chunk.type === "IEND") parts.push(...added);
    parts.push(chunk.bytes);
  }
  parts.push(png.trailer);
  return concat(parts);
}

/**
 * A fresh minimal valid PNG: one transparent RGBA pixel (IHDR, IDAT, IEND).
 *
 * @example
 * isPng(minimalPng()) // true
 */
export function minimalPng(): Uint8Array {
  const ihdr = new Uint8Array(13);
  const view = new DataView(ihdr.buffer);
  view.setUint32(0, 1); // width
  view.setUint32(4, 1); // height
  ihdr[8] = 8; // bit depth
  ihdr[9] = 6; // colour type: RGBA
  // compression, filter and interlace methods stay 0
  const scanline = Uint8Array.of(0, 0, 0, 0, 0); // filter byte "none", then one transparent pixel
  return concat([PNG_SIGNATURE, encodeChunk("IHDR", ihdr), encodeChunk("IDAT", new Uint8Array(deflateSync(scanline))), encodeChunk("IEND", new Uint8Array(0))]);
}

/**
 * One chunk as bytes: length, type, data, CRC-32 of type and data.
 *
 * @example
 * encodeChunk("IEND", new Uint8Array(0)) // 12 bytes ending in ae 42 60 82
 */
export function encodeChunk(type: string, data: Uint8Array): Uint8Array {
  const typeBytes = new TextEncoder().encode(type);
  const out = new Uint8Array(12 + data.length);
  const view = new DataView(out.buffer);
  view.setUint32(0, data.length);
  out.set(typeBytes, 4);
  out.set(data, 8);
  view.setUint32(8 + data.length, crc32(data, crc32(typeBytes)));
  return out;
}

function textChunkData({ keyword, text }: PngText): Uint8Array {
  // tEXt is Latin-1: a caller must pass ASCII (base64) or Latin-1 text, never arbitrary Unicode.
  const out = new Uint8Array(keyword.length + 1 + text.length);
  for (let i = 0; i < keyword.length; i++) out[i] = latin1Code(keyword, i);
  for (let i = 0; i < text.length; i++) out[keyword.length + 1 + i] = latin1Code(text, i);
  return out;
}

function latin1Code(s: string, i: number): number {
  const code = s.charCodeAt(i);
  if (code > 0xff) throw new RangeError(`tEXt chunks hold Latin-1 only; character ${i} is U+${code.toString(16)}`);
  return code;
}

function readInternationalText(keyword: string, rest: Uint8Array, maxTextBytes: number): string {
  // iTXt after the keyword: compression flag, compression method, language tag \0, translated keyword \0, text.
  const compressed = rest[0];
  const method = rest[1];
  const langEnd = rest.indexOf(0, 2);
  const transEnd = langEnd < 0 ? -1 : rest.indexOf(0, langEnd + 1);
  if (compressed === undefined || method === undefined || transEnd < 0) {
    throw new CardDecodeError("text-chunk", `iTXt chunk "${keyword}" is malformed`);
  }
  const body = rest.subarray(transEnd + 1);
  let raw: Uint8Array;
  if (compressed === 0) raw = capped(body, maxTextBytes);
  else if (compressed === 1 && method === 0) raw = inflate(body, maxTextBytes);
  else throw new CardDecodeError("text-chunk", `iTXt chunk "${keyword}" uses unknown compression ${compressed}/${method}`);
  try {
    return new TextDecoder("utf-8", { fatal: true }).decode(raw);
  } catch (err) {
    throw new CardDecodeError("utf8", `iTXt chunk "${keyword}" is not UTF-8`, { cause: err });
  }
}

function inflate(data: Uint8Array, maxTextBytes: number): Uint8Array {
  try {
    return new Uint8Array(inflateSync(data, { maxOutputLength: Math.min(maxTextBytes + 1, 0x7fff_ffff) }));
  } catch (err) {
    if (err instanceof RangeError) throw new CardTooLargeError("card-json", maxTextBytes + 1, maxTextBytes);
    throw new CardDecodeError("zlib", (err as Error).message, { cause: err });
  }
}

function capped(bytes: Uint8Array, maxTextBytes: number): Uint8Array {
  if (bytes.length > maxTextBytes) throw new CardTooLargeError("card-json", bytes.length, maxTextBytes);
  return bytes;
}

function textKeyword(chunk: PngChunk): string {
  const nul = chunk.data.indexOf(0);
  return latin1(chunk.data.subarray(0, nul < 0 ? Math.min(chunk.data.length, 79) : nul));
}

function cardKeyword(keyword: string): CardKeyword | undefined {
  const lower = keyword.toLowerCase();
  return CARD_KEYWORDS.find((k) => k === lower);
}

function chunkTypeName(typeBytes: Uint8Array, offset: number): string {
  for (const b of typeBytes) {
    const letter = (b >= 0x41 && b <= 0x5a) || (b >= 0x61 && b <= 0x7a);
    if (!letter) throw new NotPngError("chunk-type", `the chunk at byte ${offset} has a type that is not four ASCII letters`);
  }
  return String.fromCharCode(...typeBytes);
}

function latin1(bytes: Uint8Array): string {
  // Not TextDecoder("latin1"): the Encoding Standard maps that label to windows-1252, which differs at 0x80–0x9f.
  let out = "";
  for (let i = 0; i < bytes.length; i += 8192) out += String.fromCharCode(...bytes.subarray(i, i + 8192));
  return out;
}

function concat(parts: readonly Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}
