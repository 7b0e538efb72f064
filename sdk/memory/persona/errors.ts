import { SoulmeshError } from "../../errors.js";

/**
 * Why bytes are not a PNG this reader accepts: the eight-byte signature is missing, a chunk type is not
 * four ASCII letters, a chunk declares a length above 2^31 − 1 (the PNG maximum), or the first chunk is not
 * IHDR.
 */
export type PngProblem = "signature" | "chunk-type" | "chunk-length" | "no-ihdr";

/** Bytes that are not a PNG image (nor a card JSON, where both were possible). Nothing was decoded. */
export class NotPngError extends SoulmeshError {
  override readonly name = "NotPngError";
  constructor(
    readonly problem: PngProblem,
    readonly detail: string,
  ) {
    super(`Not a PNG image (${problem}): ${detail}. Pass the card's PNG file as saved, or its JSON.`);
  }
}

/** A PNG that ends inside a chunk, or before its IEND chunk: the file was cut short in transfer. */
export class PngTruncatedError extends SoulmeshError {
  override readonly name = "PngTruncatedError";
  constructor(
    /** Byte offset of the chunk (or of the end of the file) where the data ran out. */
    readonly offset: number,
    readonly detail: string,
  ) {
    super(`Truncated PNG at byte ${offset}: ${detail}. Download or copy the file again.`);
  }
}

/** A PNG chunk whose CRC-32 does not match its type and data: the file was altered or damaged. */
export class PngCrcError extends SoulmeshError {
  override readonly name = "PngCrcError";
  constructor(
    readonly chunkType: string,
    readonly offset: number,
    readonly expected: number,
    readonly actual: number,
  ) {
    super(
      `Damaged PNG: chunk ${chunkType} at byte ${offset} has CRC ${hex(actual)} but its bytes give ${hex(expected)}. ` +
        `Download or copy the file again.`,
    );
  }
}

/** A valid PNG that carries no character card: no text chunk with keyword "chara" or "ccv3". */
export class CardChunkMissingError extends SoulmeshError {
  override readonly name = "CardChunkMissingError";
  constructor(readonly textKeywords: string[]) {
    const seen = textKeywords.length > 0 ? ` (text chunks found: ${textKeywords.join(", ")})` : "";
    super(
      `The PNG holds no character card: no "chara" or "ccv3" text chunk${seen}. ` +
        `It is a plain image; export the card again from the app that made it.`,
    );
  }
}

/** Which layer of a card's encoding could not be decoded. */
export type CardDecodeProblem = "base64" | "utf8" | "json" | "zlib" | "text-chunk";

/** A card chunk or card text whose encoding is broken: bad base64, bytes not UTF-8, not JSON, bad zlib data. */
export class CardDecodeError extends SoulmeshError {
  override readonly name = "CardDecodeError";
  constructor(
    readonly problem: CardDecodeProblem,
    readonly detail: string,
    options?: ErrorOptions,
  ) {
    super(`Cannot decode the character card (${problem}): ${detail}. Export the card again from the app that made it.`, options);
  }
}

/** JSON that decodes but is not a Character Card V1, V2 or V3; `issues` says what is wrong, briefly. */
export class NotACharacterCardError extends SoulmeshError {
  override readonly name = "NotACharacterCardError";
  constructor(
    detail: string,
    readonly issues: string[] = [],
  ) {
    const listed = issues.length > 0 ? ` (${issues.slice(0, 5).join("; ")}${issues.length > 5 ? "; …" : ""})` : "";
    super(`Not a character card: ${detail}${listed}. Pass a Character Card V1, V2 or V3 (JSON or PNG).`);
  }
}

/** Input above the size limit, refused before it is decoded further. */
export class CardTooLargeError extends SoulmeshError {
  override readonly name = "CardTooLargeError";
  constructor(
    readonly what: "png" | "card-json",
    readonly size: number,
    readonly limit: number,
  ) {
    const label = what === "png" ? "PNG file" : "card JSON";
    super(
      `The ${label} is ${size} bytes, above the limit of ${limit} bytes. ` +
        `Shrink the card (its lorebook or embedded assets), or raise the limit in the parse options if you trust the source.`,
    );
  }
}

function hex(n: number): string {
  return `0x${n.toString(16).padStart(8, "0")}`;
}
