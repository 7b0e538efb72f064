/**
 * `soulmesh serve --agent ID`: an OpenAI-compatible endpoint on this machine in front of an agent you own, so
 * any OpenAI client (SDKs, chat apps, editors) talks to it, with its memory, paying per token through the
 * network. Runs until Ctrl-C, then saves the memory and publishes its head.
 */
import type { Command } from "commander";
import { InvalidArgumentError } from "commander";
import { SoulmeshError } from "../../sdk/errors.js";
import { openCliAgent, parseAgentId } from "../agent-session.js";
import { withContext } from "../context.js";
import type { CommandContext } from "../context.js";
import { normalizeOrigin } from "../serve/cors.js";
import { createOpenAiGateway } from "../serve/openai-gateway.js";
import { cancelledLine, costLine } from "./chat.js";
import { money, parseTokenAmount, showMoney, tokenInfo } from "./escrow.js";
import { parsePort } from "./options.js";

/** Default port, the one llama.cpp's server uses, which many OpenAI-compatible clients try first. */
const DEFAULT_PORT = 8080;

/** What `serve` is told on its command line. */
export interface ServeCommandOptions {
  agent: bigint;
  port: number;
  host: string;
  /** Name of the environment variable holding the API key clients must send. */
  apiKeyEnv?: string;
  /** A decimal amount of tokens: the most the gateway's turns may spend. */
  maxSpend?: string;
  maxTokens?: number;
  /** Web origins whose pages may call the gateway (`--cors-origin`, repeated), `*` for any. */
  corsOrigin: string[];
}

/** A `serve` option that cannot work; nothing was started. */
export class InvalidServeArgumentError extends SoulmeshError {
  override readonly name = "InvalidServeArgumentError";
  constructor(detail: string) {
    super(`${detail}. See \`soulmesh serve --help\`.`);
  }
}

function parsePositiveInt(value: string): number {
  const n = Number(value);
  if (!/^\d+$/.test(value.trim()) || !Number.isSafeInteger(n) || n < 1) throw new InvalidArgumentError("expected a positive integer.");
  return n;
}

/**
 * Reads one `--cors-origin` and adds it to those before.
 *
 * @example
 * parseCorsOrigin("http://localhost:5173/", []) // ["http://localhost:5173"]
 * @throws InvalidArgumentError for anything but `scheme://host[:port]` or `*`.
 */
export function parseCorsOrigin(value: string, previous: string[] = []): string[] {
  const origin = normalizeOrigin(value);
  if (origin === undefined) {
    throw new InvalidArgumentError("expected a web page's origin, scheme://host[:port] without a path (e.g. http://localhost:3000), or * for any.");
  }
  return previous.includes(origin) ? previous : [...previous, origin];
}

/** Whether `host` is reachable from this machine only. */
function isLoopback(host: string): boolean {
  return host === "localhost" || host === "::1" || /^127\.\d+\.\d+\.\d+$/.test(host);
}

/**
 * The API key from the environment variable named by `--api-key-env`, checked before anything opens.
 *
 * @example
 * apiKeyFrom({ apiKeyEnv: "SOULMESH_API_KEY", host: "127.0.0.1" }) // process.env.SOULMESH_API_KEY
 * @throws InvalidServeArgumentError for an unset variable, or a host open to the network without a key.
 */
export function apiKeyFrom(opts: Pick<ServeCommandOptions, "apiKeyEnv" | "host">, env: NodeJS.ProcessEnv = process.env): string | undefined {
  if (opts.apiKeyEnv === undefined) {
    if (!isLoopback(opts.host)) {
      throw new InvalidServeArgumentError(
        `Serving on ${opts.host} without an API key would let anyone who reaches it spend your deposit: ` +
          "set one with --api-key-env VAR (export VAR=a-long-secret first), or keep the default --host 127.0.0.1",
      );
    }
    return undefined;
  }
  const key = env[opts.apiKeyEnv];
  if (key === undefined || key.trim() === "") {
    throw new InvalidServeArgumentError(`The environment variable ${opts.apiKeyEnv} (from --api-key-env) is not set: export ${opts.apiKeyEnv}=a-long-secret first`);
  }
  return key.trim();
}

/** The examples printed once the gateway listens. */
function usageText(baseUrl: string, model: string, apiKeyEnv: string | undefined): string[] {
  const auth = apiKeyEnv !== undefined ? ` -H "Authorization: Bearer $${apiKeyEnv}"` : "";
  const key = apiKeyEnv !== undefined ? `process.env.${apiKeyEnv}` : `"unused"`;
  return [
    "Try it:",
    `  curl ${baseUrl}/chat/completions -H 'content-type: application/json'${auth} \\`,
    `    -d '{"model":"${model}","messages":[{"role":"user","content":"Hello!"}]}'`,
    "",
    `  import OpenAI from "openai"`,
    `  const openai = new OpenAI({ baseURL: "${baseUrl}", apiKey: ${key} })`,
    `  const r = await openai.chat.completions.create({ model: "${model}", messages: [{ role: "user", content: "Hello!" }] })`,
  ];
}

async function runServe(ctx: CommandContext, opts: ServeCommandOptions): Promise<void> {
  const apiKey = apiKeyFrom(opts);
  const token = await tokenInfo(await ctx.contracts());
  const spendingCap = opts.maxSpend !== undefined ? parseTokenAmount(opts.maxSpend, token.decimals) : undefined;
  const session = await openCliAgent(ctx, opts.agent, {
    ...(spendingCap !== undefined && { spendingCap }),
    ...(opts.maxTokens !== undefined && { maxTokens: opts.maxTokens }),
    onProgress: (m) => ctx.out.progress(m),
    signal: ctx.signal,
  });
  try {
    const { agent } = session;
    const model = `soulmesh-agent-${opts.agent}`;
    const gateway = await createOpenAiGateway({
      agent,
      model,
      port: opts.port,
      host: opts.host,
      ...(apiKey !== undefined && { apiKey }),
      corsOrigins: opts.corsOrigin,
      signal: ctx.signal,
    });
    agent.addEventListener("turn:done", (e) => ctx.out.progress(`turn: ${costLine(e.detail, token)}`));
    agent.addEventListener("turn:cancelled", (e) =>
      ctx.out.progress(`turn cancelled: ${e.detail.paid ? cancelledLine(e.detail, e.detail.totalSpent, token) : "nothing paid"}`),
    );
    agent.addEventListener("head:published", (e) => ctx.out.progress(`memory head #${e.detail.seq} published (${e.detail.cid})`));
    gateway.addEventListener("request:failed", (e) => {
      const { method, path, status, error } = e.detail;
      ctx.out.progress(`${method} ${path} → ${status}: ${error instanceof Error ? error.message : String(error)}`);
    });
    const baseUrl = `${gateway.url}/v1`;
    ctx.out.result(
      {
        agentId: opts.agent,
        persona: { id: session.persona.personaId, name: session.persona.card.name },
        model,
        url: gateway.url,
        baseUrl,
        apiKey: apiKey !== undefined ? { env: opts.apiKeyEnv } : null,
        corsOrigins: opts.corsOrigin,
        spendingCap: money(session.spendingCap, token),
      },
      [
        `Serving agent #${opts.agent} (${session.persona.card.name}) as an OpenAI-compatible API at ${baseUrl}`,
        `  model:        ${model}`,
        `  API key:      ${apiKey !== undefined ? `required, the value of $${opts.apiKeyEnv}` : "none (this machine only)"}`,
        `  spending cap: ${showMoney(session.spendingCap, token)}`,
        `  web pages:    ${opts.corsOrigin.length > 0 ? `${opts.corsOrigin.includes("*") ? "any origin" : opts.corsOrigin.join(", ")} (CORS)` : "none (add --cors-origin to let a browser app call it)"}`,
        "",
        ...usageText(baseUrl, model, apiKey !== undefined ? opts.apiKeyEnv : undefined),
        "",
        "Each request sends only its last user message: the agent keeps its own memory and history.",
        "Press Ctrl-C to stop (the memory is saved and its head published).",
      ].join("\n"),
    );
    if (!ctx.signal.aborted) await new Promise((resolve) => ctx.signal.addEventListener("abort", resolve, { once: true }));
    ctx.out.progress("stopping: saving the memory and publishing its head…");
    await gateway.close();
  } finally {
    // Publishing the head on close shows through the agent's head:published event above.
    await session.close();
  }
}

/** Registers `soulmesh serve`. */
export function registerServe(program: Command): void {
  program
    .command("serve")
    .description("Serve an agent you own as an OpenAI-compatible API (/v1/chat/completions, /v1/models) on this machine")
    .requiredOption("--agent <id>", "the agent to serve (see `soulmesh agent list`)", parseAgentId)
    .option("--port <port>", "TCP port (0 picks a free one)", parsePort, DEFAULT_PORT)
    .option("--host <host>", "interface to listen on; anything but loopback requires --api-key-env", "127.0.0.1")
    .option("--api-key-env <var>", "require `Authorization: Bearer <key>`, the key read from this environment variable")
    .option("--max-spend <amount>", "the most the served turns may spend, provider, royalty and fee together, in tokens such as 0.5 (default: 90% of your escrow funds; each session is also bounded by the funds read live)")
    .option("--max-tokens <n>", "reply length when a request sets no max_tokens (default 256)", parsePositiveInt)
    .option(
      "--cors-origin <origin>",
      "let web pages from this origin (e.g. http://localhost:3000; * for any) call the API from a browser (repeat for several; default none)",
      parseCorsOrigin,
      [],
    )
    .addHelpText(
      "after",
      `
Examples:
  $ soulmesh serve --agent 7                         # http://127.0.0.1:8080/v1, model soulmesh-agent-7
  $ soulmesh serve --agent 7 --port 0 --json         # a free port; prints the URL as one JSON object
  $ export SOULMESH_API_KEY=$(openssl rand -hex 16)
  $ soulmesh serve --agent 7 --api-key-env SOULMESH_API_KEY --max-spend 2
  $ soulmesh serve --agent 7 --cors-origin http://localhost:3000   # a chat web UI on that port may call it

Then point any OpenAI client at the base URL with the model id shown, e.g.
  $ curl http://127.0.0.1:8080/v1/chat/completions -H 'content-type: application/json' \\
      -d '{"model":"soulmesh-agent-7","messages":[{"role":"user","content":"Hello!"}],"stream":true}'

Each request is one turn of the agent: only the last message (the user's) is sent, since the agent keeps
its own memory; earlier messages and system prompts are ignored (the persona is the system prompt). The
request's \`user\` field, when set, is the speaker: the agent keeps each speaker's memories apart.
\`temperature\` and \`top_p\` are accepted but the provider samples with its own settings. Turns run one at
a time, others wait in line. A client that disconnects mid-reply cancels its turn: nothing is recorded,
and only the part already delivered is paid. Stopping closes the provider sessions, so that they settle now.

Browsers: requests from a web page (they carry an Origin header) are refused unless --cors-origin allows
that page's origin; allowed ones get CORS headers and their preflights are answered. --cors-origin '*'
lets any web site you visit call it (and spend, unless it needs an API key): prefer the exact origin.`,
    )
    .action((opts: ServeCommandOptions, cmd: Command) => withContext(cmd, (ctx) => runServe(ctx, opts)));
}
