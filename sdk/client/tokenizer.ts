/**
 * Tokenizing a prompt exactly as a provider's engine does, so that a client holding the model file can
 * check the input tokens a provider bills to the token. The engine (node/engine/generate.ts) uses these
 * same functions: one definition of "the prompt's tokens" for both sides.
 */
import {
  getLlama,
  LlamaLogLevel,
  resolveChatWrapper,
  type ChatHistoryItem,
  type ChatWrapper,
  type Llama,
  type LlamaModel,
  type Token,
} from "node-llama-cpp";
import type { Prompt } from "../protocol/messages.js";

/** A prompt as tokens, with the token sequences that end a chat turn (the template's own stop triggers). */
export interface TokenizedPrompt {
  tokens: Token[];
  stopTriggers: Token[][];
}

/** One chat message; the same shape as the wire's ChatMessage. */
export interface PromptMessage {
  role: "system" | "user" | "assistant";
  content: string;
}

const chatWrappers = new WeakMap<LlamaModel, ChatWrapper>();

/** The chat wrapper node-llama-cpp picks for the model from its chat template, resolved once per model. */
export function chatWrapperOf(model: LlamaModel): ChatWrapper {
  let wrapper = chatWrappers.get(model);
  if (wrapper === undefined) {
    wrapper = resolveChatWrapper(model);
    chatWrappers.set(model, wrapper);
  }
  return wrapper;
}

/**
 * A chat through the model's chat template, ending with an open assistant turn.
 *
 * @example
 * tokenizeChat(model, [{ role: "user", content: "Hi" }]).tokens.length
 */
export function tokenizeChat(model: LlamaModel, messages: readonly PromptMessage[]): TokenizedPrompt {
  const history: ChatHistoryItem[] = messages.map((m): ChatHistoryItem => {
    if (m.role === "system") return { type: "system", text: m.content };
    if (m.role === "user") return { type: "user", text: m.content };
    return { type: "model", response: [m.content] };
  });
  history.push({ type: "model", response: [] });
  const state = chatWrapperOf(model).generateContextState({ chatHistory: history });
  const stopTriggers = state.stopGenerationTriggers
    .map((trigger) => trigger.tokenize(model.tokenizer))
    .filter((tokens) => tokens.length > 0);
  return { tokens: state.contextText.tokenize(model.tokenizer), stopTriggers };
}

/**
 * Raw text as the model reads it: its BOS token first when the model wants one.
 *
 * @example
 * tokenizeText(model, "Once upon a time").tokens
 */
export function tokenizeText(model: LlamaModel, text: string): TokenizedPrompt {
  const tokens = model.tokenize(text, false);
  const bos = model.tokens.bos;
  if (model.tokens.shouldPrependBosToken && bos !== null && tokens[0] !== bos) tokens.unshift(bos);
  return { tokens, stopTriggers: [] };
}

/**
 * The number of tokens a wire prompt takes on `model`: what a provider reports as a turn's `inputTokens`.
 *
 * @example
 * countPromptTokens(model, { kind: "text", text: "Hello" }) // 3
 */
export function countPromptTokens(model: LlamaModel, prompt: Prompt): number {
  return prompt.kind === "chat" ? tokenizeChat(model, prompt.messages).tokens.length : tokenizeText(model, prompt.text).tokens.length;
}

/** Counts prompt tokens with a model's vocabulary; `dispose()` frees it. */
export interface LocalTokenizer {
  /** SHA-256 of the model file, when the caller gave it (for matching against a session's model). */
  readonly modelSha256: string | undefined;
  count(prompt: Prompt): number;
  /**
   * Tokens of a raw text as the model reads it, without BOS or template: what a reply of that text takes at
   * least, for bounding the output tokens a provider bills (see `outputTokenUpperBound`). Optional for
   * tokenizers made by hand; those from {@link loadLocalTokenizer} have it.
   */
  countText?(text: string): number;
  dispose(): Promise<void>;
}

/** Options of {@link loadLocalTokenizer}. */
export interface LoadLocalTokenizerOptions {
  modelSha256?: string;
  /** A llama.cpp binding to load with (then left open by `dispose`); else one of its own, disposed with it. */
  llama?: Llama;
  /**
   * Threads of the binding it opens itself. Default 1: a vocabulary load and tokenizing use no more, and
   * node-llama-cpp's own default oversubscribes small machines.
   */
  threads?: number;
  signal?: AbortSignal;
}

/**
 * Loads only the vocabulary of a local GGUF model (no weights: fast and small) for exact input-token checks
 * and tight output-token bounds.
 *
 * @example
 * const tokenizer = await loadLocalTokenizer("./models/llama.gguf", { modelSha256 })
 * tokenizer.count({ kind: "text", text: "Hello" })
 * await tokenizer.dispose()
 */
export async function loadLocalTokenizer(modelPath: string, options: LoadLocalTokenizerOptions = {}): Promise<LocalTokenizer> {
  options.signal?.throwIfAborted();
  const threads = options.threads ?? 1;
  if (!Number.isInteger(threads) || threads < 1) throw new RangeError(`threads must be a positive integer, not ${threads}`);
  const own = options.llama === undefined;
  const llama = options.llama ?? (await getLlama({ gpu: false, build: "never", maxThreads: threads, logLevel: LlamaLogLevel.error }));
  let model: LlamaModel;
  try {
    model = await llama.loadModel({ modelPath, vocabOnly: true, ...(options.signal !== undefined && { loadSignal: options.signal }) });
    // Resolving the chat wrapper renders the template (~0.5 s): at load, not in the first turn.
    chatWrapperOf(model);
  } catch (err) {
    if (own) await llama.dispose();
    throw err;
  }
  let disposed: Promise<void> | undefined;
  return {
    modelSha256: options.modelSha256?.toLowerCase(),
    count: (prompt) => countPromptTokens(model, prompt),
    countText: (text) => (text === "" ? 0 : model.tokenize(text, false).length),
    dispose: () =>
      (disposed ??= (async () => {
        await model.dispose();
        if (own) await llama.dispose();
      })()),
  };
}
