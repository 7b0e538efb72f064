/**
 * Deterministic tiny llama models and LoRA adapters, written with the GGUF writer.
 *
 * Why it is product code: `soulmesh up` serves the TINY model when no real model can be downloaded (no network,
 * --offline), so that a fresh machine still gets a working local network; its replies are noise (the weights
 * are seeded random) but it is real llama.cpp inference: same spec, same bytes, same SHA-256, same tokens.
 * Tests and benchmarks use the same generator (test/fixtures/gguf/llama.ts re-exports it and adds their fixture
 * files and cached bench models), so the engine path they exercise is the one `up` runs.
 */
import { arr, bool, constantTensor, f32, seedFrom, str, u32, uniformTensor, writeGguf } from "./gguf-writer.js";
import type { GgufMetadata, GgufTensor } from "./gguf-writer.js";

/**
 * Bump when the bytes a spec produces change, so cached bench models are regenerated. The bytes are part of the
 * product too: the tiny model `up` writes is registered on chain by its SHA-256, and the names in the metadata
 * ("soulmesh-test-…") stay as they are for that reason.
 */
export const WRITER_VERSION = 1;

/** The shape of a llama model; the same spec always gives the same file. */
export interface TinyLlamaSpec {
  /** Seeds every weight. */
  seed: number;
  embeddingLength: number;
  blockCount: number;
  headCount: number;
  headCountKv: number;
  feedForwardLength: number;
  contextLength: number;
  /** Filler word pieces added to the vocabulary (to reach a realistic vocab size for benchmarks). */
  extraVocab?: number;
  /**
   * Let the output layer emit only whole words with their leading space ("▁the", not "▁th" or "e"). A reply
   * made of them tokenizes back into the same tokens, as a real model's replies mostly do; sub-word pieces
   * re-merge ("▁th" + "e" becomes "▁the"), so a conversation's next turn would re-evaluate the whole reply.
   */
  wholeWordOutput?: boolean;
}

/** Options for {@link writeLoraAdapter}. */
export interface LoraAdapterSpec {
  /** The model the adapter is made for: it decides tensor names and shapes. */
  base: TinyLlamaSpec;
  seed: number;
  rank: number;
  /** Written as `adapter.lora.alpha`; llama.cpp scales the adapter by alpha / rank. */
  alpha: number;
  /**
   * How big the change is, relative to the base weights: at 1, ΔW·x is about as large as W·x.
   * Around 1 or more reliably changes greedy output.
   */
  magnitude: number;
  /** Per-block weights to adapt (e.g. "attn_q", "ffn_down"); default: all attention and feed-forward matrices. */
  targets?: string[];
}

/** A written file and its SHA-256 ("0x" + lowercase hex of the file bytes). */
export interface GgufFile {
  path: string;
  sha256: string;
}

/**
 * About 0.46M parameters (vocab 2,995), 1.9 MB: written in ~50 ms, loads and generates in milliseconds. The model
 * `soulmesh up` falls back to, and the tests' base model.
 */
export const TINY: TinyLlamaSpec = {
  seed: 1,
  embeddingLength: 64,
  blockCount: 2,
  headCount: 4,
  headCountKv: 2,
  feedForwardLength: 128,
  contextLength: 2048,
};

/** Adapter targets inside each block; all of them by default. */
export const DEFAULT_LORA_TARGETS = ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"];

/** ChatML, as Qwen / OpenHermes ship it; node-llama-cpp recognises it and picks its ChatML chat wrapper. */
export const CHATML_TEMPLATE =
  "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}" +
  "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/** llama.cpp token types (`enum llama_token_type`). */
const TokenType = { normal: 1, unknown: 2, control: 3, byte: 6 } as const;

/** Special token ids, fixed so tests can refer to them. */
export const TOKEN = { unk: 0, bos: 1, eos: 2, imStart: 259, imEnd: 260 } as const;

/** SentencePiece's visible space: a word piece "▁the" is " the". */
const SPACE = "\u2581";

/** Common English words; with their prefixes they let ordinary text tokenize into far fewer tokens than bytes. */
const WORDS = (
  "the of and to a in is it you that he was for on are with as his they be at one have this from or had by " +
  "not but what some we can out other were all there when up use your how said an each she which do their " +
  "time if will way about many then them write would like so these her long make thing see him two has look " +
  "more day could go come did number sound no most people my over know water than call first who may down " +
  "side been now find any new work part take get place made live where after back little only round man year " +
  "came show every good me give our under name very through just form sentence great think say help low line " +
  "differ turn cause much mean before move right boy old too same tell does set three want air well also play " +
  "small end put home read hand port large spell add even land here must big high such follow act why ask men " +
  "change went light kind off need house picture try us again animal point mother world near build self earth " +
  "father head stand own page should country found answer school grow study still learn plant cover food sun " +
  "four between state keep eye never last let thought city tree cross farm hard start might story saw far sea " +
  "draw left late run while press close night real life few north open seem together next white children begin " +
  "got walk example ease paper group always music those both mark often letter until mile river car feet care " +
  "second book carry took science eat room friend began idea fish mountain stop once base hear horse cut sure " +
  "watch color face wood main enough plain girl usual young ready above ever red list though feel talk bird soon " +
  "body dog family direct pose leave song measure door product black short numeral class wind question happen " +
  "complete ship area half rock order fire south problem piece told knew pass since top whole king space heard " +
  "best hour better true during hundred five remember step early hold west ground interest reach fast verb sing " +
  "listen six table travel less morning ten simple several vowel toward war lay against pattern slow center love " +
  "person money serve appear road map rain rule govern pull cold notice voice unit power town fine certain fly " +
  "fall lead cry dark machine note wait plan figure star box noun field rest correct able pound done beauty drive " +
  "stood contain front teach week final gave green oh quick develop ocean warm free minute strong special mind " +
  "behind clear tail produce fact street inch multiply nothing course stay wheel full force blue object decide " +
  "surface deep moon island foot system busy test record boat common gold possible plane stead dry wonder laugh " +
  "thousand ago ran check game shape equate hot miss brought heat snow tire bring yes distant fill east paint " +
  "language among hello agent model token network provider user assistant message chat reply"
).split(" ");

/** Word endings, without the leading space, so "walked" is "▁walk" + "ed". */
const SUFFIXES = ["s", "ed", "ing", "ly", "er", "es", "est", "tion", "ment", "ness", "ful", "'s", "n't"];

/** The vocabulary as the three parallel arrays GGUF stores. */
export interface Vocab {
  tokens: string[];
  scores: number[];
  types: number[];
}

/**
 * Builds a SentencePiece-style vocabulary. llama.cpp's SPM tokenizer merges adjacent pieces only when the
 * merged text is itself a token, so every piece comes with all its prefixes (▁t, ▁th, ▁the) to be reachable.
 * Anything else falls back to the byte tokens <0x00>..<0xFF>, so every string tokenizes and round-trips.
 * Earlier pieces get higher scores (SentencePiece scores are log-probabilities; higher merges first).
 *
 * @example
 * buildVocab().tokens.length // 2,995
 */
export function buildVocab(extraVocab = 0): Vocab {
  const tokens: string[] = [];
  const scores: number[] = [];
  const types: number[] = [];
  const seen = new Set<string>();
  const add = (text: string, type: number, score = 0): void => {
    if (seen.has(text)) return;
    seen.add(text);
    tokens.push(text);
    scores.push(score);
    types.push(type);
  };
  add("<unk>", TokenType.unknown);
  add("<s>", TokenType.control);
  add("</s>", TokenType.control);
  for (let b = 0; b < 256; b++) add(`<0x${b.toString(16).toUpperCase().padStart(2, "0")}>`, TokenType.byte);
  add("<|im_start|>", TokenType.control);
  add("<|im_end|>", TokenType.control);

  let rank = 0;
  const piece = (text: string): void => {
    for (let i = 1; i <= [...text].length; i++) {
      const prefix = [...text].slice(0, i).join("");
      if (!seen.has(prefix)) add(prefix, TokenType.normal, -rank++);
    }
  };
  piece(SPACE);
  for (let c = 0x21; c < 0x7f; c++) piece(String.fromCharCode(c));
  for (let c = 0x21; c < 0x7f; c++) piece(SPACE + String.fromCharCode(c));
  for (const word of WORDS) {
    piece(SPACE + word);
    piece(SPACE + word[0]!.toUpperCase() + word.slice(1));
  }
  for (const suffix of SUFFIXES) piece(suffix);

  // Filler: letter pairs, then triples, with and without a leading space, in a fixed order.
  const letters = "abcdefghijklmnopqrstuvwxyz";
  let added = 0;
  outer: for (let length = 2; length <= 4; length++) {
    const count = letters.length ** length;
    for (let i = 0; i < count; i++) {
      let s = "";
      for (let k = 0, n = i; k < length; k++, n = Math.floor(n / letters.length)) s = letters[n % letters.length] + s;
      for (const text of [s, SPACE + s]) {
        if (added >= extraVocab) break outer;
        if (seen.has(text)) continue;
        // The prefix without the last letter is already present (shorter strings come first), so it's reachable.
        add(text, TokenType.normal, -rank++);
        added++;
      }
    }
  }
  return { tokens, scores, types };
}

/** Dimensions derived from a spec. */
function dims(spec: TinyLlamaSpec): { n: number; headDim: number; kv: number; ff: number } {
  if (spec.embeddingLength % spec.headCount !== 0) throw new Error("embeddingLength must be a multiple of headCount");
  if (spec.headCount % spec.headCountKv !== 0) throw new Error("headCount must be a multiple of headCountKv");
  const headDim = spec.embeddingLength / spec.headCount;
  return { n: spec.embeddingLength, headDim, kv: headDim * spec.headCountKv, ff: spec.feedForwardLength };
}

/**
 * Input and output sizes of each adaptable per-block matrix; ggml dims are [input, output].
 */
function blockMatrixShapes(spec: TinyLlamaSpec): Record<string, readonly [number, number]> {
  const { n, kv, ff } = dims(spec);
  return {
    attn_q: [n, n],
    attn_k: [n, kv],
    attn_v: [n, kv],
    attn_output: [n, n],
    ffn_gate: [n, ff],
    ffn_up: [n, ff],
    ffn_down: [ff, n],
  };
}

/** Uniform scale with standard deviation `std`. */
const uniformScale = (std: number): number => std * Math.sqrt(3);

/**
 * The output projection, with zero rows for every token that isn't a word piece: their logits are exactly 0
 * while word pieces' logits are spread around 0, so greedy generation emits readable pieces rather than
 * control tokens, end-of-sequence or half a UTF-8 byte sequence.
 */
function outputTensor(spec: TinyLlamaSpec, vocab: Vocab): GgufTensor {
  const n = spec.embeddingLength;
  const wholeWords = new Set(WORDS.flatMap((w) => [SPACE + w, SPACE + w[0]!.toUpperCase() + w.slice(1)]));
  const emits = (row: number): boolean =>
    vocab.types[row] === TokenType.normal && (spec.wholeWordOutput !== true || wholeWords.has(vocab.tokens[row]!));
  // Logit standard deviation ~3 after the final RMS norm: clear winners, so greedy picks are stable.
  const inner = uniformTensor("output.weight", [n, vocab.tokens.length], spec.seed, uniformScale(3 / Math.sqrt(n)));
  return {
    name: inner.name,
    dims: inner.dims,
    fill(out, start) {
      inner.fill(out, start);
      const first = Math.floor(start / n);
      const last = Math.floor((start + out.length - 1) / n);
      for (let row = first; row <= last; row++) {
        if (emits(row)) continue;
        const from = Math.max(row * n - start, 0);
        const to = Math.min((row + 1) * n - start, out.length);
        out.fill(0, from, to);
      }
    },
  };
}

/** llama-architecture metadata plus the tokenizer. */
function llamaMetadata(spec: TinyLlamaSpec, vocab: Vocab): GgufMetadata {
  const { headDim } = dims(spec);
  return [
    ["general.architecture", str("llama")],
    ["general.name", str(`soulmesh-test-llama-${spec.embeddingLength}x${spec.blockCount}-s${spec.seed}`)],
    ["general.file_type", u32(0)], // all F32
    ["general.alignment", u32(32)],
    ["llama.context_length", u32(spec.contextLength)],
    ["llama.embedding_length", u32(spec.embeddingLength)],
    ["llama.block_count", u32(spec.blockCount)],
    ["llama.feed_forward_length", u32(spec.feedForwardLength)],
    ["llama.attention.head_count", u32(spec.headCount)],
    ["llama.attention.head_count_kv", u32(spec.headCountKv)],
    ["llama.rope.dimension_count", u32(headDim)],
    ["llama.rope.freq_base", f32(10000)],
    ["llama.attention.layer_norm_rms_epsilon", f32(1e-5)],
    ["llama.vocab_size", u32(vocab.tokens.length)],
    ["tokenizer.ggml.model", str("llama")],
    ["tokenizer.ggml.tokens", arr("string", vocab.tokens)],
    ["tokenizer.ggml.scores", arr("float32", vocab.scores)],
    ["tokenizer.ggml.token_type", arr("int32", vocab.types)],
    ["tokenizer.ggml.unknown_token_id", u32(TOKEN.unk)],
    ["tokenizer.ggml.bos_token_id", u32(TOKEN.bos)],
    ["tokenizer.ggml.eos_token_id", u32(TOKEN.eos)],
    ["tokenizer.ggml.eot_token_id", u32(TOKEN.imEnd)],
    ["tokenizer.ggml.add_bos_token", bool(true)],
    ["tokenizer.ggml.add_eos_token", bool(false)],
    ["tokenizer.chat_template", str(CHATML_TEMPLATE)],
  ];
}

/**
 * Number of parameters a spec produces.
 *
 * @example
 * parameterCount(TINY) // about 460,000
 */
export function parameterCount(spec: TinyLlamaSpec): number {
  const vocab = buildVocab(spec.extraVocab).tokens.length;
  const n = spec.embeddingLength;
  const perBlock = Object.values(blockMatrixShapes(spec)).reduce((s, [a, b]) => s + a * b, 0) + 2 * n;
  return 2 * vocab * n + n + spec.blockCount * perBlock;
}

/**
 * Writes a llama model with seeded random F32 weights. Projections have standard deviation 1/sqrt(fan-in)
 * so activations keep unit scale through the blocks; RMS-norm weights are ones. The same spec always gives the
 * same bytes.
 *
 * @example
 * const { sha256 } = await writeTinyLlama(join(modelsDir, "tiny-llama.gguf"), TINY)
 */
export async function writeTinyLlama(path: string, spec: TinyLlamaSpec): Promise<GgufFile> {
  const vocab = buildVocab(spec.extraVocab);
  const { n } = dims(spec);
  const tensors: GgufTensor[] = [uniformTensor("token_embd.weight", [n, vocab.tokens.length], spec.seed, uniformScale(1))];
  for (let b = 0; b < spec.blockCount; b++) {
    tensors.push(constantTensor(`blk.${b}.attn_norm.weight`, [n], 1));
    for (const [kind, [input, output]] of Object.entries(blockMatrixShapes(spec))) {
      if (kind === "ffn_gate") tensors.push(constantTensor(`blk.${b}.ffn_norm.weight`, [n], 1));
      tensors.push(uniformTensor(`blk.${b}.${kind}.weight`, [input, output], spec.seed, uniformScale(1 / Math.sqrt(input))));
    }
  }
  tensors.push(constantTensor("output_norm.weight", [n], 1));
  tensors.push(outputTensor(spec, vocab));
  const { sha256 } = await writeGguf(path, llamaMetadata(spec, vocab), tensors);
  return { path, sha256 };
}

/**
 * Writes a LoRA adapter the way llama.cpp's convert_lora_to_gguf.py does: general.type=adapter,
 * adapter.type=lora, adapter.lora.alpha, and for each adapted weight W (ggml dims [in, out]) a pair
 * `W.lora_a` [in, rank] and `W.lora_b` [rank, out]; llama.cpp adds (alpha/rank)·scale·B·A·x to W·x
 * (llama-adapter.cpp checks exactly these shapes against the base model).
 *
 * @example
 * await writeLoraAdapter("tiny-lora.gguf", { base: TINY, seed: 101, rank: 4, alpha: 8, magnitude: 2 })
 */
export async function writeLoraAdapter(path: string, options: LoraAdapterSpec): Promise<GgufFile> {
  const { base, seed, rank, alpha, magnitude } = options;
  const shapes = blockMatrixShapes(base);
  const targets = options.targets ?? DEFAULT_LORA_TARGETS;
  // A·x has unit-scale entries; B is sized so (alpha/rank)·B·A·x is `magnitude` times W·x.
  const bStd = (magnitude * Math.sqrt(rank)) / alpha;
  const tensors: GgufTensor[] = [];
  for (let b = 0; b < base.blockCount; b++) {
    for (const target of targets) {
      const shape = shapes[target];
      if (!shape) throw new Error(`unknown LoRA target ${target}; expected one of ${Object.keys(shapes).join(", ")}`);
      const [input, output] = shape;
      const name = `blk.${b}.${target}.weight`;
      tensors.push(uniformTensor(`${name}.lora_a`, [input, rank], seed, uniformScale(1 / Math.sqrt(input))));
      tensors.push(uniformTensor(`${name}.lora_b`, [rank, output], seed, uniformScale(bStd)));
    }
  }
  const metadata: GgufMetadata = [
    ["general.architecture", str("llama")],
    ["general.type", str("adapter")],
    ["general.name", str(`soulmesh-test-lora-r${rank}-s${seed}`)],
    ["general.file_type", u32(0)],
    ["adapter.type", str("lora")],
    ["adapter.lora.alpha", f32(alpha)],
  ];
  const { sha256 } = await writeGguf(path, metadata, tensors);
  return { path, sha256 };
}
