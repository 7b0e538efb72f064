/**
 * Time to first token of a new turn after about 2,000 tokens of chat history, when the session's KV state is
 * restored from disk (encrypted, as the engine evicts it) versus recomputed from the whole prompt, through the
 * Soulmesh engine (AdapterStore, SessionStateStore, context pool) on the bench model with one persona adapter.
 *
 * How, per repetition (one warm-up repetition first, not counted; then `--runs N`, default 3):
 * 1. Session A takes turn 1: a ChatML conversation of ≈2,000 tokens (counted with tokenizePrompt) ending with a
 *    user message; it answers 32 tokens greedily, so its state holds the history.
 * 2. `engine.evictSession(A)` saves the state (AES-256-GCM, fsynced) and frees its sequence: saveMs, stateBytes.
 * 3. Turn 2 on A: history + A's answer + a new user message. TTFT is from `engine.generate` to the first
 *    `onChunk`: the state is decrypted and loaded, and only the new tokens are evaluated (restoredTtftMs).
 *    restoreMs is the SessionStateStore.restore call within it (read, decrypt into the staging file, load),
 *    loadStateMs node-llama-cpp's loadStateFromFile alone.
 * 4. Session B, fresh, takes the same turn-2 prompt and evaluates all of it (recomputedTtftMs).
 * 5. Turn 3 on B, which stayed in memory: history + answer + new message, for reference (hotTtftMs).
 * The evaluated tokens of a new turn are the last answer token (sampled, never evaluated) plus the new message:
 * the answer comes back verbatim and tokenizes into the tokens the state holds (the bench model emits whole
 * words, as real models emit mostly canonical tokens; with sub-word output, and before the engine kept a reply's
 * leading space, the whole answer was evaluated again and the ratio was 0.053–0.058).
 * Sessions are closed after use, so each TTFT is measured with only its own session in the context's KV cache.
 * The context (contextSize 4096) already exists in every timed turn: no context creation is measured.
 * The state file was just written, so it is read from the page cache, as for a recently evicted session.
 * Figures are medians; resumeTtftRatio = restoredTtftMs / recomputedTtftMs (goal ≤ 0.05).
 *
 *   npm run bench -- kv-resume [--runs N]
 */
import { randomBytes } from "node:crypto";
import { rmSync } from "node:fs";
import { copyFile, mkdir, mkdtemp, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { getLlama, LlamaLogLevel } from "node-llama-cpp";
import { AdapterStore, folderAdapterSource } from "../node/engine/adapters.js";
import { createEngine, type InferenceEngine } from "../node/engine/engine.js";
import { FileHashCache } from "../node/engine/file-hash.js";
import { tokenizePrompt, type ChatMessage } from "../node/engine/generate.js";
import { loadBaseModel } from "../node/engine/models.js";
import { SessionStateStore } from "../node/engine/state-store.js";
import { defaultThreads } from "../node/engine/threads.js";
import { benchAdapters, benchModel } from "../test/fixtures/gguf/llama.js";
import { log, argNumber, median, round, sentence } from "./_util.js";


const CONTEXT_SIZE = 4096;
const HISTORY_TOKENS = 2000;
const ANSWER_TOKENS = 32;
const ADAPTER_CID = "bafybenchkvresumepersona0";





async function main(): Promise<void> {
  const runs = argNumber("runs", 3);
  const threads = defaultThreads();
  const root = await mkdtemp(join(tmpdir(), "soulmesh-bench-kv-"));
  process.once("exit", () => rmSync(root, { recursive: true, force: true })); // also when it fails
  const llama = await getLlama({ gpu: false, build: "never", logLevel: LlamaLogLevel.error });
  const [modelFile, [adapterFile]] = await Promise.all([benchModel(), benchAdapters(1)]);
  const published = join(root, "published");
  await mkdir(published);
  await copyFile(adapterFile!.path, join(published, ADAPTER_CID));
  const hashCache = new FileHashCache({ path: join(root, "hashes.json") });
  const base = await loadBaseModel(llama, { source: modelFile.path, modelsDir: root, hashCache, gpuLayers: 0 });
  const adapters = new AdapterStore({ dir: join(root, "adapters"), maxBytes: 2 ** 30, sources: [folderAdapterSource(published)] });
  const states = new SessionStateStore({ dir: join(root, "states"), ttlMs: 60 * 60_000 });
  await adapters.start();
  await states.start();
  const engine: InferenceEngine = createEngine({
    llama,
    models: [base],
    adapters,
    states,
    threads,
    contextSize: CONTEXT_SIZE,
    sequencesPerContext: 4,
    memoryBudgetBytes: 2 ** 32,
  });
  await engine.start();
  // Where a restore's time goes: the whole store.restore (read, decrypt into staging, load) and, inside it,
  // node-llama-cpp's loadStateFromFile.
  let restoreMs = 0;
  let loadStateMs = 0;
  const restore = states.restore.bind(states);
  states.restore = async (sessionId, key, binding, read, options) => {
    const start = performance.now();
    try {
      return await restore(sessionId, key, binding, async (path, o) => {
        const loadStart = performance.now();
        try {
          return await read(path, o);
        } finally {
          loadStateMs = performance.now() - loadStart;
        }
      }, options);
    } finally {
      restoreMs = performance.now() - start;
    }
  };

  // The conversation: a system message, then user/assistant exchanges until the prompt has ≈2,000 tokens.
  const history: ChatMessage[] = [{ role: "system", content: sentence(0, 30) }];
  for (let i = 1; tokenizePrompt(base.model, { chat: history }).tokens.length < HISTORY_TOKENS - 30; i++) {
    history.push({ role: "user", content: sentence(i, 20) }, { role: "assistant", content: sentence(i + 500, 40) });
  }
  history.push({ role: "user", content: sentence(999, 20) });
  const historyTokens = tokenizePrompt(base.model, { chat: history }).tokens.length;
  const turn2Of = (answer: string): ChatMessage[] => [
    ...history,
    { role: "assistant", content: answer },
    { role: "user", content: sentence(1234, 20) },
  ];
  log(`history ${historyTokens} tokens (context ${CONTEXT_SIZE}), threads ${threads}`);

  const adapterRef = { cid: ADAPTER_CID, sha256: adapterFile!.sha256 };
  let nextId = 0;
  const open = async (): Promise<string> => {
    const sessionId = `kv-${++nextId}`;
    await engine.openSession({ sessionId, modelSha256: base.sha256, adapters: [adapterRef], stateKey: randomBytes(32) });
    return sessionId;
  };
  const turn = async (sessionId: string, chat: ChatMessage[]) => {
    const start = performance.now();
    let first: number | undefined;
    const result = await engine.generate(sessionId, {
      prompt: { chat },
      maxTokens: ANSWER_TOKENS,
      onChunk: () => (first ??= performance.now()),
    });
    if (first === undefined) throw new Error("the turn streamed nothing");
    return { ...result, ttftMs: first - start, promptTokens: tokenizePrompt(base.model, { chat }).tokens.length };
  };

  const repetition = async () => {
    const a = await open();
    const t1 = await turn(a, history);
    const saveStart = performance.now();
    await engine.evictSession(a);
    const saveMs = performance.now() - saveStart;
    const stateFileBytes = (await stat(states.statePath(a))).size;
    const chat2 = turn2Of(t1.text);
    const restored = await turn(a, chat2);
    if (!restored.restored) throw new Error("the evicted session's state was not restored");
    const restoreTiming = { restoreMs, loadStateMs };
    await engine.closeSession(a);

    const b = await open();
    const recomputed = await turn(b, chat2);
    if (recomputed.usage.cachedInputTokens !== 0) throw new Error("the fresh session reused tokens");
    const hot = await turn(b, [...chat2, { role: "assistant", content: recomputed.text }, { role: "user", content: sentence(4321, 20) }]);
    await engine.closeSession(b);
    return { t1, saveMs, stateFileBytes, ...restoreTiming, restored, recomputed, hot };
  };

  log("warm-up repetition…");
  await repetition();
  const results = [];
  for (let i = 0; i < runs; i++) {
    const r = await repetition();
    log(
      `run ${i + 1}/${runs}: restored ${r.restored.ttftMs.toFixed(0)} ms (${r.restored.usage.inputTokens} tokens evaluated), ` +
        `recomputed ${r.recomputed.ttftMs.toFixed(0)} ms (${r.recomputed.usage.inputTokens}), hot ${r.hot.ttftMs.toFixed(0)} ms ` +
        `(${r.hot.usage.inputTokens}); restore ${r.restoreMs.toFixed(0)} ms (llama.cpp load ${r.loadStateMs.toFixed(0)}), save ${r.saveMs.toFixed(0)} ms, state ${(r.stateFileBytes / 2 ** 20).toFixed(1)} MiB`,
    );
    results.push(r);
  }

  await engine.stop();
  await adapters.stop();
  await states.stop();
  await base.dispose();
  await llama.dispose();
  await rm(root, { recursive: true, force: true });

  const restoredTtftMs = median(results.map((r) => r.restored.ttftMs));
  const recomputedTtftMs = median(results.map((r) => r.recomputed.ttftMs));
  const last = results.at(-1)!;
  const figures = {
    resumeTtftRatio: round(restoredTtftMs / recomputedTtftMs, 4),
    restoredTtftMs: round(restoredTtftMs),
    recomputedTtftMs: round(recomputedTtftMs),
    hotTtftMs: round(median(results.map((r) => r.hot.ttftMs))),
    restoreMs: round(median(results.map((r) => r.restoreMs))),
    loadStateMs: round(median(results.map((r) => r.loadStateMs))),
    saveMs: round(median(results.map((r) => r.saveMs))),
    stateFileBytes: last.stateFileBytes,
    historyTokens,
    turnPromptTokens: last.restored.promptTokens,
    restoredEvaluatedTokens: last.restored.usage.inputTokens,
    restoredCachedTokens: last.restored.usage.cachedInputTokens,
    recomputedEvaluatedTokens: last.recomputed.usage.inputTokens,
    hotEvaluatedTokens: last.hot.usage.inputTokens,
    model: "bench-66M-f32",
    adapters: 1,
    threads,
    contextSize: CONTEXT_SIZE,
    runs,
    goals: { resumeTtftRatio: 0.05 },
  };
  log(`resume TTFT ratio ${figures.resumeTtftRatio} (goal ≤ 0.05)`);
  console.log(JSON.stringify(figures));
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
