/**
 * A small GGUF v3 writer: enough of the format to write llama models and LoRA adapters with F32 tensors.
 *
 * Why it is product code: `soulmesh up` falls back to a generated tiny model (tiny-llama.ts) when no real model
 * can be downloaded, so a machine without network still gets a working local network; the same writer makes
 * the tests' and benchmarks' models (test/fixtures/gguf re-exports it). GGUF is simple enough to write by hand:
 * a header, typed metadata, tensor infos, then aligned tensor data. Tensor data is produced chunk by chunk and
 * streamed to disk, so a 400 MB F32 model never sits in memory at once. The bytes must not change without
 * bumping tiny-llama.ts's WRITER_VERSION (cached bench models and registered tiny-model hashes depend on them).
 *
 * Layout (all little-endian), after llama.cpp's `gguf.cpp` / `docs/gguf.md`:
 *   "GGUF" · u32 version=3 · u64 tensor count · u64 kv count
 *   kv*:          string key · u32 value type · value
 *   tensor info*: string name · u32 n_dims · u64 ne[n_dims] · u32 ggml type · u64 offset (into data section)
 *   padding to `general.alignment` (default 32)
 *   data section: each tensor's bytes at its offset, every offset a multiple of the alignment
 * A string is u64 byte length + UTF-8 bytes (no terminator); an array is u32 element type + u64 count + elements.
 */
import { createHash } from "node:crypto";
import { open, rename, rm } from "node:fs/promises";

/** GGUF metadata value type ids (gguf.h `enum gguf_type`). */
export const GgufType = {
  uint8: 0,
  int8: 1,
  uint16: 2,
  int16: 3,
  uint32: 4,
  int32: 5,
  float32: 6,
  bool: 7,
  string: 8,
  array: 9,
  uint64: 10,
  int64: 11,
  float64: 12,
} as const;

/** A scalar type name: every GGUF type except `array`. */
export type GgufScalarType = Exclude<keyof typeof GgufType, "array">;

/** The JavaScript value held by a scalar of the given type. 64-bit integers are bigint so no precision is lost. */
export type GgufScalarValue<T extends GgufScalarType> = T extends "uint64" | "int64"
  ? bigint
  : T extends "bool"
    ? boolean
    : T extends "string"
      ? string
      : number;

/** One typed metadata value. The type is explicit because JavaScript numbers don't say whether they're u32 or f32. */
export type GgufValue =
  | { [T in GgufScalarType]: { type: T; value: GgufScalarValue<T> } }[GgufScalarType]
  | { [T in GgufScalarType]: { type: "array"; itemType: T; value: readonly GgufScalarValue<T>[] } }[GgufScalarType];

/** Metadata in writing order. llama.cpp doesn't care about order, but a fixed order keeps files byte-identical. */
export type GgufMetadata = ReadonlyArray<readonly [key: string, value: GgufValue]>;

/** Shorthand constructors, so call sites read `["llama.block_count", u32(2)]`. */
export const u32 = (value: number): GgufValue => ({ type: "uint32", value });
export const i32 = (value: number): GgufValue => ({ type: "int32", value });
export const f32 = (value: number): GgufValue => ({ type: "float32", value });
export const str = (value: string): GgufValue => ({ type: "string", value });
export const bool = (value: boolean): GgufValue => ({ type: "bool", value });
export const arr = <T extends GgufScalarType>(itemType: T, value: readonly GgufScalarValue<T>[]): GgufValue =>
  ({ type: "array", itemType, value }) as GgufValue;

/** ggml tensor type ids (ggml.h `enum ggml_type`); the generated models only need F32. */
export const GgmlType = { F32: 0 } as const;

/**
 * A tensor to write. `dims` is in ggml `ne` order: dims[0] is the fastest-varying (row length), so a
 * matrix multiplying an n_in vector into n_out outputs has dims [n_in, n_out].
 */
export interface GgufTensor {
  name: string;
  dims: readonly number[];
  /**
   * Fills `out` with elements [start, start + out.length) of the tensor, in memory order. Called with
   * increasing `start`, so a sequential PRNG can simply continue where it left off.
   */
  fill(out: Float32Array, start: number): void;
}

/** What was written: the path and the SHA-256 of the file bytes as "0x" + lowercase hex. */
export interface GgufWriteResult {
  path: string;
  sha256: string;
  bytes: number;
}

export const GGUF_MAGIC = "GGUF";
export const GGUF_VERSION = 3;
export const DEFAULT_ALIGNMENT = 32;

/** Elements per generated chunk: 1 Mi floats = 4 MiB, big enough for fast writes and small enough to not matter. */
const CHUNK_ELEMENTS = 1 << 20;

/** Grows a byte buffer as values are appended. Used for the header, which is small (a few hundred KB at most). */
class ByteSink {
  private buf = Buffer.alloc(1 << 16);
  length = 0;

  private reserve(n: number): void {
    if (this.length + n <= this.buf.length) return;
    const next = Buffer.alloc(Math.max(this.buf.length * 2, this.length + n));
    this.buf.copy(next, 0, 0, this.length);
    this.buf = next;
  }

  u8(v: number): void { this.reserve(1); this.buf.writeUInt8(v, this.length); this.length += 1; }
  i8(v: number): void { this.reserve(1); this.buf.writeInt8(v, this.length); this.length += 1; }
  u16(v: number): void { this.reserve(2); this.buf.writeUInt16LE(v, this.length); this.length += 2; }
  i16(v: number): void { this.reserve(2); this.buf.writeInt16LE(v, this.length); this.length += 2; }
  u32(v: number): void { this.reserve(4); this.buf.writeUInt32LE(v, this.length); this.length += 4; }
  i32(v: number): void { this.reserve(4); this.buf.writeInt32LE(v, this.length); this.length += 4; }
  f32(v: number): void { this.reserve(4); this.buf.writeFloatLE(v, this.length); this.length += 4; }
  f64(v: number): void { this.reserve(8); this.buf.writeDoubleLE(v, this.length); this.length += 8; }
  u64(v: bigint | number): void { this.reserve(8); this.buf.writeBigUInt64LE(BigInt(v), this.length); this.length += 8; }
  i64(v: bigint): void { this.reserve(8); this.buf.writeBigInt64LE(v, this.length); this.length += 8; }

  /** GGUF string: u64 byte length then the UTF-8 bytes. */
  string(s: string): void {
    const bytes = Buffer.from(s, "utf8");
    this.u64(bytes.length);
    this.reserve(bytes.length);
    bytes.copy(this.buf, this.length);
    this.length += bytes.length;
  }

  zeros(n: number): void { this.reserve(n); this.buf.fill(0, this.length, this.length + n); this.length += n; }

  bytes(): Buffer { return this.buf.subarray(0, this.length); }
}

/** Rounds `n` up to a multiple of `alignment`. */
export function alignUp(n: number, alignment: number): number {
  return Math.ceil(n / alignment) * alignment;
}

/** Writes one scalar of `type` (no type tag: the caller writes that, since arrays tag once for all items). */
function writeScalar(sink: ByteSink, type: GgufScalarType, value: number | bigint | boolean | string): void {
  switch (type) {
    case "uint8": return sink.u8(value as number);
    case "int8": return sink.i8(value as number);
    case "uint16": return sink.u16(value as number);
    case "int16": return sink.i16(value as number);
    case "uint32": return sink.u32(value as number);
    case "int32": return sink.i32(value as number);
    case "float32": return sink.f32(value as number);
    case "float64": return sink.f64(value as number);
    case "uint64": return sink.u64(value as bigint);
    case "int64": return sink.i64(value as bigint);
    case "bool": return sink.u8(value ? 1 : 0);
    case "string": return sink.string(value as string);
  }
}

/** Writes a key/value pair: key string, u32 type, then the value (arrays: item type, u64 count, items). */
function writeKeyValue(sink: ByteSink, key: string, v: GgufValue): void {
  sink.string(key);
  if (v.type === "array") {
    sink.u32(GgufType.array);
    sink.u32(GgufType[v.itemType]);
    sink.u64(v.value.length);
    for (const item of v.value) writeScalar(sink, v.itemType, item);
  } else {
    sink.u32(GgufType[v.type]);
    writeScalar(sink, v.type, v.value);
  }
}

/** Number of elements in a tensor. */
export function elementCount(dims: readonly number[]): number {
  return dims.reduce((a, b) => a * b, 1);
}

/** The alignment the file will use: `general.alignment` when given (must be a u32 power of two), else 32. */
function alignmentOf(metadata: GgufMetadata): number {
  const entry = metadata.find(([key]) => key === "general.alignment");
  if (!entry) return DEFAULT_ALIGNMENT;
  const [, v] = entry;
  if (v.type !== "uint32" || v.value <= 0 || (v.value & (v.value - 1)) !== 0) {
    throw new Error("general.alignment must be a uint32 power of two");
  }
  return v.value;
}

/**
 * Serialises everything before the data section: header, metadata, tensor infos, padding.
 * Tensor offsets are laid out back to back, each rounded up to the alignment.
 */
export function encodeGgufHeader(metadata: GgufMetadata, tensors: readonly GgufTensor[]): Buffer {
  const alignment = alignmentOf(metadata);
  const sink = new ByteSink();
  sink.u8(0x47); sink.u8(0x47); sink.u8(0x55); sink.u8(0x46); // "GGUF"
  sink.u32(GGUF_VERSION);
  sink.u64(tensors.length);
  sink.u64(metadata.length);
  for (const [key, value] of metadata) writeKeyValue(sink, key, value);
  let offset = 0;
  for (const t of tensors) {
    sink.string(t.name);
    sink.u32(t.dims.length);
    for (const d of t.dims) sink.u64(d);
    sink.u32(GgmlType.F32);
    sink.u64(offset);
    offset = alignUp(offset + elementCount(t.dims) * 4, alignment);
  }
  sink.zeros(alignUp(sink.length, alignment) - sink.length);
  return Buffer.from(sink.bytes());
}

/**
 * Writes a GGUF file, streaming the tensor data in chunks and hashing as it goes.
 * The file is written under a temporary name and renamed into place, so a reader never sees half a file.
 */
export async function writeGguf(
  path: string,
  metadata: GgufMetadata,
  tensors: readonly GgufTensor[],
): Promise<GgufWriteResult> {
  const alignment = alignmentOf(metadata);
  const names = new Set<string>();
  for (const t of tensors) {
    if (names.has(t.name)) throw new Error(`duplicate tensor name ${t.name}`);
    names.add(t.name);
  }
  const tmp = `${path}.${process.pid}.${Math.random().toString(36).slice(2)}.tmp`;
  const hash = createHash("sha256");
  const file = await open(tmp, "w");
  let written = 0;
  const put = async (bytes: Uint8Array): Promise<void> => {
    hash.update(bytes);
    let done = 0;
    while (done < bytes.length) {
      const { bytesWritten } = await file.write(bytes, done, bytes.length - done);
      done += bytesWritten;
    }
    written += bytes.length;
  };
  try {
    await put(encodeGgufHeader(metadata, tensors));
    const chunk = new Float32Array(CHUNK_ELEMENTS);
    for (const t of tensors) {
      const total = elementCount(t.dims);
      for (let start = 0; start < total; start += CHUNK_ELEMENTS) {
        const part = chunk.subarray(0, Math.min(CHUNK_ELEMENTS, total - start));
        t.fill(part, start);
        // Float32Array is host-endian; every platform Node runs on here is little-endian, as GGUF is.
        await put(new Uint8Array(part.buffer, part.byteOffset, part.byteLength));
      }
      const pad = alignUp(total * 4, alignment) - total * 4;
      if (pad > 0) await put(new Uint8Array(pad));
    }
    await file.close();
    await rename(tmp, path);
  } catch (error) {
    await file.close().catch(() => {});
    await rm(tmp, { force: true });
    throw error;
  }
  return { path, sha256: `0x${hash.digest("hex")}`, bytes: written };
}

/**
 * A small, fast, seedable PRNG (mulberry32). Deterministic across platforms: only 32-bit integer ops.
 * Good enough for weights; not for anything cryptographic.
 */
export class Mulberry32 {
  private state: number;

  constructor(seed: number) {
    this.state = seed >>> 0;
  }

  /** Uniform in [0, 1). */
  next(): number {
    let t = (this.state = (this.state + 0x6d2b79f5) | 0);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
}

/** A 32-bit seed from a string and a number (FNV-1a), so each tensor gets its own independent stream. */
export function seedFrom(seed: number, label: string): number {
  let h = 0x811c9dc5 ^ (seed >>> 0);
  h = Math.imul(h, 0x01000193);
  for (let i = 0; i < label.length; i++) {
    h ^= label.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  h ^= Math.floor(seed / 4294967296);
  return Math.imul(h ^ (h >>> 16), 0x45d9f3b) >>> 0;
}

/** A tensor of uniform values in [-scale, scale) from its own seeded stream. */
export function uniformTensor(name: string, dims: readonly number[], seed: number, scale: number): GgufTensor {
  let rng = new Mulberry32(seedFrom(seed, name));
  let next = 0;
  return {
    name,
    dims,
    fill(out, start) {
      if (start !== next) {
        // Only happens if a caller fills out of order; restart and skip so values still depend only on the index.
        rng = new Mulberry32(seedFrom(seed, name));
        for (let i = 0; i < start; i++) rng.next();
      }
      for (let i = 0; i < out.length; i++) out[i] = (rng.next() * 2 - 1) * scale;
      next = start + out.length;
    },
  };
}

/** A tensor with every element equal to `value` (RMS-norm weights are all ones). */
export function constantTensor(name: string, dims: readonly number[], value: number): GgufTensor {
  return { name, dims, fill: (out) => void out.fill(value) };
}
