/**
 * Background maintenance: the model, through the metered chat path (`Complete`), turns closed chat
 * segments into a segment summary, topic summaries, profile facts, working notes and follow-ups. It runs
 * in a queue of its own, one job at a time, so that recording a turn or assembling a prompt never waits
 * for a model; closing the memory aborts it.
 */
import { z } from "zod";
import { MaintenanceAnswerError } from "./errors.js";
import type { Complete } from "./types.js";

/**
 * Runs jobs one at a time, in order, off the caller's path. A job's failure is handed to `onError` and
 * does not stop the jobs after it.
 *
 * @example
 * const queue = new MaintenanceQueue((err) => console.error(err))
 * queue.enqueue(async (signal) => summarize(signal))
 * await queue.idle()
 */
export class MaintenanceQueue {
  readonly #controller = new AbortController();
  readonly #onError: (error: unknown) => void;
  #tail: Promise<void> = Promise.resolve();
  #pending = 0;
  readonly #aborted: Promise<never>;

  constructor(onError: (error: unknown) => void) {
    this.#onError = onError;
    this.#aborted = new Promise<never>((_, reject) => {
      this.#controller.signal.addEventListener("abort", () => reject(this.#controller.signal.reason), { once: true });
    });
    this.#aborted.catch(() => undefined);
  }

  /** Jobs queued or running. */
  get pending(): number {
    return this.#pending;
  }

  /** Aborted when the queue closes: every job's model call takes it. */
  get signal(): AbortSignal {
    return this.#controller.signal;
  }

  /** Queues `job` after the others; returns at once. Ignored once the queue is closed. */
  enqueue(job: (signal: AbortSignal) => Promise<void>): void {
    if (this.#controller.signal.aborted) return;
    this.#pending++;
    this.#tail = this.#tail.then(async () => {
      try {
        // A model call that ignores the signal must not hold close() up: the job is left behind, and its
        // late result is dropped because every job checks the signal before it changes anything.
        if (!this.#controller.signal.aborted) await Promise.race([job(this.#controller.signal), this.#aborted]);
      } catch (error) {
        if (!this.#controller.signal.aborted) this.#onError(error);
      } finally {
        this.#pending--;
      }
    });
  }

  /** Resolves when every job queued so far has finished (those queued meanwhile too). */
  async idle(): Promise<void> {
    while (this.#pending > 0) await this.#tail;
  }

  /** Aborts the running job's model call, drops the queued ones, and resolves when the running one has stopped. */
  async close(): Promise<void> {
    this.#controller.abort(new DOMException("The agent memory closed", "AbortError"));
    await this.#tail;
  }
}

/** One turn of a segment as the model reads it. */
export interface SegmentLine {
  /** "agent" or the user id. */
  speaker: string;
  text: string;
  time: number;
}

/** What a segment asks the model about. */
export interface SegmentRequest {
  /** The user the agent talked with in the segment. */
  userId: string;
  lines: readonly SegmentLine[];
  /** The user's known profile facts, so the model adds only what is new. */
  knownProfile: readonly string[];
  /** Topics that already have a summary, so the model reuses their keys (the latest conclusion wins). */
  knownTopics: readonly { topic: string; summary: string }[];
  /** The agent's name, for the prompt. */
  agentName: string;
}

const text = (max: number) => z.string().trim().min(1).max(max);

/** The strict JSON the model must answer; anything else changes nothing. */
export const MaintenanceAnswer = z.object({
  summary: text(4000),
  topics: z.array(z.object({ topic: text(80), summary: text(2000) })).max(8).default([]),
  profile: z.array(z.object({ kind: z.enum(["fact", "preference", "trait"]), text: text(400) })).max(16).default([]),
  followUps: z
    .array(z.object({ question: text(400), context: text(400), dueInHours: z.number().finite().min(0.25).max(24 * 120) }))
    .max(4)
    .default([]),
  selfNotes: z.array(text(400)).max(6).default([]),
  userNotes: z.array(text(400)).max(6).default([]),
});
export type MaintenanceAnswer = z.infer<typeof MaintenanceAnswer>;

/** Tokens asked for an answer: room for a summary, a few topics and facts. */
export const MAINTENANCE_MAX_TOKENS = 768;

const SYSTEM =
  "You maintain the long-term memory of an AI companion. You read a part of a conversation and answer with " +
  "exactly one JSON object and nothing else: no prose, no code fence.";

/**
 * The system and user prompts for a segment.
 *
 * @example
 * const { system, prompt } = segmentPrompt({ userId: "alice", lines, knownProfile: [], knownTopics: [], agentName: "Mira" })
 */
export function segmentPrompt(request: SegmentRequest): { system: string; prompt: string } {
  const transcript = request.lines
    .map((l) => `[${new Date(l.time).toISOString().slice(0, 16).replace("T", " ")}] ${l.speaker === "agent" ? request.agentName : l.speaker}: ${l.text}`)
    .join("\n");
  const profile = request.knownProfile.length === 0 ? "(nothing yet)" : request.knownProfile.map((f) => `- ${f}`).join("\n");
  const topics =
    request.knownTopics.length === 0 ? "(none yet)" : request.knownTopics.map((t) => `- ${t.topic}: ${t.summary}`).join("\n");
  const prompt = [
    `Conversation between ${request.agentName} (the agent) and ${request.userId}:`,
    transcript,
    "",
    `What is already known about ${request.userId}:`,
    profile,
    "",
    "Topics that already have a summary (reuse a key when the conversation continues that topic; your summary replaces the old one, so state the latest conclusion in full):",
    topics,
    "",
    "Answer with this JSON object:",
    "{",
    '  "summary": "what happened in this part of the conversation, in 1-3 sentences",',
    '  "topics": [{ "topic": "short lowercase key", "summary": "the current conclusion on this topic" }],',
    `  "profile": [{ "kind": "fact" | "preference" | "trait", "text": "something new and lasting about ${request.userId}" }],`,
    `  "followUps": [{ "question": "what ${request.agentName} should ask later", "context": "what ${request.userId} said", "dueInHours": number }],`,
    `  "selfNotes": ["what ${request.agentName} learned about itself or promised"],`,
    `  "userNotes": ["${request.agentName}'s current view of ${request.userId}: mood, situation"]`,
    "}",
    "Use empty arrays when there is nothing. Only add followUps for plans or events with a time.",
  ].join("\n");
  return { system: SYSTEM, prompt };
}

/**
 * Reads the model's answer: the first JSON object in it (a code fence or a sentence around it is
 * tolerated), checked against {@link MaintenanceAnswer} as a whole.
 *
 * @example
 * parseMaintenanceAnswer('{"summary":"They talked about cats."}').topics // []
 * @throws MaintenanceAnswerError when there is no such object or it does not match.
 */
export function parseMaintenanceAnswer(answer: string): MaintenanceAnswer {
  const excerpt = answer.slice(0, 200);
  const start = answer.indexOf("{");
  const end = answer.lastIndexOf("}");
  if (start < 0 || end <= start) throw new MaintenanceAnswerError(["no JSON object"], excerpt);
  let value: unknown;
  try {
    value = JSON.parse(answer.slice(start, end + 1));
  } catch (error) {
    throw new MaintenanceAnswerError([`not JSON: ${error instanceof Error ? error.message : String(error)}`], excerpt);
  }
  const parsed = MaintenanceAnswer.safeParse(value);
  if (!parsed.success) {
    throw new MaintenanceAnswerError(
      parsed.error.issues.slice(0, 5).map((i) => `${i.path.join(".") || "(root)"}: ${i.message}`),
      excerpt,
    );
  }
  return parsed.data;
}

/**
 * Asks the model about one segment and parses its answer.
 *
 * @example
 * const answer = await summarizeSegment(complete, request, { signal })
 * @throws MaintenanceAnswerError for an answer that is not the JSON asked for; whatever `complete` throws.
 */
export async function summarizeSegment(complete: Complete, request: SegmentRequest, options: { signal?: AbortSignal } = {}): Promise<MaintenanceAnswer> {
  const { system, prompt } = segmentPrompt(request);
  const answer = await complete({ system, prompt, maxTokens: MAINTENANCE_MAX_TOKENS, ...(options.signal !== undefined && { signal: options.signal }) });
  options.signal?.throwIfAborted();
  return parseMaintenanceAnswer(answer);
}

/**
 * A topic's key as stored: lowercase words joined by dashes, so "Pets", "pets " and "PETS" are one topic.
 *
 * @example
 * topicKey("Job Search!") // "job-search"
 */
export function topicKey(topic: string): string {
  return (
    topic
      .toLowerCase()
      .normalize("NFKD")
      .replace(/[^\p{L}\p{N}]+/gu, "-")
      .replace(/^-+|-+$/g, "")
      .slice(0, 60) || "general"
  );
}
