/**
 * Reading an OpenAI chat completion request for an agent. The agent keeps its own memory and history, which
 * are the source of truth: only the last message, the user's, is sent to it. Earlier messages (the client's
 * copy of the history, a system prompt) are ignored, and counted in the response header
 * `x-soulmesh-ignored-messages`, rather than refused, since most clients resend the whole conversation and
 * many add a system prompt of their own; the persona's card is the agent's system prompt.
 */
import { OpenAiRequestError } from "./errors.js";

/** What the gateway does with one chat completion request. */
export interface ChatRequest {
  /** The text of the last message (the user's). */
  message: string;
  stream: boolean;
  /** `stream_options.include_usage`: a last chunk carries the usage. */
  includeUsage: boolean;
  /** `max_completion_tokens`, else `max_tokens`; the agent's default when neither. */
  maxTokens?: number;
  /** `user`: the speaker, whose memories (and confidences) are kept apart; the owner when absent. */
  speaker?: string;
  /** Messages before the last, not sent to the agent. */
  ignoredMessages: number;
}

const ROLES = new Set(["system", "developer", "user", "assistant", "tool", "function"]);

/** Longest `user` id taken as a speaker. */
const MAX_USER_LENGTH = 256;

function invalid(message: string, param: string | null, code = "invalid_value"): OpenAiRequestError {
  return new OpenAiRequestError(400, "invalid_request_error", code, message, param);
}

/**
 * Checks a parsed request body and picks out what the agent needs. `temperature`, `top_p` and the other
 * sampling parameters are checked when present but not applied: the provider samples with its own settings.
 *
 * @example
 * parseChatRequest({ model: "soulmesh-agent-7", messages: [{ role: "user", content: "Hi" }] }, "soulmesh-agent-7")
 * // { message: "Hi", stream: false, includeUsage: false, ignoredMessages: 0 }
 * @throws OpenAiRequestError: 400 for a malformed request, 404 for another model than `model`.
 */
export function parseChatRequest(body: unknown, model: string): ChatRequest {
  if (typeof body !== "object" || body === null || Array.isArray(body)) throw invalid("The request body must be a JSON object.", null);
  const b = body as Record<string, unknown>;
  if (typeof b.model !== "string" || b.model === "") throw invalid("Missing `model`: pass the agent's model id (GET /v1/models lists it).", "model", "missing_required_parameter");
  if (b.model !== model) {
    throw new OpenAiRequestError(404, "invalid_request_error", "model_not_found", `The model \`${b.model}\` does not exist here: this gateway serves \`${model}\`.`, "model");
  }
  const message = lastUserMessage(b.messages);
  const stream = optionalBoolean(b.stream, "stream") ?? false;
  const includeUsage = stream && streamIncludesUsage(b.stream_options);
  const maxTokens = optionalCount(b.max_completion_tokens, "max_completion_tokens") ?? optionalCount(b.max_tokens, "max_tokens");
  optionalNumber(b.temperature, "temperature", 0, 2);
  optionalNumber(b.top_p, "top_p", 0, 1);
  if (b.n !== undefined && b.n !== null && b.n !== 1) throw invalid("Only one choice per request (`n` = 1): an agent gives one reply per turn.", "n");
  if (Array.isArray(b.tools) && b.tools.length > 0) throw invalid("Tools are not supported: the agent replies with text only. Leave `tools` out.", "tools");
  if (Array.isArray(b.functions) && b.functions.length > 0) throw invalid("Functions are not supported: the agent replies with text only.", "functions");
  const speaker = optionalUser(b.user);
  return {
    message: message.text,
    stream,
    includeUsage,
    ...(maxTokens !== undefined && { maxTokens }),
    ...(speaker !== undefined && { speaker }),
    ignoredMessages: message.index,
  };
}

function lastUserMessage(messages: unknown): { text: string; index: number } {
  if (!Array.isArray(messages) || messages.length === 0) {
    throw invalid("`messages` must be a non-empty array ending with the user's message.", "messages", messages === undefined ? "missing_required_parameter" : "invalid_value");
  }
  messages.forEach((m, i) => {
    if (typeof m !== "object" || m === null || !ROLES.has((m as { role?: unknown }).role as string)) {
      throw invalid(`messages[${i}] must be an object with a role (system, developer, user, assistant or tool).`, `messages[${i}].role`);
    }
  });
  const index = messages.length - 1;
  const last = messages[index] as { role: string; content?: unknown };
  if (last.role !== "user") {
    throw invalid(`The last message must be the user's (it is the ${last.role}'s): the agent answers the user's message.`, `messages[${index}].role`);
  }
  const text = contentText(last.content, index);
  if (text.trim() === "") throw invalid("The user's message is empty: send some text.", `messages[${index}].content`);
  return { text, index };
}

/** A message's text: a string, or text parts joined (images, audio and files are refused). */
function contentText(content: unknown, index: number): string {
  if (typeof content === "string") return content;
  if (!Array.isArray(content)) throw invalid("The user's message content must be a string or an array of text parts.", `messages[${index}].content`);
  return content
    .map((part: unknown, i) => {
      const p = part as { type?: unknown; text?: unknown } | null;
      if (p?.type !== "text" || typeof p.text !== "string") {
        throw invalid("Only text parts are supported in the user's message (no images, audio or files).", `messages[${index}].content[${i}]`);
      }
      return p.text;
    })
    .join("\n");
}

function optionalBoolean(value: unknown, param: string): boolean | undefined {
  if (value === undefined || value === null) return undefined;
  if (typeof value !== "boolean") throw invalid(`\`${param}\` must be true or false.`, param);
  return value;
}

function streamIncludesUsage(options: unknown): boolean {
  if (options === undefined || options === null) return false;
  if (typeof options !== "object") throw invalid("`stream_options` must be an object.", "stream_options");
  return optionalBoolean((options as { include_usage?: unknown }).include_usage, "stream_options.include_usage") ?? false;
}

function optionalCount(value: unknown, param: string): number | undefined {
  if (value === undefined || value === null) return undefined;
  if (typeof value !== "number" || !Number.isSafeInteger(value) || value < 1) throw invalid(`\`${param}\` must be a positive integer.`, param);
  return value;
}

function optionalNumber(value: unknown, param: string, min: number, max: number): void {
  if (value === undefined || value === null) return;
  if (typeof value !== "number" || !Number.isFinite(value) || value < min || value > max) {
    throw invalid(`\`${param}\` must be a number from ${min} to ${max}.`, param);
  }
}

function optionalUser(value: unknown): string | undefined {
  if (value === undefined || value === null || value === "") return undefined;
  if (typeof value !== "string" || value.length > MAX_USER_LENGTH) throw invalid(`\`user\` must be a string of at most ${MAX_USER_LENGTH} characters.`, "user");
  return value;
}
