/**
 * The model calls memory maintenance makes (summaries, topics, profile updates, follow-ups) go through the same
 * metered path as chat: a ChatSession turn, paid by voucher like any other.
 */
import type { ChatSession, TurnOptions } from "../client/session.js";
import type { Complete } from "./types.js";

/**
 * A `Complete` over a chat session. Give maintenance its own ChatSession (same agent and payer): a chat runs
 * one turn at a time, and the user's turns must never wait behind a summary.
 *
 * @example
 * const background = await openChat({ ...chatOptions, spendingCap: 1_000_000n })
 * const memory = await AgentMemory.open({ vault, embedder, owner, complete: completeThroughChat(background) })
 */
export function completeThroughChat(chat: Pick<ChatSession, "turn">, options: { sampling?: TurnOptions["sampling"] } = {}): Complete {
  return async ({ system, prompt, maxTokens, signal }) => {
    const result = await chat.turn({
      prompt: [
        { role: "system", content: system },
        { role: "user", content: prompt },
      ],
      maxTokens,
      // Greedy by default: a summary should not depend on the sampler's luck.
      sampling: options.sampling ?? { temperature: 0 },
      ...(signal !== undefined && { signal }),
    });
    return result.text;
  };
}
