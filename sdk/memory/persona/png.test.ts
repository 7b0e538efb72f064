import { deflateSync, inflateSync } from "node:zlib";
import { describe, expect, it } from "vitest";
import { exportCharacterCard, parseCharacterCard } from "./card.js";
import { CardChunkMissingError, CardDecodeError, CardTooLargeError, NotACharacterCardError, NotPngError, PngCrcError, PngTruncatedError } from "./errors.js";
import {
  base64Json,
  buildPng,
  chunk,
  concatBytes,
  iTextChunk,
  latin1Bytes,
  listChunks,
  SIGNATURE,
  splitText,
  testCrc32,
  textChunk,
  v1Card,
  v2Card,
  v3Card,
  zTextChunk,
} from "./fixtures.js";
import { encodeChunk, minimalPng, readPngChunks } from "./png.js";

function thrown(fn: () => unknown): Error {
  try {
    fn();
  } catch (err) {
    return err as Error;
  }
  throw new Error("expected a throw");
}

describe("PNG container", () => {
  it("encodes chunks with the standard CRC-32", () => {
    expect(testCrc32(latin1Bytes("IEND"))).toBe(0xae426082);
    expect(encodeChunk("IEND", new Uint8Array(0))).toEqual(chunk("IEND", new Uint8Array(0)));
    const data = latin1Bytes("chara\0abc");
    expect(encodeChunk("tEXt", data)).toEqual(chunk("tEXt", data));
  });

  it("makes a valid minimal 1×1 PNG", () => {
    const png = minimalPng();
    expect(png.subarray(0, 8)).toEqual(SIGNATURE);
    const chunks = listChunks(png);
    expect(chunks.map((c) => c.type)).toEqual(["IHDR", "IDAT", "IEND"]);
    const ihdr = new DataView(chunks[0]!.data.buffer, chunks[0]!.data.byteOffset, 13);
    expect([ihdr.getUint32(0), ihdr.getUint32(4), ihdr.getUint8(8), ihdr.getUint8(9)]).toEqual([1, 1, 8, 6]);
    // One scanline: filter byte + four RGBA bytes.
    expect(new Uint8Array(inflateSync(chunks[1]!.data))).toEqual(Uint8Array.of(0, 0, 0, 0, 0));
    for (const c of chunks) expect(new DataView(c.bytes.buffer, c.bytes.byteOffset).getUint32(c.bytes.length - 4)).toBe(testCrc32(c.bytes.subarray(4, c.bytes.length - 4)));
    expect(readPngChunks(png).trailer).toHaveLength(0);
  });
});

describe("parseCharacterCard: PNG", () => {
  it("reads a V2 card from a chara tEXt chunk", () => {
    const card = parseCharacterCard(buildPng([textChunk("chara", base64Json(v2Card()))]));
    expect(card).toEqual(parseCharacterCard(v2Card()));
  });

  it("prefers ccv3 over chara, in either order", () => {
    const v2 = { ...v2Card(), data: { ...(v2Card().data as object), name: "From chara" } };
    for (const order of [0, 1]) {
      const chunks = [textChunk("chara", base64Json(v2)), textChunk("ccv3", base64Json(v3Card()))];
      if (order === 1) chunks.reverse();
      const card = parseCharacterCard(buildPng(chunks));
      expect(card.spec).toBe("chara_card_v3");
      expect(card.name).toBe("Zoë 🌸");
    }
  });

  it("reads zTXt, iTXt (plain and compressed), a differently cased keyword, raw JSON text and V1 cards", () => {
    const expected = parseCharacterCard(v3Card());
    expect(parseCharacterCard(buildPng([zTextChunk("ccv3", base64Json(v3Card()))]))).toEqual(expected);
    expect(parseCharacterCard(buildPng([iTextChunk("ccv3", base64Json(v3Card()), false)]))).toEqual(expected);
    expect(parseCharacterCard(buildPng([iTextChunk("ccv3", base64Json(v3Card()), true)]))).toEqual(expected);
    expect(parseCharacterCard(buildPng([iTextChunk("ccv3", JSON.stringify(v3Card()), true)]))).toEqual(expected);
    expect(parseCharacterCard(buildPng([textChunk("Chara", base64Json(v2Card()))])).name).toBe("Zoë 🌸");
    // base64 split over lines, as some writers do
    const wrapped = base64Json(v2Card()).replace(/(.{76})/g, "$1\n");
    expect(parseCharacterCard(buildPng([textChunk("chara", wrapped)])).name).toBe("Zoë 🌸");
    expect(parseCharacterCard(buildPng([textChunk("chara", base64Json(v1Card()))])).name).toBe("Old Tom");
  });
});

describe("exportCharacterCard: PNG", () => {
  it("round trips V2 and V3 cards losslessly through a minimal PNG", () => {
    for (const make of [v2Card, v3Card]) {
      const card = parseCharacterCard(make());
      const png = exportCharacterCard(card, { format: "png" });
      const again = parseCharacterCard(png);
      expect(again).toEqual(card);
      expect(again.raw).toEqual(make());
      expect(parseCharacterCard(exportCharacterCard(again, { format: "png" }))).toEqual(card);
    }
  });

  it("writes a ccv3 chunk and a V2-compatible chara chunk for a V3 card, a chara chunk only for a V2 card", () => {
    const v3png = exportCharacterCard(parseCharacterCard(v3Card()), { format: "png" });
    const texts = listChunks(v3png).filter((c) => c.type === "tEXt").map((c) => splitText(c.data));
    expect(texts.map((t) => t.keyword)).toEqual(["chara", "ccv3"]);
    const chara = JSON.parse(Buffer.from(texts[0]!.text, "base64").toString("utf8"));
    expect(chara.spec).toBe("chara_card_v2");
    expect("assets" in chara.data).toBe(false);
    expect(chara.data.character_book.entries).toHaveLength(3);
    const v2FromChara = parseCharacterCard(chara);
    expect(v2FromChara.name).toBe("Zoë 🌸");
    expect(JSON.parse(Buffer.from(texts[1]!.text, "base64").toString("utf8"))).toEqual(v3Card());

    const v2png = exportCharacterCard(parseCharacterCard(v2Card()), { format: "png" });
    expect(listChunks(v2png).filter((c) => c.type === "tEXt").map((c) => splitText(c.data).keyword)).toEqual(["chara"]);
  });

  it("replaces the card chunks of a given image and keeps every other chunk, and the trailer, byte for byte", () => {
    const comment = textChunk("Comment", "made by hand");
    const oldCard = textChunk("chara", base64Json(v1Card()));
    const oldV3 = zTextChunk("ccv3", base64Json(v3Card()));
    const trailer = latin1Bytes("trailing bytes");
    const image = buildPng([comment, oldCard, oldV3], trailer);
    const card = parseCharacterCard(v3Card());
    const edited = { ...card, name: "Replaced" };
    const out = exportCharacterCard(edited, { format: "png", image });
    const before = listChunks(image).filter((c) => !(c.bytes === oldCard || c.type === "zTXt"));
    const after = listChunks(out);
    const kept = after.filter((c) => !(c.type === "tEXt" && ["chara", "ccv3"].includes(splitText(c.data).keyword)));
    expect(kept.map((c) => Buffer.from(c.bytes).toString("hex"))).toEqual(
      before.filter((c) => !(c.type === "tEXt" && splitText(c.data).keyword === "chara")).map((c) => Buffer.from(c.bytes).toString("hex")),
    );
    expect(after.map((c) => c.type)).toEqual(["IHDR", "tIME", "tEXt", "IDAT", "tEXt", "tEXt", "IEND"]);
    expect(out.subarray(out.length - trailer.length)).toEqual(trailer);
    expect(parseCharacterCard(out).name).toBe("Replaced");
    // exporting again into the result does not pile up chunks
    const twice = exportCharacterCard(edited, { format: "png", image: out });
    expect(twice).toEqual(out);
  });

  it("drops a stale ccv3 chunk when writing a V2 card", () => {
    const image = buildPng([textChunk("ccv3", base64Json(v3Card()))]);
    const out = exportCharacterCard(parseCharacterCard(v2Card()), { format: "png", image });
    const card = parseCharacterCard(out);
    expect(card.spec).toBe("chara_card_v2");
    expect(listChunks(out).filter((c) => c.type === "tEXt").map((c) => splitText(c.data).keyword)).toEqual(["chara"]);
  });

  it("refuses to write into an image that is not a valid PNG", () => {
    const card = parseCharacterCard(v2Card());
    expect(() => exportCharacterCard(card, { format: "png", image: latin1Bytes("GIF89a") })).toThrow(NotPngError);
    const damaged = buildPng();
    damaged[20] = damaged[20]! ^ 1;
    expect(() => exportCharacterCard(card, { format: "png", image: damaged })).toThrow(PngCrcError);
  });
});

describe("parseCharacterCard: bad PNGs", () => {
  const good = (): Uint8Array => buildPng([textChunk("chara", base64Json(v2Card()))]);

  it("NotPngError: a bad signature, a first chunk other than IHDR, a chunk type that is not letters", () => {
    const sig = good();
    sig[1] = 0x51;
    expect(thrown(() => parseCharacterCard(sig))).toBeInstanceOf(NotPngError);
    const noIhdr = concatBytes([SIGNATURE, textChunk("chara", base64Json(v2Card())), chunk("IEND", new Uint8Array(0))]);
    expect((thrown(() => parseCharacterCard(noIhdr)) as NotPngError).problem).toBe("no-ihdr");
    const badType = concatBytes([SIGNATURE, chunk("IH1R", new Uint8Array(13))]);
    expect((thrown(() => parseCharacterCard(badType)) as NotPngError).problem).toBe("chunk-type");
    const hugeLength = concatBytes([SIGNATURE, Uint8Array.of(0x80, 0, 0, 0), latin1Bytes("IHDR")]);
    expect((thrown(() => parseCharacterCard(hugeLength)) as NotPngError).problem).toBe("chunk-length");
  });

  it("PngTruncatedError: cut inside a chunk, right after the signature, or before IEND", () => {
    const png = good();
    for (const cut of [8, 12, 20, 40, png.length - 20, png.length - 12, png.length - 1]) {
      const err = thrown(() => parseCharacterCard(png.subarray(0, cut)));
      expect(err, `cut at ${cut}`).toBeInstanceOf(PngTruncatedError);
      expect(err.name).toBe("PngTruncatedError");
    }
  });

  it("PngCrcError: any flipped bit in a chunk's type, data or CRC", () => {
    const png = good();
    const chunks = listChunks(png);
    let offset = 8;
    for (const c of chunks) {
      for (const at of [offset + 4, offset + 8, offset + c.bytes.length - 1]) {
        if (at === offset + 8 && c.data.length === 0) continue;
        const damaged = png.slice();
        damaged[at] = damaged[at]! ^ 0x04;
        const err = thrown(() => parseCharacterCard(damaged));
        // A flipped type letter may stop being a letter ("chunk-type") or change case (a CRC mismatch).
        expect(err instanceof PngCrcError || (err instanceof NotPngError && err.problem === "chunk-type"), `${c.type} byte ${at}: ${err.name}`).toBe(true);
      }
      offset += c.bytes.length;
    }
    const damaged = png.slice();
    // byte 42: the second data byte of tIME (signature 8 + IHDR 25 + tIME length and type 8)
    damaged[42] = damaged[42]! ^ 0x01;
    const err = thrown(() => parseCharacterCard(damaged)) as PngCrcError;
    expect(err).toBeInstanceOf(PngCrcError);
    expect(err.chunkType).toBe("tIME");
  });

  it("CardChunkMissingError: a plain image, listing the text chunks it has", () => {
    const err = thrown(() => parseCharacterCard(buildPng([textChunk("Comment", "hi"), textChunk("Software", "x")])));
    expect(err).toBeInstanceOf(CardChunkMissingError);
    expect((err as CardChunkMissingError).textKeywords).toEqual(["Comment", "Software"]);
    expect(thrown(() => parseCharacterCard(minimalPng()))).toBeInstanceOf(CardChunkMissingError);
  });

  it("CardDecodeError: bad base64, base64 of non-UTF-8, base64 of non-JSON, bad zlib, malformed text chunks", () => {
    const problem = (png: Uint8Array): string => (thrown(() => parseCharacterCard(png)) as CardDecodeError).problem;
    expect(problem(buildPng([textChunk("chara", "not*base64!")]))).toBe("base64");
    expect(problem(buildPng([textChunk("chara", "")]))).toBe("base64");
    expect(problem(buildPng([textChunk("chara", "QUJDR")]))).toBe("base64");
    expect(problem(buildPng([textChunk("chara", Buffer.from([0x7b, 0xff, 0x7d]).toString("base64"))]))).toBe("utf8");
    expect(problem(buildPng([textChunk("chara", Buffer.from("{broken").toString("base64"))]))).toBe("json");
    const badZlib = chunk("zTXt", concatBytes([latin1Bytes("ccv3\0"), Uint8Array.of(0), latin1Bytes("not zlib at all")]));
    expect(problem(buildPng([badZlib]))).toBe("zlib");
    const badMethod = chunk("zTXt", concatBytes([latin1Bytes("ccv3\0"), Uint8Array.of(1), new Uint8Array(deflateSync("x"))]));
    expect(problem(buildPng([badMethod]))).toBe("text-chunk");
    const shortITxt = chunk("iTXt", latin1Bytes("ccv3\0\0\0en"));
    expect(problem(buildPng([shortITxt]))).toBe("text-chunk");
    const badUtf8ITxt = chunk("iTXt", concatBytes([latin1Bytes("ccv3\0\0\0\0\0"), Uint8Array.of(0xc3, 0x28)]));
    expect(problem(buildPng([badUtf8ITxt]))).toBe("utf8");
  });

  it("NotACharacterCardError: a card chunk holding JSON that is not a card", () => {
    expect(thrown(() => parseCharacterCard(buildPng([textChunk("chara", base64Json({ hello: 1 }))])))).toBeInstanceOf(NotACharacterCardError);
    expect(thrown(() => parseCharacterCard(buildPng([textChunk("ccv3", base64Json([1, 2]))])))).toBeInstanceOf(NotACharacterCardError);
  });

  it("CardTooLargeError: an oversized PNG, an oversized card chunk, and a zlib bomb", () => {
    const png = good();
    const err = thrown(() => parseCharacterCard(png, { maxPngBytes: png.length - 1 })) as CardTooLargeError;
    expect(err).toBeInstanceOf(CardTooLargeError);
    expect(err.what).toBe("png");
    expect(parseCharacterCard(png, { maxPngBytes: png.length }).name).toBe("Zoë 🌸");
    expect((thrown(() => parseCharacterCard(png, { maxCardJsonBytes: 200 })) as CardTooLargeError).what).toBe("card-json");
    // 64 MiB of "A" deflates to about 64 KiB: it must be refused at the inflate limit, not allocated.
    const bomb = chunk("zTXt", concatBytes([latin1Bytes("chara\0"), Uint8Array.of(0), new Uint8Array(deflateSync(Buffer.alloc(64 * 1024 * 1024, 0x41)))]));
    const bombErr = thrown(() => parseCharacterCard(buildPng([bomb])));
    expect(bombErr).toBeInstanceOf(CardTooLargeError);
    const itxtBomb = chunk("iTXt", concatBytes([latin1Bytes("ccv3\0"), Uint8Array.of(1, 0), latin1Bytes("\0\0"), new Uint8Array(deflateSync(Buffer.alloc(8 * 1024 * 1024, 0x41)))]));
    expect(thrown(() => parseCharacterCard(buildPng([itxtBomb])))).toBeInstanceOf(CardTooLargeError);
  });
});
