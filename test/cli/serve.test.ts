/**
 * The OpenAI-compatible gateway over a real agent on the real test network (EDR chain, provider protocols over
 * libp2p on the tiny model), driven by the official `openai` client: completions streamed and not match what
 * the agent recorded and was paid for, bad requests get the client's typed errors and change nothing, the API
 * key is enforced, and a client that goes away mid-stream cancels its turn (nothing recorded; what was
 * delivered paid, so that the provider serves the next turn). CORS:
 * allowed web origins get their preflights answered and every answer marked, others (and all, without
 * --cors-origin) are refused, checked with fetch and from a real Chromium page on another loopback port.
 */
import { mkdtemp, rm } from "node:fs/promises";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { parseEther, Wallet } from "ethers";
import { InvalidArgumentError } from "commander";
import type { Browser } from "playwright-core";
import { tmpdir } from "node:os";
import { join } from "node:path";
import OpenAI, { APIError, AuthenticationError, BadRequestError, NotFoundError } from "openai";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { connectContracts } from "../../sdk/chain/contracts.js";
import { openAgent, type Agent, type AgentReply, type OpenAgentOptions } from "../../sdk/client/index.js";
import { parseCharacterCard } from "../../sdk/memory/persona/card.js";
import type { Embedder } from "../../sdk/memory/retrieval/embedder.js";
import { InvalidGatewayOptionsError, OpenAiRequestError } from "../../cli/serve/errors.js";
import { normalizeOrigin } from "../../cli/serve/cors.js";
import { createOpenAiGateway, type OpenAiGateway } from "../../cli/serve/openai-gateway.js";
import { TurnQueue } from "../../cli/serve/turn-queue.js";
import { apiKeyFrom, InvalidServeArgumentError, parseCorsOrigin } from "../../cli/commands/serve.js";
import { CHROMIUM_MISSING, hasChromium, launchChromium } from "../dashboard/browser.js";
import { hashEmbedder } from "../helpers/hash-embedder.js";
import { MemoryBlockStore } from "../helpers/memory-block-store.js";
import { USD } from "../helpers/soulmesh.js";
import { startTestNetwork, type TestNetwork } from "../helpers/test-network.js";


const card = parseCharacterCard({
  spec: "chara_card_v2",
  spec_version: "2.0",
  data: { name: "Mira", description: "A curious fox who remembers everything.", personality: "warm", scenario: "", first_mes: "", mes_example: "" },
});

let net: TestNetwork;
let root: string;
let agent: Agent;
let gateway: OpenAiGateway;
let client: OpenAI;
let model: string;
const done: AgentReply[] = [];
let dirs = 0;

async function agentOptions(rest: Partial<OpenAgentOptions> & { modelSha256?: string } = {}): Promise<OpenAgentOptions> {
  const { modelSha256 = net.fx.base.sha256, ...others } = rest;
  const personaId = await net.f.createPersona(net.creator, { adapterSha256: `0x${"00".repeat(32)}`, baseModelHash: modelSha256 });
  const agentId = await net.f.mintAgent(net.payer, personaId);
  return {
    libp2p: await net.client.start(),
    contracts: connectContracts(net.f.deployment, net.chain.provider),
    signer: net.payer,
    escrow: net.escrow,
    agentId,
    store: new MemoryBlockStore(),
    dataDir: join(root, `agent-${++dirs}`),
    persona: { personaId, card, modelSha256 },
    embedder: hashEmbedder,
    spendingCap: 5n * USD,
    maxTokens: 12,
    memoryBudget: 300,
    personaBudget: 100,
    maintenance: false,
    publishHead: false,
    chat: { stallTimeoutMs: 20_000 },
    ...others,
  };
}

function openai(url: string, apiKey = "unused"): OpenAI {
  return new OpenAI({ baseURL: `${url}/v1`, apiKey, maxRetries: 0, timeout: 30_000 });
}

beforeAll(async () => {
  net = await startTestNetwork();
  root = await mkdtemp(join(tmpdir(), "soulmesh-serve-"));
  agent = await openAgent(await agentOptions());
  agent.addEventListener("turn:done", (e) => done.push(e.detail));
  model = `soulmesh-agent-${agent.agentId}`;
  gateway = await createOpenAiGateway({ agent, model, port: 0 });
  client = openai(gateway.url);
}, 120_000);

afterAll(async () => {
  await gateway?.close();
  await agent?.close();
  await net?.stop();
  if (root) await rm(root, { recursive: true, force: true });
});

/** What must not move when a request is refused. */
function snapshot(): { turns: number; spent: bigint; done: number } {
  return { turns: agent.memory.turns.length, spent: agent.spent, done: done.length };
}

describe("OpenAI gateway", () => {
  it("lists and retrieves its one model", async () => {
    const page = await client.models.list();
    expect(page.data).toEqual([{ id: model, object: "model", created: expect.any(Number), owned_by: "soulmesh" }]);
    expect(await client.models.retrieve(model)).toMatchObject({ id: model, object: "model", owned_by: "soulmesh" });
    const err = await client.models.retrieve("gpt-4o").catch((e: unknown) => e);
    expect(err).toBeInstanceOf(NotFoundError);
    expect((err as APIError).code).toBe("model_not_found");
  });

  it("answers a completion with the reply the agent recorded and the usage it paid for, sending only the last message", async () => {
    const before = snapshot();
    const { data, response } = await client.chat.completions
      .create({
        model,
        messages: [
          { role: "system", content: "You are a pirate." },
          { role: "user", content: "Earlier message the agent already has." },
          { role: "assistant", content: "Earlier reply." },
          { role: "user", content: [{ type: "text", text: "My cat is called Miso." }] },
        ],
        max_tokens: 10,
      })
      .withResponse();
    expect(response.headers.get("x-soulmesh-ignored-messages")).toBe("3");
    const turn = done.at(-1)!;
    expect(done.length).toBe(before.done + 1);
    expect(data.object).toBe("chat.completion");
    expect(data.model).toBe(model);
    expect(data.choices).toHaveLength(1);
    expect(data.choices[0]!.message).toMatchObject({ role: "assistant", content: turn.reply });
    expect(data.choices[0]!.finish_reason).toBe(turn.stopReason === "length" ? "length" : "stop");
    expect(data.usage).toMatchObject({
      prompt_tokens: turn.usage.inputTokens,
      completion_tokens: turn.usage.outputTokens,
      total_tokens: turn.usage.inputTokens + turn.usage.outputTokens,
    });
    expect(turn.usage.outputTokens).toBeLessThanOrEqual(10);
    expect(response.headers.get("x-soulmesh-cost")).toBe(turn.cost.toString());
    // Only the last message became a turn: the agent's own history is the source of truth.
    const history = agent.history().slice(before.turns);
    expect(history.map((t) => [t.role, t.text])).toEqual([["user", "My cat is called Miso."], ["assistant", turn.reply]]);
    expect(agent.spent).toBe(before.spent + turn.cost);
  }, 30_000);

  it("streams the reply as it comes, then the finish reason and the usage", async () => {
    const before = snapshot();
    const stream = await client.chat.completions.create({
      model,
      messages: [{ role: "user", content: "What is my cat called?" }],
      stream: true,
      stream_options: { include_usage: true },
    });
    const chunks: OpenAI.Chat.Completions.ChatCompletionChunk[] = [];
    for await (const chunk of stream) chunks.push(chunk);
    const turn = done.at(-1)!;
    expect(done.length).toBe(before.done + 1);
    expect(chunks.every((c) => c.object === "chat.completion.chunk" && c.model === model && c.id === chunks[0]!.id)).toBe(true);
    expect(chunks[0]!.choices[0]!.delta.role).toBe("assistant");
    const content = chunks.flatMap((c) => c.choices.map((ch) => ch.delta.content ?? "")).join("");
    expect(content).toBe(turn.reply);
    expect(agent.history().at(-1)!.text).toBe(content);
    // More than one content chunk: tokens were streamed, not sent at the end.
    expect(chunks.filter((c) => (c.choices[0]?.delta.content ?? "") !== "").length).toBeGreaterThan(1);
    const finishes = chunks.filter((c) => c.choices[0]?.finish_reason != null);
    expect(finishes).toHaveLength(1);
    expect(finishes[0]!.choices[0]!.finish_reason).toBe(turn.stopReason === "length" ? "length" : "stop");
    const last = chunks.at(-1)!;
    expect(last.choices).toEqual([]);
    expect(last.usage).toMatchObject({ prompt_tokens: turn.usage.inputTokens, completion_tokens: turn.usage.outputTokens });

    // Without include_usage no chunk carries one.
    const plain = await client.chat.completions.create({ model, messages: [{ role: "user", content: "Thanks!" }], stream: true, user: "alice" });
    const plainChunks: OpenAI.Chat.Completions.ChatCompletionChunk[] = [];
    for await (const chunk of plain) plainChunks.push(chunk);
    expect(plainChunks.some((c) => c.usage != null)).toBe(false);
    expect(plainChunks.map((c) => c.choices[0]?.delta.content ?? "").join("")).toBe(done.at(-1)!.reply);
    // The request's `user` is the speaker, whose memories the agent keeps apart; the owner otherwise.
    expect(agent.history().at(-2)).toMatchObject({ role: "user", text: "Thanks!", speaker: "alice" });
    expect(agent.history().at(-4)).toMatchObject({ role: "user", text: "What is my cat called?", speaker: agent.owner });
  }, 30_000);

  it("refuses bad requests with the client's typed errors, changing nothing", async () => {
    const before = snapshot();
    const refused = async (request: Promise<unknown>): Promise<APIError> => {
      const err = await request.catch((e: unknown) => e);
      expect(err).toBeInstanceOf(APIError);
      return err as APIError;
    };
    const json = await refused(client.post("/chat/completions", { body: "{not json", headers: { "content-type": "application/json" } }));
    expect(json).toBeInstanceOf(BadRequestError);
    expect(json.code).toBe("invalid_json");

    const empty = await refused(client.chat.completions.create({ model, messages: [] }));
    expect(empty).toBeInstanceOf(BadRequestError);
    expect(empty.param).toBe("messages");

    const noUser = await refused(client.chat.completions.create({ model, messages: [{ role: "system", content: "Be brief." }] }));
    expect(noUser).toBeInstanceOf(BadRequestError);
    expect(noUser.message).toMatch(/last message must be the user's/);

    const blank = await refused(client.chat.completions.create({ model, messages: [{ role: "user", content: "   " }] }));
    expect(blank).toBeInstanceOf(BadRequestError);

    const image = await refused(
      client.chat.completions.create({ model, messages: [{ role: "user", content: [{ type: "image_url", image_url: { url: "https://x/y.png" } }] }] }),
    );
    expect(image).toBeInstanceOf(BadRequestError);

    const badMax = await refused(client.chat.completions.create({ model, messages: [{ role: "user", content: "Hi" }], max_tokens: 0 }));
    expect(badMax).toBeInstanceOf(BadRequestError);
    expect(badMax.param).toBe("max_tokens");

    const unknown = await refused(client.chat.completions.create({ model: "gpt-4o", messages: [{ role: "user", content: "Hi" }], stream: true }));
    expect(unknown).toBeInstanceOf(NotFoundError);
    expect(unknown.code).toBe("model_not_found");

    const big = await refused(client.chat.completions.create({ model, messages: [{ role: "user", content: "x".repeat(1_100_000) }] }));
    expect(big.status).toBe(413);

    const wrongMethod = await fetch(`${gateway.url}/v1/chat/completions`);
    expect(wrongMethod.status).toBe(405);
    expect(wrongMethod.headers.get("allow")).toBe("POST");
    expect(await wrongMethod.json()).toMatchObject({ error: { type: "invalid_request_error", code: "method_not_allowed" } });
    const nowhere = await fetch(`${gateway.url}/v1/embeddings`, { method: "POST", body: "{}" });
    expect(nowhere.status).toBe(404);
    expect(await nowhere.json()).toMatchObject({ error: { code: "unknown_url", param: null } });

    expect(snapshot()).toEqual(before);
  }, 30_000);

  it("enforces its API key when it has one", async () => {
    const keyed = await createOpenAiGateway({ agent, model, apiKey: "sk-local-secret" });
    try {
      for (const key of ["wrong", "sk-local-secre", "sk-local-secretX"]) {
        const err = await openai(keyed.url, key).models.list().catch((e: unknown) => e);
        expect(err).toBeInstanceOf(AuthenticationError);
        expect((err as APIError).code).toBe("invalid_api_key");
      }
      const noKey = await fetch(`${keyed.url}/v1/models`);
      expect(noKey.status).toBe(401);
      // Authorization comes before anything else: an unknown path does not tell it exists or not.
      expect((await fetch(`${keyed.url}/v1/nothing`)).status).toBe(401);
      const page = await openai(keyed.url, "sk-local-secret").models.list();
      expect(page.data.map((m) => m.id)).toEqual([model]);
    } finally {
      await keyed.close();
    }
  });

  it("cancels the turn of a client that goes away mid-stream (what was delivered paid, nothing recorded), and the next request works", async () => {
    const before = snapshot();
    const cancelled: bigint[] = [];
    agent.addEventListener("turn:cancelled", (e) => cancelled.push(e.detail.cost), { once: true });
    const stream = await client.chat.completions.create({
      model,
      messages: [{ role: "user", content: "Tell me a long story about the sea." }],
      stream: true,
      max_tokens: 48,
    });
    let contentChunks = 0;
    for await (const chunk of stream) {
      if ((chunk.choices[0]?.delta.content ?? "") !== "") contentChunks++;
      if (contentChunks === 1) break; // the client aborts its request
    }
    expect(contentChunks).toBe(1);

    // Queued behind the cancelled turn, then served.
    const r = await client.chat.completions.create({ model, messages: [{ role: "user", content: "Are you still there?" }] });
    expect(done.length).toBe(before.done + 1);
    const turn = done.at(-1)!;
    expect(r.choices[0]!.message.content).toBe(turn.reply);
    expect(agent.history().slice(before.turns).map((t) => t.text)).toEqual(["Are you still there?", turn.reply]);
    // The cancelled turn's delivered part was paid (else the provider would refuse the payer's next turns).
    expect(cancelled).toHaveLength(1);
    expect(cancelled[0]).toBeGreaterThan(0n);
    expect(agent.spent).toBe(before.spent + cancelled[0]! + turn.cost);
  }, 30_000);

  it("serves concurrent requests one after the other", async () => {
    const before = snapshot();
    const ask = (content: string) => client.chat.completions.create({ model, messages: [{ role: "user", content }] });
    const [a, b] = await Promise.all([ask("First question."), ask("Second question.")]);
    expect(done.length).toBe(before.done + 2);
    expect(new Set([a.choices[0]!.message.content, b.choices[0]!.message.content])).toEqual(new Set(done.slice(-2).map((d) => d.reply)));
    expect(agent.history().slice(before.turns).filter((t) => t.role === "user").map((t) => t.text).sort()).toEqual(["First question.", "Second question."]);
  }, 30_000);

  it("answers 402 when the funds cannot pay a turn and 503 when no provider serves its model, paying nothing", async () => {
    // A cap above the funds is only a ceiling (each session is bounded by the lane read live, issue 14's
    // attack 14): what answers 402 is a payer whose lane, free deposit and wallet cannot pay one turn.
    const poorWallet = new Wallet(Wallet.createRandom().privateKey, net.chain.provider);
    await (await net.chain.wallets[0]!.sendTransaction({ to: poorWallet.address, value: parseEther("1") })).wait();
    await net.f.deposit(poorWallet, 5n);
    const poorOptions = await agentOptions({ connect: false });
    const poorAgentId = await net.f.mintAgent(poorWallet, poorOptions.persona.personaId);
    const broke = await openAgent({ ...poorOptions, signer: poorWallet, agentId: poorAgentId, spendingCap: 1_000_000n * USD });
    const orphan = await openAgent(await agentOptions({ modelSha256: `0x${"ab".repeat(32)}`, connect: false }));
    const gateways = await Promise.all([
      createOpenAiGateway({ agent: broke, model: "broke" }),
      createOpenAiGateway({ agent: orphan, model: "orphan" }),
    ]);
    try {
      const [poor, lonely] = gateways.map((g) => openai(g.url));
      const escrow = await poor!.chat.completions.create({ model: "broke", messages: [{ role: "user", content: "Hi" }], stream: true }).catch((e: unknown) => e);
      expect(escrow).toBeInstanceOf(APIError);
      expect((escrow as APIError).status).toBe(402);
      expect((escrow as APIError).type).toBe("insufficient_quota");
      expect((escrow as APIError).message).toMatch(/soulmesh deposit/);

      const none = await lonely!.chat.completions.create({ model: "orphan", messages: [{ role: "user", content: "Hi" }] }).catch((e: unknown) => e);
      expect(none).toBeInstanceOf(APIError);
      expect((none as APIError).status).toBe(503);
      expect((none as APIError).code).toBe("no_provider");
      expect((none as APIError).message).toMatch(/soulmesh provider start/);

      for (const a of [broke, orphan]) {
        expect(a.memory.turns).toHaveLength(0);
        expect(a.spent).toBe(0n);
      }
    } finally {
      await Promise.all(gateways.map((g) => g.close()));
      await broke.close();
      await orphan.close();
    }
  }, 60_000);
});

describe("turn queue", () => {
  it("lets one turn run, lines the others up in order up to its limit, and lets a waiting request leave", async () => {
    const queue = new TurnQueue(2);
    const never = new AbortController().signal;
    const release = await queue.acquire(never);
    const order: string[] = [];
    const second = queue.acquire(never).then((r) => (order.push("second"), r));
    const leaving = new AbortController();
    const third = queue.acquire(leaving.signal);
    const full = await queue.acquire(never).catch((e: unknown) => e);
    expect(full).toBeInstanceOf(OpenAiRequestError);
    expect((full as OpenAiRequestError).status).toBe(429);
    leaving.abort(new Error("client gone"));
    await expect(third).rejects.toThrow("client gone");
    expect(queue.waiting).toBe(1);
    const fourth = queue.acquire(never).then((r) => (order.push("fourth"), r));
    release();
    release(); // twice is harmless
    (await second)();
    (await fourth)();
    expect(order).toEqual(["second", "fourth"]);
    // Free again: the next one runs at once.
    (await queue.acquire(never))();
  });
});

describe("serve's API key option", () => {
  it("reads the key from the named variable, and refuses an unset one or an open host without a key", () => {
    expect(apiKeyFrom({ host: "127.0.0.1" }, {})).toBeUndefined();
    expect(apiKeyFrom({ host: "0.0.0.0", apiKeyEnv: "KEY" }, { KEY: " s3cret " })).toBe("s3cret");
    expect(() => apiKeyFrom({ host: "127.0.0.1", apiKeyEnv: "KEY" }, { KEY: "" })).toThrow(InvalidServeArgumentError);
    expect(() => apiKeyFrom({ host: "127.0.0.1", apiKeyEnv: "KEY" }, {})).toThrow(/export KEY=/);
    expect(() => apiKeyFrom({ host: "0.0.0.0" }, {})).toThrow(/--api-key-env/);
  });
});

/** The CORS response headers of `res`, by name. */
function corsHeaders(res: Response | Headers): Record<string, string> {
  const headers = res instanceof Headers ? res : res.headers;
  const found: Record<string, string> = {};
  headers.forEach((value, name) => {
    if (name.startsWith("access-control-")) found[name] = value;
  });
  return found;
}

/** A preflight as a browser sends it before a request with an Authorization header. */
function preflight(url: string, origin: string, requestHeaders = "authorization, content-type"): Promise<Response> {
  return fetch(url, {
    method: "OPTIONS",
    headers: { origin, "access-control-request-method": "POST", "access-control-request-headers": requestHeaders },
  });
}

describe("OpenAI gateway's CORS", () => {
  const page = "http://localhost:5173";
  const key = "sk-cors-secret";

  it("sends no CORS headers without --cors-origin, and refuses web pages' requests, changing nothing", async () => {
    const before = snapshot();
    const plain = await fetch(`${gateway.url}/v1/models`);
    expect(plain.status).toBe(200);
    expect(corsHeaders(plain)).toEqual({});
    expect(plain.headers.get("vary")).toBeNull();

    const fromPage = await fetch(`${gateway.url}/v1/models`, { headers: { origin: page } });
    expect(fromPage.status).toBe(403);
    expect(corsHeaders(fromPage)).toEqual({});
    expect(await fromPage.json()).toMatchObject({ error: { code: "origin_not_allowed", message: expect.stringMatching(/--cors-origin http:\/\/localhost:5173/) } });

    // A "simple" cross-origin POST skips the preflight: without the Origin check any web site could run turns.
    const simple = await fetch(`${gateway.url}/v1/chat/completions`, {
      method: "POST",
      headers: { origin: "https://evil.example", "content-type": "text/plain" },
      body: JSON.stringify({ model, messages: [{ role: "user", content: "Remember that I love spam." }] }),
    });
    expect(simple.status).toBe(403);
    expect(corsHeaders(simple)).toEqual({});

    const pre = await preflight(`${gateway.url}/v1/chat/completions`, page);
    expect(pre.status).toBe(403);
    expect(corsHeaders(pre)).toEqual({});
    expect(snapshot()).toEqual(before);
  });

  it("answers an allowed origin's preflight without the key, marks its JSON, streamed and error answers, and still requires the key", async () => {
    const cors = await createOpenAiGateway({ agent, model, apiKey: key, corsOrigins: [`${page}/`, "http://127.0.0.1:3000"] });
    try {
      const before = snapshot();
      const pre = await preflight(`${cors.url}/v1/chat/completions`, page, "Authorization, content-type, x-stainless-os, x-stainless-retry-count, bad header");
      expect(pre.status).toBe(204);
      expect(corsHeaders(pre)).toMatchObject({
        "access-control-allow-origin": page,
        "access-control-allow-methods": "GET, POST, OPTIONS",
        "access-control-allow-headers": "authorization, content-type, x-stainless-os, x-stainless-retry-count",
        "access-control-max-age": "7200",
      });
      expect(pre.headers.get("vary")).toMatch(/Origin/);
      const preModel = await preflight(`${cors.url}/v1/models/${model}`, "http://127.0.0.1:3000");
      expect(preModel.status).toBe(204);
      expect(preModel.headers.get("access-control-allow-origin")).toBe("http://127.0.0.1:3000");

      // Another origin, or the allowed one on another port: refused, with nothing a browser would accept.
      for (const other of ["http://localhost:5174", "https://localhost:5173", "null"]) {
        const refused = await preflight(`${cors.url}/v1/chat/completions`, other);
        expect(refused.status).toBe(403);
        expect(corsHeaders(refused)).toEqual({});
        const real = await fetch(`${cors.url}/v1/models`, { headers: { origin: other, authorization: `Bearer ${key}` } });
        expect(real.status).toBe(403);
        expect(corsHeaders(real)).toEqual({});
      }

      // The preflight needs no key; the real request does, and the page can read why it failed.
      const noKey = await fetch(`${cors.url}/v1/models`, { headers: { origin: page } });
      expect(noKey.status).toBe(401);
      expect(noKey.headers.get("access-control-allow-origin")).toBe(page);

      const c = new OpenAI({ baseURL: `${cors.url}/v1`, apiKey: key, maxRetries: 0, timeout: 30_000, defaultHeaders: { origin: page } });
      const { data: models, response: listed } = await c.models.list().withResponse();
      expect(models.data.map((m) => m.id)).toEqual([model]);
      expect(listed.headers.get("access-control-allow-origin")).toBe(page);
      expect(listed.headers.get("vary")).toBe("Origin");

      const { data, response } = await c.chat.completions.create({ model, messages: [{ role: "user", content: "Hello from a web page." }], max_tokens: 6 }).withResponse();
      expect(data.choices[0]!.message.content).toBe(done.at(-1)!.reply);
      expect(corsHeaders(response)).toEqual({
        "access-control-allow-origin": page,
        "access-control-expose-headers": "x-soulmesh-ignored-messages, x-soulmesh-provider, x-soulmesh-cost, x-should-retry, retry-after, allow",
      });
      expect(response.headers.get("x-soulmesh-cost")).toBe(done.at(-1)!.cost.toString());

      const { data: stream, response: streamed } = await c.chat.completions.create({ model, messages: [{ role: "user", content: "And streamed?" }], max_tokens: 6, stream: true }).withResponse();
      let text = "";
      for await (const chunk of stream) text += chunk.choices[0]?.delta.content ?? "";
      expect(text).toBe(done.at(-1)!.reply);
      expect(streamed.headers.get("content-type")).toMatch(/text\/event-stream/);
      expect(streamed.headers.get("access-control-allow-origin")).toBe(page);
      expect(streamed.headers.get("access-control-expose-headers")).toMatch(/x-soulmesh-ignored-messages/);

      const bad = await c.chat.completions.create({ model, messages: [{ role: "user", content: "Hi" }], max_tokens: 0 }).catch((e: unknown) => e);
      expect(bad).toBeInstanceOf(BadRequestError);
      expect((bad as APIError).headers?.get("access-control-allow-origin")).toBe(page);
      const wrongMethod = await fetch(`${cors.url}/v1/chat/completions`, { headers: { origin: page, authorization: `Bearer ${key}` } });
      expect(wrongMethod.status).toBe(405);
      expect(corsHeaders(wrongMethod)).toMatchObject({ "access-control-allow-origin": page, "access-control-expose-headers": expect.stringMatching(/\ballow\b/) });

      expect(done.length).toBe(before.done + 2);
      expect(agent.memory.turns.length).toBe(before.turns + 4);
    } finally {
      await cors.close();
    }
  }, 60_000);

  it("allows any origin with *, answering *", async () => {
    const any = await createOpenAiGateway({ agent, model, corsOrigins: ["*"] });
    try {
      const pre = await preflight(`${any.url}/v1/chat/completions`, "https://chat.example.org", "x-stainless-lang");
      expect(pre.status).toBe(204);
      expect(pre.headers.get("access-control-allow-origin")).toBe("*");
      expect(pre.headers.get("access-control-allow-headers")).toBe("authorization, content-type, x-stainless-lang");
      const models = await fetch(`${any.url}/v1/models`, { headers: { origin: "http://localhost:1234" } });
      expect(models.status).toBe(200);
      expect(models.headers.get("access-control-allow-origin")).toBe("*");
      // Without Origin (not a browser): no CORS headers needed.
      expect(corsHeaders(await fetch(`${any.url}/v1/models`))).toEqual({});
    } finally {
      await any.close();
    }
  });

  it("refuses what is not an origin, in the gateway's options and on the command line", async () => {
    for (const bad of ["http://localhost:5173/app", "null", "", "localhost:5173", "http://a/?q", "https://user@host"]) {
      await expect(createOpenAiGateway({ agent, model, corsOrigins: [bad] })).rejects.toThrow(InvalidGatewayOptionsError);
      expect(() => parseCorsOrigin(bad)).toThrow(InvalidArgumentError);
    }
    expect(normalizeOrigin("HTTPS://Chat.Example.com:443/")).toBe("https://chat.example.com");
    expect(normalizeOrigin("chrome-extension://AbCd")).toBe("chrome-extension://abcd");
    expect(parseCorsOrigin("http://LOCALHOST:5173/", parseCorsOrigin("http://localhost:5173"))).toEqual(["http://localhost:5173"]);
    expect(parseCorsOrigin("*", ["http://localhost:5173"])).toEqual(["http://localhost:5173", "*"]);
  });
});

const chromiumPresent = hasChromium();

describe.skipIf(!chromiumPresent && !process.env.CI)(chromiumPresent ? "OpenAI gateway's CORS in a browser" : `OpenAI gateway's CORS in a browser: ${CHROMIUM_MISSING}`, () => {
  let browser: Browser;
  let pageServer: Server;
  let pageOrigin: string;

  beforeAll(async () => {
    browser = await launchChromium();
    pageServer = createServer((_req, res) => res.writeHead(200, { "content-type": "text/html" }).end("<!doctype html><title>chat app</title>"));
    await new Promise<void>((resolve) => pageServer.listen(0, "127.0.0.1", resolve));
    pageOrigin = `http://127.0.0.1:${(pageServer.address() as AddressInfo).port}`;
  }, 60_000);

  afterAll(async () => {
    await browser?.close();
    await new Promise((resolve) => pageServer?.close(resolve));
  });

  /** What a page at pageOrigin gets from fetching `${url}/v1/models` with an API key (which makes it preflight). */
  async function fetchModelsFromPage(url: string, apiKey: string): Promise<{ status?: number; ids?: string[]; error?: string }> {
    const context = await browser.newContext();
    try {
      const tab = await context.newPage();
      await tab.goto(pageOrigin);
      return await tab.evaluate(
        async ({ url, apiKey }) => {
          try {
            const r = await fetch(`${url}/v1/models`, { headers: { authorization: `Bearer ${apiKey}` } });
            const body = (await r.json()) as { data: { id: string }[] };
            return { status: r.status, ids: body.data.map((m) => m.id) };
          } catch (err) {
            return { error: String(err) };
          }
        },
        { url, apiKey },
      );
    } finally {
      await context.close();
    }
  }

  it("lets a page on another loopback port list the models with --cors-origin, and not without", async () => {
    const cors = await createOpenAiGateway({ agent, model, apiKey: "sk-browser", corsOrigins: [pageOrigin] });
    const closed = await createOpenAiGateway({ agent, model, apiKey: "sk-browser" });
    try {
      expect(await fetchModelsFromPage(cors.url, "sk-browser")).toEqual({ status: 200, ids: [model] });
      expect(await fetchModelsFromPage(closed.url, "sk-browser")).toEqual({ error: expect.stringMatching(/Failed to fetch/) });
      expect(await fetchModelsFromPage(gateway.url, "unused")).toEqual({ error: expect.stringMatching(/Failed to fetch/) });
    } finally {
      await Promise.all([cors.close(), closed.close()]);
    }
  }, 60_000);
});
