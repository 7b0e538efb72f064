import type { LlamaContextSequence, LlamaModel, Token } from "node-llama-cpp";
import { chatWrapperOf, tokenizeChat, tokenizeText, type TokenizedPrompt } from "../../sdk/client/tokenizer.js";
import { InvalidRequestError } from "./errors.js";

/** One message of a chat prompt. */
export interface ChatMessage {
  role: "system" | "user" | "assistant";
  content: string;
}

/**
 * What to generate from: a chat, rendered with the model's own chat template, or raw text given to the
 * model as is (the model's BOS token is prepended when it wants one).
 */
export type Prompt = { chat: readonly ChatMessage[] } | { text: string };

/** Sampling options; the defaults sample greedily (temperature 0). */
export interface SamplingOptions {
  temperature?: number;
  topK?: number;
  topP?: number;
  minP?: number;
  /** Seed for the sampler, for reproducible sampling at temperature > 0. */
  seed?: number;
  /** Penalty on tokens repeated from the last `repeatLastTokens` tokens (1 = off). */
  repeatPenalty?: number;
  repeatLastTokens?: number;
  frequencyPenalty?: number;
  presencePenalty?: number;
}

/** Token counts of one generation, exact: what a voucher pays for. */
export interface Usage {
  /** Prompt tokens evaluated for this turn. */
  inputTokens: number;
  /** Prompt tokens reused from the session's KV state, not evaluated again. */
  cachedInputTokens: number;
  /** Tokens the model generated, the one that ended the generation included. */
  outputTokens: number;
}

/** Why a generation ended. */
export type StopReason = "eos" | "stop" | "maxTokens" | "contextFull" | "aborted";

/** A piece of streamed output. */
export interface GenerationChunk {
  text: string;
  /** Output tokens generated so far. */
  outputTokens: number;
}

/** A generation request on a sequence. */
export interface GenerateOptions {
  prompt: Prompt;
  sampling?: SamplingOptions;
  /** Most tokens to generate; defaults to what is left of the context. */
  maxTokens?: number;
  /** Strings that end the generation; they are not part of the output. */
  stop?: readonly string[];
  /** Called with each piece of output text as soon as it is final. */
  onChunk?: (chunk: GenerationChunk) => void;
  /** Aborting ends the generation early with stopReason "aborted"; what was generated is kept and counted. */
  signal?: AbortSignal;
  /**
   * Called with the prompt's token count once it is tokenized, before the turn is queued or anything is
   * evaluated; an error it throws refuses the turn (the provider checks a turn's worst-case cost with it).
   */
  admit?: (promptTokens: number) => void;
}

/** What a generation produced. */
export interface GenerateResult {
  /**
   * The output exactly as generated, which may start with a space (SentencePiece models). Send it back
   * verbatim as the assistant's message in the next turn: it then tokenizes into the tokens the session's
   * cache holds, and is not evaluated again.
   */
  text: string;
  usage: Usage;
  stopReason: StopReason;
}

const MAX_STOP_STRINGS = 16;
const MAX_STOP_LENGTH = 256;

export type { TokenizedPrompt };

/**
 * Tokenizes a prompt the way {@link generate} evaluates it. Chat prompts go through the model's chat
 * template and end with an open assistant turn.
 *
 * @example
 * const { tokens } = tokenizePrompt(model, { chat: [{ role: "user", content: "Hi" }] })
 */
export function tokenizePrompt(model: LlamaModel, prompt: Prompt): TokenizedPrompt {
  if ("chat" in prompt) {
    if (!Array.isArray(prompt.chat) || prompt.chat.length === 0) {
      throw new InvalidRequestError("a chat prompt needs at least one message");
    }
    prompt.chat.forEach((m, i) => {
      if (typeof m?.content !== "string") throw new InvalidRequestError(`message ${i} has no text content`);
      if (m.role !== "system" && m.role !== "user" && m.role !== "assistant") {
        throw new InvalidRequestError(`message ${i} has an unknown role ${JSON.stringify((m as ChatMessage).role)}`);
      }
    });
    return tokenizeChat(model, prompt.chat);
  }
  if (typeof prompt.text !== "string" || prompt.text.length === 0) {
    throw new InvalidRequestError("a raw prompt needs non-empty text");
  }
  return tokenizeText(model, prompt.text);
}

function validateStops(stop: readonly string[] | undefined): string[] {
  if (stop === undefined) return [];
  if (!Array.isArray(stop) || stop.length > MAX_STOP_STRINGS) {
    throw new InvalidRequestError(`stop must be a list of at most ${MAX_STOP_STRINGS} strings`);
  }
  for (const s of stop) {
    if (typeof s !== "string" || s.length === 0 || s.length > MAX_STOP_LENGTH) {
      throw new InvalidRequestError(`each stop string must have 1 to ${MAX_STOP_LENGTH} characters`);
    }
  }
  return [...stop];
}

function validateSampling(s: SamplingOptions): void {
  const check = (name: keyof SamplingOptions, ok: (v: number) => boolean, range: string): void => {
    const v = s[name];
    if (v !== undefined && (typeof v !== "number" || !Number.isFinite(v) || !ok(v))) {
      throw new InvalidRequestError(`sampling.${name} must be ${range}, got ${String(v)}`);
    }
  };
  check("temperature", (v) => v >= 0 && v <= 10, "between 0 and 10");
  check("topK", (v) => Number.isInteger(v) && v >= 0, "a non-negative integer");
  check("topP", (v) => v >= 0 && v <= 1, "between 0 and 1");
  check("minP", (v) => v >= 0 && v <= 1, "between 0 and 1");
  check("seed", (v) => Number.isInteger(v) && v >= 0 && v <= 0xffffffff, "an integer from 0 to 2^32-1");
  check("repeatPenalty", (v) => v > 0 && v <= 10, "above 0 and at most 10");
  check("repeatLastTokens", (v) => Number.isInteger(v) && v >= 1 && v <= 4096, "an integer from 1 to 4096");
  check("frequencyPenalty", (v) => v >= -2 && v <= 2, "between -2 and 2");
  check("presencePenalty", (v) => v >= -2 && v <= 2, "between -2 and 2");
}

/** Length of the longest end of `text` that begins one of `stops`: text a later token may turn into a stop. */
function pendingStopLength(text: string, stops: readonly string[]): number {
  let longest = 0;
  for (const stop of stops) {
    for (let n = Math.min(stop.length - 1, text.length); n > longest; n--) {
      if (text.endsWith(stop.slice(0, n))) {
        longest = n;
        break;
      }
    }
  }
  return longest;
}

function endsWithTokens(tokens: readonly Token[], tail: readonly Token[]): boolean {
  if (tail.length > tokens.length) return false;
  const offset = tokens.length - tail.length;
  return tail.every((t, i) => tokens[offset + i] === t);
}

/** A request that passed {@link checkRequest}: its prompt tokenized, its stops, the room left for output. */
export interface CheckedRequest extends TokenizedPrompt {
  stops: string[];
  room: number;
}

/**
 * Checks a generation request against a model and context size without touching any sequence, so a
 * bad request is refused before it takes a queue place or memory.
 *
 * @example
 * checkRequest(model, 4096, { prompt: { text: "" } }) // throws InvalidRequestError
 */
export function checkRequest(model: LlamaModel, contextSize: number, options: GenerateOptions): CheckedRequest {
  const stops = validateStops(options.stop);
  validateSampling(options.sampling ?? {});
  if (options.maxTokens !== undefined && (!Number.isInteger(options.maxTokens) || options.maxTokens < 1)) {
    throw new InvalidRequestError("maxTokens must be a positive integer");
  }
  const prompt = tokenizePrompt(model, options.prompt);
  const room = contextSize - prompt.tokens.length;
  if (room < 1) {
    throw new InvalidRequestError(
      `the prompt has ${prompt.tokens.length} tokens but the context holds ${contextSize}; shorten it`,
    );
  }
  return { ...prompt, stops, room };
}

/**
 * Generates on a context sequence, reusing whatever prefix of the prompt the sequence already holds:
 * only the rest is evaluated. The sequence keeps the new state, so the next turn of the same session
 * evaluates only its new tokens.
 *
 * @example
 * const { text, usage } = await generate(sequence, { prompt: { text: "Once upon" }, maxTokens: 16 })
 */
export async function generate(
  sequence: LlamaContextSequence,
  options: GenerateOptions,
  /** The same request already checked on this model and context size (spares rendering the template twice). */
  checked: CheckedRequest = checkRequest(sequence.model, sequence.contextSize, options),
): Promise<GenerateResult> {
  const model = sequence.model;
  const { tokens, stopTriggers, stops, room } = checked;
  const maxTokens = Math.min(options.maxTokens ?? room, room);
  options.signal?.throwIfAborted();

  // At least one prompt token is evaluated, so there are logits to sample the first output token from.
  const reused = Math.min(sequence.compareContextTokens(tokens).firstDifferentIndex, tokens.length - 1);
  if (reused < sequence.nextTokenIndex) {
    await sequence.eraseContextTokenRanges([{ start: reused, end: sequence.nextTokenIndex }]);
  }

  const usage: Usage = { inputTokens: tokens.length - reused, cachedInputTokens: reused, outputTokens: 0 };
  // Detokenized after the prompt's last tokens: an SPM tokenizer drops the leading space of a text's first
  // token, and a reply without it tokenizes differently when it comes back in the next turn's history, so
  // the whole reply would be evaluated again instead of reused from the cache.
  const context = tokens.slice(-4);
  const textTokens: Token[] = [];
  const generated: Token[] = [];
  let text = "";
  let emitted = 0;
  let stopReason: StopReason | undefined;
  const s = options.sampling ?? {};

  const emit = (upTo: number): void => {
    if (upTo <= emitted) return;
    const piece = text.slice(emitted, upTo);
    emitted = upTo;
    options.onChunk?.({ text: piece, outputTokens: usage.outputTokens });
  };

  const iterator = sequence.evaluate(tokens.slice(reused), {
    temperature: s.temperature ?? 0,
    ...(s.topK !== undefined && { topK: s.topK }),
    ...(s.topP !== undefined && { topP: s.topP }),
    ...(s.minP !== undefined && { minP: s.minP }),
    ...(s.seed !== undefined && { seed: s.seed }),
    ...(s.repeatPenalty !== undefined && {
      repeatPenalty: {
        penalty: s.repeatPenalty,
        maxPunishTokens: s.repeatLastTokens ?? 64,
        punishTokens: () => [...tokens, ...generated].slice(-(s.repeatLastTokens ?? 64)),
        ...(s.frequencyPenalty !== undefined && { frequencyPenalty: s.frequencyPenalty }),
        ...(s.presencePenalty !== undefined && { presencePenalty: s.presencePenalty }),
      },
    }),
    yieldEogToken: true,
  });
  // maxTokens never exceeds the room left, so the context never shifts under the session's state.

  try {
    for await (const token of iterator) {
      usage.outputTokens++;
      generated.push(token);
      if (model.isEogToken(token)) {
        stopReason = "eos";
        break;
      }
      textTokens.push(token);
      const trigger = stopTriggers.find((t) => endsWithTokens(generated, t));
      if (trigger !== undefined) {
        textTokens.splice(textTokens.length - Math.min(trigger.length, textTokens.length));
        text = model.detokenize(textTokens, false, context);
        stopReason = "eos";
        break;
      }
      text = model.detokenize(textTokens, false, context);
      const searchFrom = Math.max(0, emitted - MAX_STOP_LENGTH);
      const hits = stops.map((stop) => text.indexOf(stop, searchFrom)).filter((i) => i >= 0);
      if (hits.length > 0) {
        text = text.slice(0, Math.min(...hits));
        stopReason = "stop";
        break;
      }
      let safe = text.length - pendingStopLength(text, stops);
      // An incomplete UTF-8 sequence detokenizes to U+FFFD until its last byte arrives.
      while (safe > emitted && text.charCodeAt(safe - 1) === 0xfffd) safe--;
      emit(safe);
      if (options.signal?.aborted) {
        stopReason = "aborted";
        break;
      }
      if (usage.outputTokens >= maxTokens) {
        stopReason = usage.outputTokens >= room ? "contextFull" : "maxTokens";
        break;
      }
    }
  } finally {
    await iterator.return();
  }
  emit(text.length);
  return { text, usage, stopReason: stopReason ?? "contextFull" };
}
