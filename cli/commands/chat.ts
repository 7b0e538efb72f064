/**
 * `soulmesh chat AGENT`: talk with an agent you own. Interactive by default (a "you> " prompt, the reply
 * streaming as it is generated, one line of tokens and cost after each turn); `--message` sends one turn and
 * exits. Ctrl-C while a reply streams cancels that turn (nothing recorded; the part already delivered is
 * paid, and its cost shown) and the chat goes on; Ctrl-C at an empty prompt, Ctrl-D or /exit ends it, saving
 * the memory, closing the provider sessions (so that they settle now) and publishing the head.
 */
import { createInterface } from "node:readline";
import type { Interface } from "node:readline";
import type { Command } from "commander";
import { InvalidArgumentError } from "commander";
import type { AgentReply, HeadPublished } from "../../sdk/client/agent/agent.js";
import { TurnCancelledError } from "../../sdk/client/agent/errors.js";
import { SoulmeshError } from "../../sdk/errors.js";
import { explainTurnError, openCliAgent, parseAgentId } from "../agent-session.js";
import type { CliAgent } from "../agent-session.js";
import { withContext } from "../context.js";
import type { CommandContext } from "../context.js";
import { plural } from "../output.js";
import { money, parseTokenAmount, showMoney, tokenInfo } from "./escrow.js";
import type { TokenInfo } from "./escrow.js";

/** The agent runtime's default reply length, repeated for the help text. */
const DEFAULT_MAX_TOKENS = 256;

/** What `chat` is told on its command line. */
export interface ChatCommandOptions {
  message?: string;
  maxTokens?: number;
  /** A decimal amount of tokens: the most this chat may spend. */
  maxSpend?: string;
  /** Speak as this user id instead of the owner's address. */
  as?: string;
  confidential?: boolean;
}

/** What {@link runInteractiveChat} takes. */
export interface InteractiveChatOptions {
  /** Reply length per turn (default 256 tokens). */
  maxTokens?: number;
  /** The most the chat may spend (provider share), in token units; default 90% of the deposit (see cli/agent-session.ts). */
  spendingCap?: bigint;
  /** Who speaks (default the owner's address). */
  speaker?: string;
  /** Every message said in confidence. */
  confidential?: boolean;
  /** An agent already opened with {@link openCliAgent}; the chat then closes it at the end. */
  session?: CliAgent;
  /** Where lines are read from and the transcript is written (default stdin and stdout). */
  input?: NodeJS.ReadableStream;
  output?: NodeJS.WritableStream;
}

/** How an interactive chat ended. */
export interface ChatSummary {
  turns: number;
  cancelled: number;
  /** Provider share paid by this chat's agent, in token units. */
  spent: bigint;
  /** The memory head published on close, if it moved. */
  published: HeadPublished | undefined;
}

/** A chat option out of range. */
export class InvalidChatArgumentError extends SoulmeshError {
  override readonly name = "InvalidChatArgumentError";
  constructor(detail: string) {
    super(`${detail}. See \`soulmesh chat --help\`.`);
  }
}

const SLASH_HELP = [
  "/help     this list",
  "/cost     what this chat has spent (provider, royalty and fee), and the cap",
  "/memory   what the agent remembers about you (profile and notebook)",
  "/tokens N longest reply from now on, in tokens",
  "/exit     end the chat (also Ctrl-D, or Ctrl-C at an empty prompt)",
  "Ctrl-C while a reply streams cancels that reply; only the part already delivered is paid.",
].join("\n");

function parsePositiveInt(value: string): number {
  const n = Number(value);
  if (!/^\d+$/.test(value.trim()) || !Number.isSafeInteger(n) || n < 1) throw new InvalidArgumentError("expected a positive integer.");
  return n;
}

/**
 * A short form of an address for one-line displays.
 *
 * @example
 * shortAddress("0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC") // "0x3C44…93BC"
 */
export function shortAddress(address: string): string {
  return /^0x[0-9a-fA-F]{40}$/.test(address) ? `${address.slice(0, 6)}…${address.slice(-4)}` : address;
}

/**
 * The line shown after each reply: tokens, the turn's cost, the chat's total, the provider.
 *
 * @example
 * costLine(reply, { symbol: "tUSD", decimals: 6 }) // "41 in / 12 out tokens · 0.00003 tUSD · total 0.00007 tUSD · provider 0x90F7…b906"
 */
export function costLine(reply: Pick<AgentReply, "billed" | "cost" | "totalSpent" | "provider">, token: Pick<TokenInfo, "symbol" | "decimals">): string {
  return (
    `${reply.billed.inputTokens} in / ${reply.billed.outputTokens} out tokens · ${showMoney(reply.cost, token)} · ` +
    `total ${showMoney(reply.totalSpent, token)} · provider ${shortAddress(reply.provider)}`
  );
}

/**
 * What a cancelled reply cost: the tokens delivered before the cancel, paid as any turn's (full price), and
 * the chat's total. Worded apart from {@link costLine}: no reply was recorded.
 *
 * @example
 * cancelledLine(err, agent.spent, token) // "2 in / 9 out tokens delivered · 0.00002 tUSD · total 0.00009 tUSD"
 */
export function cancelledLine(err: Pick<TurnCancelledError, "billed" | "cost">, totalSpent: bigint, token: Pick<TokenInfo, "symbol" | "decimals">): string {
  return (
    `${err.billed.inputTokens} in / ${err.billed.outputTokens} out tokens delivered · ${showMoney(err.cost, token)} · ` +
    `total ${showMoney(totalSpent, token)}`
  );
}

/** Dims a line on a colour terminal. */
function dim(text: string, stream: NodeJS.WritableStream): string {
  const tty = (stream as { isTTY?: boolean }).isTTY === true && process.env.NO_COLOR === undefined;
  return tty ? `\x1b[2m${text}\x1b[22m` : text;
}

/** What the agent remembers about `userId`: profile facts and notebook entries it may show them. */
export function rememberedAbout(session: CliAgent, userId: string): string {
  const memory = session.agent.memory;
  const facts = memory.profile(userId);
  const isOwner = userId === session.agent.owner;
  const notes = memory.notebook.filter((n) => n.audience === "everyone" || n.givenBy === userId || n.speaker === userId || (isOwner && n.audience === "owner"));
  const lines = [
    facts.length === 0 ? "profile: nothing yet" : "profile:",
    ...facts.map((f) => `  - (${f.kind}) ${f.text}`),
    notes.length === 0 ? "notebook: nothing yet" : "notebook:",
    ...notes.map((n) => `  - ${n.rule ? "[rule] " : ""}${n.text}`),
  ];
  return lines.join("\n");
}

async function resolveSpendingCap(ctx: CommandContext, maxSpend: string | undefined): Promise<{ cap?: bigint; token: TokenInfo }> {
  const token = await tokenInfo(await ctx.contracts());
  return { token, ...(maxSpend !== undefined && { cap: parseTokenAmount(maxSpend, token.decimals) }) };
}

/**
 * Runs the interactive chat with agent `agentId` until the user ends it, then closes the agent (publishing
 * its head) and prints a summary. It handles Ctrl-C itself: create the context with `{ handleSignals: false }`.
 *
 * @example
 * const ctx = commandContext(cmd, { handleSignals: false })
 * try { await runInteractiveChat(ctx, 1n, { maxTokens: 200 }) } finally { await ctx.close() }
 * @throws openCliAgent's errors when the agent cannot be opened; errors of single turns are printed and the chat goes on.
 */
export async function runInteractiveChat(ctx: CommandContext, agentId: bigint, options: InteractiveChatOptions = {}): Promise<ChatSummary> {
  const output = options.output ?? process.stdout;
  const input = options.input ?? process.stdin;
  const say = (text: string): void => void output.write(text);

  // Ctrl-C before the agent is open stops the opening (and the process: nothing to save yet).
  let turn: AbortController | undefined;
  let ending = false;
  let rl: Interface | undefined;
  let endChat: (() => void) | undefined;
  const opening = new AbortController();
  const onInterrupt = (): void => {
    if (turn !== undefined) {
      turn.abort(new Error("cancelled with Ctrl-C"));
      return;
    }
    if (ending) {
      process.stderr.write("stopping at once (second Ctrl-C); the memory head is published next time\n");
      process.exit(130);
    }
    if (endChat === undefined) {
      opening.abort(new Error("interrupted"));
      return;
    }
    if (rl !== undefined && rl.line.length > 0) {
      // Ctrl-C on a half-typed line drops the line, as shells do; a second one at the empty prompt ends.
      rl.write(null, { ctrl: true, name: "u" });
      return;
    }
    say("\n");
    endChat();
  };
  process.on("SIGINT", onInterrupt);
  try {
    const session =
      options.session ??
      (await openCliAgent(ctx, agentId, {
        ...(options.spendingCap !== undefined && { spendingCap: options.spendingCap }),
        ...(options.maxTokens !== undefined && { maxTokens: options.maxTokens }),
        onProgress: (m) => ctx.out.progress(m),
        signal: AbortSignal.any([ctx.signal, opening.signal]),
      }));
    return await chatLoop(session, {
      options,
      input,
      say,
      output,
      setTurn: (t) => (turn = t),
      setEnd: (end, lineReader) => {
        endChat = end;
        rl = lineReader;
      },
      setEnding: () => (ending = true),
      interrupt: onInterrupt,
    });
  } finally {
    process.off("SIGINT", onInterrupt);
  }
}

interface LoopHooks {
  options: InteractiveChatOptions;
  input: NodeJS.ReadableStream;
  output: NodeJS.WritableStream;
  say(text: string): void;
  setTurn(turn: AbortController | undefined): void;
  setEnd(end: () => void, rl: Interface): void;
  setEnding(): void;
  /** The Ctrl-C handler: readline takes Ctrl-C from a terminal itself, as an event rather than a signal. */
  interrupt(): void;
}

async function chatLoop(session: CliAgent, hooks: LoopHooks): Promise<ChatSummary> {
  const { agent, persona, token } = session;
  const { say, output, options } = hooks;
  const name = persona.card.name.trim() === "" ? `agent #${agent.agentId}` : persona.card.name.trim();
  const speaker = options.speaker ?? agent.owner;
  const terminal = (hooks.input as { isTTY?: boolean }).isTTY === true && (output as { isTTY?: boolean }).isTTY === true;
  const rl = createInterface({ input: hooks.input, output, terminal, prompt: "you> " });
  // Lines typed while a reply streams wait their turn; the end of input ends the chat after them.
  const lines: string[] = [];
  let closed = false;
  let wake: (() => void) | undefined;
  rl.on("line", (line) => {
    lines.push(line);
    wake?.();
  });
  rl.on("close", () => {
    closed = true;
    wake?.();
  });
  rl.on("SIGINT", hooks.interrupt);
  const end = (): void => {
    closed = true;
    lines.length = 0;
    wake?.();
  };
  hooks.setEnd(end, rl);

  const loaded = agent.loaded;
  say(
    `Chatting with ${name} (agent #${agent.agentId}, persona #${persona.personaId}); memory: ${loaded.turns} turns` +
      (loaded.from === "new" ? " (a new agent)" : ` loaded from ${loaded.from === "chain" ? "IPFS by the head on chain" : "this machine"}`) +
      ".\nType /help for commands; Ctrl-C cancels a reply; /exit or Ctrl-D ends the chat.\n",
  );

  const nextLine = async (): Promise<string | undefined> => {
    rl.prompt();
    for (;;) {
      if (lines.length > 0) return lines.shift();
      if (closed) return undefined;
      await new Promise<void>((resolve) => (wake = resolve));
      wake = undefined;
    }
  };

  agent.addEventListener("turn:retry", (e) => say(`\n(${shortAddress(e.detail.failed)} failed; the reply starts over with another provider)\n${name}> `));

  let turns = 0;
  let cancelled = 0;
  let maxTokens = options.maxTokens;
  for (;;) {
    const line = await nextLine();
    if (line === undefined) break;
    const message = line.trim();
    if (message === "") continue;
    if (message.startsWith("/")) {
      const command = message.split(/\s+/)[0]!.toLowerCase();
      if (command === "/exit" || command === "/quit") break;
      if (command === "/help") say(`${SLASH_HELP}\n`);
      else if (command === "/cost") {
        say(`spent ${showMoney(agent.spent, token)} of a cap of ${showMoney(session.spendingCap, token)} in ${turns} turns (provider, royalty and fee)\n`);
      } else if (command === "/memory") say(`${rememberedAbout(session, speaker)}\n`);
      else if (command === "/tokens") {
        const n = Number(message.split(/\s+/)[1]);
        if (Number.isSafeInteger(n) && n > 0) {
          maxTokens = n;
          say(`replies now stop at ${n} tokens\n`);
        } else say(`/tokens takes a positive number; replies stop at ${maxTokens ?? DEFAULT_MAX_TOKENS} tokens\n`);
      }
      else say(`unknown command ${command}; /help lists them\n`);
      continue;
    }
    const controller = new AbortController();
    hooks.setTurn(controller);
    say(`${name}> `);
    try {
      const reply = await agent.send(message, {
        speaker,
        ...(options.confidential === true && { confidential: true }),
        ...(maxTokens !== undefined && { maxTokens }),
        onToken: (t) => say(t),
        signal: controller.signal,
      });
      turns++;
      say(`\n${dim(costLine(reply, token), output)}\n`);
    } catch (err) {
      if (err instanceof TurnCancelledError) {
        cancelled++;
        say(`\n(cancelled)${err.cost > 0n ? ` ${dim(cancelledLine(err, agent.spent, token), output)}` : ""}\n`);
      } else {
        const explained = explainTurnError(err);
        say(`\nerror: ${explained instanceof Error ? explained.message : String(explained)}\n`);
      }
    } finally {
      hooks.setTurn(undefined);
    }
  }

  hooks.setEnding();
  rl.close();
  say("saving the memory and publishing its head…\n");
  const { published } = await session.close();
  const head = agent.vault.head;
  say(
    `Chat ended: ${plural(turns, "turn")}${cancelled > 0 ? ` (${cancelled} cancelled)` : ""}, spent ${showMoney(agent.spent, token)}. ` +
      (published !== undefined
        ? `Memory head ${published.cid} (#${published.seq}) published on chain.\n`
        : head !== undefined
          ? `Memory head ${head.cid.toString()} (#${head.seq}) unchanged on chain.\n`
          : "No memory yet.\n"),
  );
  return { turns, cancelled, spent: agent.spent, published };
}

/** One turn: the reply streamed to stdout (or one JSON object), the cost line on stderr. */
async function runSingleTurn(ctx: CommandContext, agentId: bigint, opts: ChatCommandOptions, cap: bigint | undefined): Promise<void> {
  const session = await openCliAgent(ctx, agentId, {
    ...(cap !== undefined && { spendingCap: cap }),
    ...(opts.maxTokens !== undefined && { maxTokens: opts.maxTokens }),
    // One turn never closes a segment: no maintenance chat to open and pay for.
    maintenance: false,
    onProgress: (m) => ctx.out.progress(m),
    signal: ctx.signal,
  });
  let published: HeadPublished | undefined;
  let reply: AgentReply;
  try {
    reply = await session.agent.send(opts.message!, {
      ...(opts.as !== undefined && { speaker: opts.as }),
      ...(opts.confidential === true && { confidential: true }),
      ...(!ctx.json && { onToken: (t: string) => void process.stdout.write(t) }),
      signal: ctx.signal,
    });
  } catch (err) {
    throw explainTurnError(err);
  } finally {
    ({ published } = await session.close());
  }
  const { token, agent } = session;
  const head = agent.vault.head;
  if (!ctx.json) {
    process.stdout.write("\n");
    ctx.out.progress(costLine(reply, token));
    return;
  }
  ctx.out.result(
    {
      agentId: agent.agentId,
      reply: reply.reply,
      usage: reply.usage,
      billed: reply.billed,
      cost: money(reply.cost, token),
      totalSpent: money(reply.totalSpent, token),
      provider: reply.provider,
      stopReason: reply.stopReason,
      turns: agent.history().length,
      head:
        head === undefined
          ? null
          : {
              cid: head.cid.toString(),
              seq: head.seq,
              published: published !== undefined || BigInt(head.seq) <= agent.publishedSeq,
              ...(published !== undefined && { transactionHash: published.transactionHash }),
            },
    },
    reply.reply,
  );
}

async function runChat(cmd: Command, agentId: bigint, opts: ChatCommandOptions): Promise<void> {
  if (opts.message !== undefined) {
    if (opts.message.trim() === "") throw new InvalidChatArgumentError("--message is empty: give the text to send");
    // Ctrl-C aborts the context's signal: the turn is cancelled (what was delivered paid), the session closed.
    await withContext(cmd, async (ctx) => {
      const { cap } = await resolveSpendingCap(ctx, opts.maxSpend);
      await runSingleTurn(ctx, agentId, opts, cap);
    });
    return;
  }
  await withContext(
    cmd,
    async (ctx) => {
      if (ctx.json) throw new InvalidChatArgumentError("--json needs --message: an interactive chat prints a transcript, not JSON");
      const { cap } = await resolveSpendingCap(ctx, opts.maxSpend);
      await runInteractiveChat(ctx, agentId, {
        ...(cap !== undefined && { spendingCap: cap }),
        ...(opts.maxTokens !== undefined && { maxTokens: opts.maxTokens }),
        ...(opts.as !== undefined && { speaker: opts.as }),
        ...(opts.confidential === true && { confidential: true }),
      });
    },
    { handleSignals: false },
  );
}

/** Registers `soulmesh chat AGENT`. */
export function registerChat(program: Command): void {
  program
    .command("chat")
    .description("Chat with an agent you own: streamed replies, the cost of each turn, memory kept on IPFS")
    .argument("<agent>", "the agent's id (see `soulmesh agent list`)", parseAgentId)
    .option("-m, --message <text>", "send one message, print the reply and exit")
    .option("--max-tokens <n>", `longest reply, in tokens (default ${DEFAULT_MAX_TOKENS})`, parsePositiveInt)
    .option("--max-spend <amount>", "the most this chat may spend, provider, royalty and fee together, in tokens such as 0.5 (default: 90% of your escrow funds)")
    .option("--as <name>", "speak as another user of a shared agent (default: you, the owner)")
    .option("--confidential", "say it in confidence: the agent never repeats it to anyone else", false)
    .addHelpText(
      "after",
      `
Examples:
  $ soulmesh chat 1                                 # interactive; /help inside lists the commands
  $ soulmesh chat 1 --message "Hi! What do you remember about me?"
  $ soulmesh chat 1 -m "Summarize our last talk" --max-tokens 400 --json
  $ soulmesh chat 7 --max-spend 0.5 --account savings

In the chat: Ctrl-C cancels the reply being written (only what was delivered is paid); Ctrl-C at an empty
prompt, Ctrl-D or /exit ends the chat, saving the memory to IPFS and publishing its head on chain.`,
    )
    .action((agentId: bigint, opts: ChatCommandOptions, cmd: Command) => runChat(cmd, agentId, opts));
}
