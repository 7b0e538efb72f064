/**
 * The engine on the real node-llama-cpp, with tiny generated GGUF models and LoRA adapters: adapters
 * change the output, bad adapters are refused, evicted sessions resume exactly, states never cross
 * adapter sets, abort, admission control and exact usage.
 */
import { randomBytes } from "node:crypto";
import { copyFile, mkdir, mkdtemp, readdir, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { getLlama, LlamaLogLevel, type Llama } from "node-llama-cpp";
import { removeTinyFixtures, TINY, tinyFixtures, writeTinyLlama, type TinyFixtures } from "../../test/fixtures/gguf/llama.js";
import { AdapterStore, folderAdapterSource } from "./adapters.js";
import { createEngine, type EngineOptions, type InferenceEngine } from "./engine.js";
import {
  AdapterBaseMismatchError,
  EngineStoppedError,
  HashMismatchError,
  InvalidRequestError,
  ModelNotServedError,
  ProviderBusyError,
  SessionConflictError,
  SessionNotFoundError,
} from "./errors.js";
import { FileHashCache } from "./file-hash.js";
import { tokenizePrompt, type ChatMessage, type GenerateOptions } from "./generate.js";
import { loadBaseModel, type LoadedModel } from "./models.js";
import { SessionStateStore } from "./state-store.js";

let fx: TinyFixtures;
let llama: Llama;
let base: LoadedModel;
let other: LoadedModel;
/** TINY that emits whole words only, so its replies tokenize back as generated (as a real model's mostly do). */
let wordy: LoadedModel;
let root: string;
let adapterDir: string;
const cids = ["bafy-adapter-a", "bafy-adapter-b", "bafy-adapter-c"] as const;
const engines: InferenceEngine[] = [];
const stores: { stop(): Promise<void> }[] = [];

beforeAll(async () => {
  fx = await tinyFixtures();
  root = await mkdtemp(join(tmpdir(), "soulmesh-engine-"));
  adapterDir = join(root, "published");
  await mkdir(adapterDir);
  for (const [i, cid] of cids.entries()) await copyFile(fx.adapters[i]!.path, join(adapterDir, cid));
  await copyFile(fx.otherBaseAdapter.path, join(adapterDir, "bafy-other-base"));
  llama = await getLlama({ gpu: false, build: "never", logLevel: LlamaLogLevel.error });
  const hashCache = new FileHashCache({ path: join(root, "hashes.json") });
  base = await loadBaseModel(llama, { source: fx.base.path, modelsDir: root, hashCache, gpuLayers: 0 });
  other = await loadBaseModel(llama, { source: fx.otherBase.path, modelsDir: root, hashCache, gpuLayers: 0 });
  const wordyFile = await writeTinyLlama(join(root, "wordy.gguf"), { ...TINY, wholeWordOutput: true });
  wordy = await loadBaseModel(llama, { source: wordyFile.path, modelsDir: root, hashCache, gpuLayers: 0 });
});

afterEach(async () => {
  for (const engine of engines.splice(0)) await engine.stop();
  for (const store of stores.splice(0)) await store.stop();
});

afterAll(async () => {
  await base?.dispose();
  await other?.dispose();
  await wordy?.dispose();
  await llama?.dispose();
  await rm(root, { recursive: true, force: true });
  await removeTinyFixtures();
});

interface Setup {
  engine: InferenceEngine;
  states: SessionStateStore;
  stateDir: string;
}

/** An engine with its own adapter cache and state folder (or the state folder given, to simulate a restart). */
async function setup(options: Partial<EngineOptions> = {}, stateDir?: string): Promise<Setup> {
  const dir = await mkdtemp(join(root, "node-"));
  const adapters = new AdapterStore({ dir: join(dir, "adapters"), maxBytes: 2 ** 30, sources: [folderAdapterSource(adapterDir)] });
  await adapters.start();
  const statesDir = stateDir ?? join(dir, "states");
  const states = new SessionStateStore({ dir: statesDir, ttlMs: 60 * 60_000 });
  await states.start();
  stores.push(adapters, states);
  const engine = createEngine({
    llama,
    models: [base, other, wordy],
    adapters,
    states,
    threads: 1,
    contextSize: 512,
    sequencesPerContext: 2,
    memoryBudgetBytes: 2 ** 30,
    ...options,
  });
  await engine.start();
  engines.unshift(engine);
  return { engine, states, stateDir: statesDir };
}

const key = (): Uint8Array => randomBytes(32);
let nextId = 0;
const sessionId = (): string => `session-${++nextId}`;

function adapterRef(i: number): { cid: string; sha256: string } {
  return { cid: cids[i]!, sha256: fx.adapters[i]!.sha256 };
}

async function open(
  engine: InferenceEngine,
  adapters: { cid: string; sha256: string; scale?: number }[] = [],
  id = sessionId(),
): Promise<string> {
  await engine.openSession({ sessionId: id, modelSha256: base.sha256, adapters, stateKey: key() });
  return id;
}

const chat = (...turns: string[]): ChatMessage[] =>
  turns.map((content, i) => ({ role: i % 2 === 0 ? "user" : "assistant", content }));

const greedy = (prompt: GenerateOptions["prompt"], maxTokens = 12): GenerateOptions => ({ prompt, maxTokens });

describe("engine: adapters", () => {
  it("a persona adapter changes the output, and two adapters differ from each other", async () => {
    const { engine } = await setup();
    const prompt = { text: "The people of the world" };
    const ids = [await open(engine), await open(engine, [adapterRef(0)]), await open(engine, [adapterRef(1)])];
    const sameAdapter = await open(engine, [adapterRef(0)]);
    const [plain, a, b] = [
      await engine.generate(ids[0]!, greedy(prompt)),
      await engine.generate(ids[1]!, greedy(prompt)),
      await engine.generate(ids[2]!, greedy(prompt)),
    ];
    const again = await engine.generate(sameAdapter, greedy(prompt));
    expect(plain.text.length).toBeGreaterThan(0);
    expect(a.text).not.toBe(plain.text);
    expect(b.text).not.toBe(a.text);
    expect(again.text).toBe(a.text);
    // Sessions on the same adapter share a context (sized for both, as both were waiting); each set has its own.
    expect(engine.load.contexts).toBe(3);
    // A later session on a full context's adapter set gets a new context.
    await engine.generate(await open(engine, [adapterRef(1)]), greedy(prompt, 1));
    expect(engine.load.contexts).toBe(4);
  });

  it("refuses an adapter whose bytes have another hash, before anything is loaded", async () => {
    const { engine } = await setup();
    const id = sessionId();
    const wrong = { cid: cids[0], sha256: fx.adapters[1]!.sha256 };
    await expect(
      engine.openSession({ sessionId: id, modelSha256: base.sha256, adapters: [wrong], stateKey: key() }),
    ).rejects.toBeInstanceOf(HashMismatchError);
    expect(() => engine.session(id)).toThrow(SessionNotFoundError);
    expect(engine.load.contexts).toBe(0);
  });

  it("refuses an adapter made for another base model, and a persona registered for another model", async () => {
    const { engine } = await setup();
    const foreign = { cid: "bafy-other-base", sha256: fx.otherBaseAdapter.sha256 };
    await expect(
      engine.openSession({ sessionId: sessionId(), modelSha256: base.sha256, adapters: [foreign], stateKey: key() }),
    ).rejects.toBeInstanceOf(AdapterBaseMismatchError);
    await expect(
      engine.openSession({
        sessionId: sessionId(),
        modelSha256: base.sha256,
        adapters: [adapterRef(0)],
        baseModelHash: other.sha256,
        stateKey: key(),
      }),
    ).rejects.toBeInstanceOf(AdapterBaseMismatchError);
    // The node keeps serving.
    const ok = await engine.generate(await open(engine, [adapterRef(0)]), greedy({ text: "Hello" }, 4));
    expect(ok.usage.outputTokens).toBe(4);
  });
});

describe("engine: sessions keep their KV state", () => {
  it("a second turn evaluates only its new tokens", async () => {
    const { engine } = await setup();
    const id = await open(engine, [adapterRef(0)]);
    const first = await engine.generate(id, greedy({ chat: chat("Tell me about the sea.") }));
    const history = chat("Tell me about the sea.", first.text, "And the mountains?");
    const second = await engine.generate(id, greedy({ chat: history }));
    const total = tokenizePrompt(base.model, { chat: history }).tokens.length;
    // The whole first prompt is reused; what is evaluated is the reply as retokenized and the new message.
    expect(second.usage.cachedInputTokens).toBeGreaterThanOrEqual(first.usage.inputTokens);
    expect(second.usage.inputTokens + second.usage.cachedInputTokens).toBe(total);
  });

  it("a reply sent back verbatim is reused from the cache: the next turn evaluates only the new message", async () => {
    const { engine } = await setup();
    const id = sessionId();
    await engine.openSession({ sessionId: id, modelSha256: wordy.sha256, stateKey: key() });
    const first = await engine.generate(id, greedy({ chat: chat("Tell me about the sea.") }));
    expect(first.text.startsWith(" ")).toBe(true); // the SentencePiece space of its first word is kept
    const history = chat("Tell me about the sea.", first.text, "And the mountains?");
    const second = await engine.generate(id, greedy({ chat: history }));
    // Everything the sequence evaluated is reused: the first prompt and every reply token but the last,
    // which was sampled and never evaluated.
    const held = first.usage.inputTokens + first.usage.cachedInputTokens + first.usage.outputTokens - 1;
    expect(second.usage.cachedInputTokens).toBe(held);
    expect(second.usage.inputTokens).toBe(tokenizePrompt(wordy.model, { chat: history }).tokens.length - held);
  });

  it("a session restored after eviction continues exactly as a hot one", async () => {
    const { engine, states } = await setup();
    const hot = await open(engine, [adapterRef(1)]);
    const cold = await open(engine, [adapterRef(1)]);
    const opening = chat("Who are you?");
    const [h1, c1] = [await engine.generate(hot, greedy({ chat: opening })), await engine.generate(cold, greedy({ chat: opening }))];
    expect(c1.text).toBe(h1.text);

    await engine.evictSession(cold);
    expect(engine.session(cold).hot).toBe(false);
    expect(states.has(cold)).toBe(true);

    const next = { chat: chat("Who are you?", h1.text, "What do you remember?") };
    const h2 = await engine.generate(hot, greedy(next, 16));
    const c2 = await engine.generate(cold, greedy(next, 16));
    expect(c2.restored).toBe(true);
    expect(h2.restored).toBe(false);
    expect(c2.text).toBe(h2.text);
    expect(c2.usage).toEqual(h2.usage);
    expect(c2.usage.cachedInputTokens).toBeGreaterThan(0);
  });

  it("never restores a state under another adapter set, even for the same session id after a restart", async () => {
    const first = await setup();
    const id = sessionId();
    const stateKey = key();
    await first.engine.openSession({ sessionId: id, modelSha256: base.sha256, adapters: [adapterRef(0)], stateKey });
    const prompt = { text: "Once upon a time there was" };
    await first.engine.generate(id, greedy(prompt));
    await first.engine.stop(); // saves the hot state so a restarted node can resume it
    expect(first.states.has(id)).toBe(true);

    // Restarted node, same session id, other adapter: the state is discarded, not loaded.
    const second = await setup({}, first.stateDir);
    const discarded: string[] = [];
    second.states.addEventListener("discard", (e) => discarded.push((e as CustomEvent<{ reason: string }>).detail.reason));
    await second.engine.openSession({ sessionId: id, modelSha256: base.sha256, adapters: [adapterRef(2)], stateKey });
    const crossed = await second.engine.generate(id, greedy(prompt));
    const fresh = await second.engine.generate(await open(second.engine, [adapterRef(2)]), greedy(prompt));
    expect(crossed.restored).toBe(false);
    expect(crossed.usage.cachedInputTokens).toBe(0);
    expect(crossed.text).toBe(fresh.text);
    expect(discarded).toEqual(["binding-mismatch"]);
  });

  it("resumes a saved state after a restart under the same adapters", async () => {
    const first = await setup();
    const id = sessionId();
    const stateKey = key();
    await first.engine.openSession({ sessionId: id, modelSha256: base.sha256, adapters: [adapterRef(0)], stateKey });
    const t1 = await first.engine.generate(id, greedy({ text: "Once upon a time there was" }));
    await first.engine.stop();

    const second = await setup({}, first.stateDir);
    await second.engine.openSession({ sessionId: id, modelSha256: base.sha256, adapters: [adapterRef(0)], stateKey });
    const prompt = { text: `Once upon a time there was${t1.text} and then` };
    const resumed = await second.engine.generate(id, greedy(prompt));
    const fresh = await second.engine.generate(await open(second.engine, [adapterRef(0)]), greedy(prompt));
    expect(resumed.restored).toBe(true);
    expect(resumed.usage.cachedInputTokens).toBeGreaterThan(0);
    expect(resumed.text).toBe(fresh.text);
  });

  it("under memory pressure evicts idle contexts LRU and still answers exactly", async () => {
    const roomy = await setup();
    const oneContext = (await roomy.engine.generate(await open(roomy.engine), greedy({ text: "x" }, 1))) && roomy.engine.load.memoryBytes;
    const tight = await setup({ memoryBudgetBytes: Math.floor(oneContext * 1.5) });
    const events: string[] = [];
    for (const type of ["context:created", "context:disposed", "session:evicted", "session:restored"]) {
      tight.engine.addEventListener(type, () => events.push(type));
    }
    const prompts = [{ text: "The river" }, { text: "A quiet town" }];
    const ids = [await open(tight.engine, [adapterRef(0)]), await open(tight.engine, [adapterRef(1)])];
    const refs = [await open(roomy.engine, [adapterRef(0)]), await open(roomy.engine, [adapterRef(1)])];
    for (let round = 0; round < 2; round++) {
      for (const i of [0, 1]) {
        const prompt = { text: `${prompts[i]!.text}${" again".repeat(round)}` };
        const got = await tight.engine.generate(ids[i]!, greedy(prompt, 6));
        const want = await roomy.engine.generate(refs[i]!, greedy(prompt, 6));
        expect(got.text).toBe(want.text);
        expect(got.usage).toEqual(want.usage);
        expect(tight.engine.load.contexts).toBe(1);
      }
    }
    expect(events.filter((e) => e === "context:disposed").length).toBeGreaterThanOrEqual(3);
    expect(events.filter((e) => e === "session:restored").length).toBeGreaterThanOrEqual(2);
  });

  it("closes sessions left idle past sessionIdleMs, deleting their state, and keeps busy or recent ones", async () => {
    const { engine, states } = await setup({ sessionIdleMs: 60_000 });
    const idle = await open(engine);
    await engine.generate(idle, greedy({ text: "Hello there" }, 2));
    await engine.evictSession(idle);
    const recent = await open(engine);
    await engine.generate(recent, greedy({ text: "Hi" }, 2));
    const now = Date.now();
    expect(await engine.closeIdleSessions(now + 30_000)).toBe(0);
    expect(await engine.closeIdleSessions(now + 61_000)).toBe(2);
    expect(() => engine.session(idle)).toThrow(SessionNotFoundError);
    expect(states.has(idle)).toBe(false);
    expect(engine.load.sessions).toBe(0);
  });

  it("sessions sharing a context generate concurrently and each gets what it would alone", async () => {
    const { engine } = await setup({ maxConcurrent: 4 });
    const prompts = ["The sea", "A mountain", "The city at night", "Morning"].map((text) => ({ text }));
    const ids = await Promise.all(prompts.map(() => open(engine, [adapterRef(2)])));
    const together = await Promise.all(ids.map((id, i) => engine.generate(id, greedy(prompts[i]!, 8))));
    const alone = [];
    for (const prompt of prompts) alone.push(await engine.generate(await open(engine, [adapterRef(2)]), greedy(prompt, 8)));
    expect(together.map((r) => r.text)).toEqual(alone.map((r) => r.text));
    expect(together.map((r) => r.usage)).toEqual(alone.map((r) => r.usage));
  });

  it("a state that cannot be saved costs a full evaluation, not the turn", async () => {
    const { engine, states } = await setup();
    const id = await open(engine);
    const prompt = { text: "The old lighthouse keeper" };
    const first = await engine.generate(id, greedy(prompt, 4));
    const discarded: string[] = [];
    engine.addEventListener("session:state-discarded", (e) => discarded.push((e as CustomEvent<{ reason: string }>).detail.reason));
    const save = states.save.bind(states);
    states.save = async () => Promise.reject(new Error("disk full"));
    try {
      await engine.evictSession(id);
    } finally {
      states.save = save;
    }
    expect(discarded).toEqual([expect.stringContaining("disk full")]);
    expect(engine.session(id).hot).toBe(false);
    const again = await engine.generate(id, greedy(prompt, 4));
    expect(again.restored).toBe(false);
    expect(again.usage.cachedInputTokens).toBe(0);
    expect(again.text).toBe(first.text);
  });

  it("closing a session deletes its saved state", async () => {
    const { engine, states, stateDir } = await setup();
    const id = await open(engine);
    await engine.generate(id, greedy({ text: "Hello there" }, 4));
    await engine.evictSession(id);
    expect(states.has(id)).toBe(true);
    await engine.closeSession(id);
    expect(states.has(id)).toBe(false);
    expect((await readdir(stateDir)).filter((f) => f.endsWith(".state"))).toEqual([]);
    await expect(engine.generate(id, greedy({ text: "Hello" }))).rejects.toBeInstanceOf(SessionNotFoundError);
  });
});

describe("engine: generation", () => {
  it("usage equals the tokenizer's counts, and chunks add up to the text", async () => {
    const { engine } = await setup();
    const id = await open(engine);
    const p1 = "The old lighthouse keeper";
    const chunks: string[] = [];
    const r1 = await engine.generate(id, { prompt: { text: p1 }, maxTokens: 10, onChunk: (c) => chunks.push(c.text) });
    const t1 = tokenizePrompt(base.model, { text: p1 }).tokens;
    expect(t1.length).toBe(base.model.tokenize(p1).length + 1); // + BOS
    expect(r1.usage).toEqual({ inputTokens: t1.length, cachedInputTokens: 0, outputTokens: 10 });
    expect(r1.stopReason).toBe("maxTokens");
    expect(chunks.join("")).toBe(r1.text);

    const p2 = `${p1} walked down to the shore`;
    const t2 = tokenizePrompt(base.model, { text: p2 }).tokens;
    let common = 0;
    while (common < t1.length && t1[common] === t2[common]) common++;
    const r2 = await engine.generate(id, { prompt: { text: p2 }, maxTokens: 3 });
    expect(r2.usage).toEqual({ inputTokens: t2.length - common, cachedInputTokens: common, outputTokens: 3 });
  });

  it("stops at a stop string, which is not part of the output", async () => {
    const { engine } = await setup();
    const prompt = { text: "The people of the world" };
    const full = await engine.generate(await open(engine), greedy(prompt, 24));
    const stop = full.text.slice(6, 9);
    const at = full.text.indexOf(stop);
    const chunks: string[] = [];
    const cut = await engine.generate(await open(engine), { ...greedy(prompt, 24), stop: [stop], onChunk: (c) => chunks.push(c.text) });
    expect(cut.stopReason).toBe("stop");
    expect(cut.text).toBe(full.text.slice(0, at));
    expect(chunks.join("")).toBe(cut.text);
    expect(cut.usage.outputTokens).toBeLessThan(full.usage.outputTokens);
  });

  it("abort stops a generation; what was generated is kept and counted", async () => {
    const { engine } = await setup();
    const id = await open(engine);
    const controller = new AbortController();
    let seen = 0;
    const result = await engine.generate(id, {
      prompt: { text: "Long ago" },
      maxTokens: 400,
      signal: controller.signal,
      onChunk: (c) => {
        seen = c.outputTokens;
        if (c.outputTokens >= 3) controller.abort();
      },
    });
    expect(result.stopReason).toBe("aborted");
    expect(result.usage.outputTokens).toBeGreaterThanOrEqual(3);
    expect(result.usage.outputTokens).toBeLessThan(400);
    expect(result.usage.outputTokens).toBeLessThanOrEqual(seen + 1);
    // The session goes on after an abort.
    const next = await engine.generate(id, greedy({ text: "Long ago" }, 2));
    expect(next.usage.outputTokens).toBe(2);
  });

  it("admission: the queue takes maxQueued requests and refuses the next with ProviderBusy", async () => {
    const { engine } = await setup({ maxConcurrent: 1, maxQueued: 1 });
    const [a, b, c] = [await open(engine), await open(engine), await open(engine)];
    const first = engine.generate(a, greedy({ text: "One" }, 20));
    const second = engine.generate(b, greedy({ text: "Two" }, 2));
    const third = engine.generate(c, greedy({ text: "Three" }, 2));
    await expect(third).rejects.toBeInstanceOf(ProviderBusyError);
    await expect(third).rejects.toMatchObject({ name: "ProviderBusy" });
    expect((await first).usage.outputTokens).toBe(20);
    expect((await second).usage.outputTokens).toBe(2);
    expect(engine.load).toMatchObject({ running: 0, queued: 0 });
  });

  it("bad requests get typed errors and change nothing", async () => {
    const { engine } = await setup({ contextSize: 64 });
    const id = await open(engine);
    const bad: GenerateOptions[] = [
      { prompt: { text: "" } },
      { prompt: { chat: [] } },
      { prompt: { chat: [{ role: "wizard" as "user", content: "hi" }] } },
      { prompt: { text: "word ".repeat(200) } },
      { prompt: { text: "hi" }, maxTokens: 0 },
      { prompt: { text: "hi" }, sampling: { temperature: -1 } },
      { prompt: { text: "hi" }, sampling: { topP: 2 } },
      { prompt: { text: "hi" }, stop: [""] },
    ];
    for (const options of bad) await expect(engine.generate(id, options)).rejects.toBeInstanceOf(InvalidRequestError);
    // Refused before taking a queue place or a context.
    expect(engine.load).toMatchObject({ contexts: 0, running: 0, queued: 0 });

    await expect(engine.generate("no-such-session", greedy({ text: "hi" }))).rejects.toBeInstanceOf(SessionNotFoundError);
    await expect(open(engine, [], id)).rejects.toBeInstanceOf(SessionConflictError);
    await expect(open(engine, [], "bad id with spaces")).rejects.toBeInstanceOf(InvalidRequestError);
    await expect(
      engine.openSession({ sessionId: sessionId(), modelSha256: base.sha256, stateKey: new Uint8Array(16) }),
    ).rejects.toBeInstanceOf(InvalidRequestError);
    await expect(
      engine.openSession({ sessionId: sessionId(), modelSha256: `0x${"00".repeat(32)}`, stateKey: key() }),
    ).rejects.toBeInstanceOf(ModelNotServedError);
    await expect(open(engine, [{ ...adapterRef(0), scale: 0 }])).rejects.toBeInstanceOf(InvalidRequestError);

    const ok = await engine.generate(id, greedy({ text: "hi" }, 2));
    expect(ok.usage).toMatchObject({ cachedInputTokens: 0, outputTokens: 2 });
  });

  it("a stopped engine refuses work", async () => {
    const { engine } = await setup();
    const id = await open(engine);
    await engine.stop();
    await expect(engine.generate(id, greedy({ text: "hi" }))).rejects.toBeInstanceOf(EngineStoppedError);
    await expect(open(engine)).rejects.toBeInstanceOf(EngineStoppedError);
  });
});
