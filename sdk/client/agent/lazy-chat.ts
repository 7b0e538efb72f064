import type { ChatSession } from "../session.js";

/**
 * A chat opened on first use: finding and quoting providers costs round trips that an agent opened only to
 * read its memory, or whose maintenance never runs, should not pay. A failed open is tried again next time.
 *
 * @example
 * const chat = new LazyChat((signal) => openChat({ ...options, signal }))
 * const { text } = await (await chat.get(signal)).turn({ prompt: "Hi", maxTokens: 64 })
 * await chat.close()
 */
export class LazyChat {
  readonly #open: (signal: AbortSignal | undefined) => Promise<ChatSession>;
  #pending: Promise<ChatSession> | undefined;
  #chat: ChatSession | undefined;
  #closed = false;

  constructor(open: (signal: AbortSignal | undefined) => Promise<ChatSession>) {
    this.#open = open;
  }

  /** The chat, opened now if it is not yet. */
  async get(signal?: AbortSignal): Promise<ChatSession> {
    if (this.#chat !== undefined) return this.#chat;
    if (this.#pending === undefined) {
      const run = this.#open(signal);
      this.#pending = run;
      run.then(
        (chat) => {
          // Closed while it opened: nobody will close it later.
          if (this.#closed) void chat.close();
          else this.#chat = chat;
        },
        () => {
          if (this.#pending === run) this.#pending = undefined;
        },
      );
    }
    return this.#pending;
  }

  /** The chat if it is open. */
  get current(): ChatSession | undefined {
    return this.#chat;
  }

  /** Provider share paid so far (0 before the chat opens). */
  get spent(): bigint {
    return this.#chat?.spent ?? 0n;
  }

  /** Closes the chat (its provider sessions closed too, see ChatSession.close); never fails. */
  async close(): Promise<void> {
    this.#closed = true;
    await this.#chat?.close();
  }
}
