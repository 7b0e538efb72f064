/**
 * Multi-LoRA throughput: 8 chat sessions on 8 different persona adapters versus 8 sessions on one adapter,
 * same base model (the 66M bench model), same process, through the Soulmesh engine (AdapterStore over a
 * folder source holding the bench adapters under fake CIDs, SessionStateStore, context pool).
 *
 * How: each configuration run builds a fresh engine with a fresh adapter cache (so adapters are fetched and
 * verified again) and a memory budget with room for every context it needs (no session is evicted; checked).
 * It opens 8 sessions, then serves 3 chat turns per session round-robin (turn 1 of sessions 1…8, then turn 2
 * of each, …), one generation at a time: each turn is the whole conversation so far plus a new user message
 * (≈25 tokens), answered with 32 tokens, greedy. One at a time on purpose: with threads = cores − 1 it measures
 * what an adapter costs (LoRA compute, one context per adapter set, adapter loading) without the batching or
 * extra cores that concurrent generations would bring to one configuration and not the other.
 * - throughput = output tokens / wall seconds from the first openSession to the last turn's end;
 * - steady-state throughput counts turns 2 and 3 only (contexts exist, adapters loaded);
 * - first-turn cost: openSession (adapter fetch and hash check) and the first turn (context creation on first
 *   use of an adapter set, prompt evaluation, generation), per session, means; contextCreateMeanMs is the time
 *   from the start of a turn that creates a context to the engine's context:created event, per context.
 * A small warm-up of both configurations runs first; then the measured runs go single, multi, multi, single so
 * neither configuration benefits from going second; each configuration's figures pool its two runs
 * (runTokensPerSecond lists the four in that order).
 * Context creation is mostly allocating and clearing the KV cache, ≈100 MiB per sequence of 4096 tokens here.
 * The pool sizes a context by demand (the sessions of its adapter set waiting for a sequence, at most
 * sequencesPerContext), so one session per adapter costs one sequence, not four: before that change the 8
 * multi contexts reserved 3.4 GB against 0.86 GB and the ratio was 0.71–0.77. On the 2-core VM this was
 * written on, touching freshly allocated memory was ≈5× slower when the process had not freed that much
 * moments before; the single, multi, multi, single order averages that out.
 * multiLoraThroughputRatio = multi / single throughput (goal ≥ 0.9).
 *
 *   npm run bench -- multi-lora
 */
import { randomBytes } from "node:crypto";
import { rmSync } from "node:fs";
import { copyFile, mkdir, mkdtemp, rm, stat } from "node:fs/promises";
import { freemem, tmpdir } from "node:os";
import { join } from "node:path";
import { getLlama, LlamaLogLevel, type Llama } from "node-llama-cpp";
import { AdapterStore, folderAdapterSource } from "../node/engine/adapters.js";
import { createEngine } from "../node/engine/engine.js";
import { FileHashCache } from "../node/engine/file-hash.js";
import type { ChatMessage } from "../node/engine/generate.js";
import { loadBaseModel, type LoadedModel } from "../node/engine/models.js";
import { SessionStateStore } from "../node/engine/state-store.js";
import { defaultThreads } from "../node/engine/threads.js";
import { benchAdapters, benchModel, type GgufFile } from "../test/fixtures/gguf/llama.js";
import { log, round, sentence } from "./_util.js";


const SESSIONS = 8;
const TURNS = 3;
const ANSWER_TOKENS = 32;
const CONTEXT_SIZE = 4096;
const SEQUENCES_PER_CONTEXT = 4;

type Config = "single" | "multi";


interface RunResult {
  config: Config;
  wallMs: number;
  outputTokens: number;
  inputTokens: number;
  steadyMs: number;
  steadyOutputTokens: number;
  openMs: number[];
  firstTurnMs: number[];
  contextCreateMs: number[];
  turnMs: number[];
  contextsCreated: number;
  evictions: number;
  memoryBytes: number;
}

interface Setup {
  llama: Llama;
  base: LoadedModel;
  root: string;
  published: string;
  adapters: (GgufFile & { cid: string })[];
  memoryBudgetBytes: number;
}

async function runConfig(s: Setup, config: Config, sessions: number, turns: number): Promise<RunResult> {
  const dir = await mkdtemp(join(s.root, `${config}-`));
  const adapterStore = new AdapterStore({
    dir: join(dir, "adapters"),
    maxBytes: 2 ** 30,
    sources: [folderAdapterSource(s.published)],
  });
  const states = new SessionStateStore({ dir: join(dir, "states"), ttlMs: 60 * 60_000 });
  await adapterStore.start();
  await states.start();
  const engine = createEngine({
    llama: s.llama,
    models: [s.base],
    adapters: adapterStore,
    states,
    threads: defaultThreads(),
    contextSize: CONTEXT_SIZE,
    sequencesPerContext: SEQUENCES_PER_CONTEXT,
    memoryBudgetBytes: s.memoryBudgetBytes,
    maxConcurrent: 1,
  });
  await engine.start();
  let contextsCreated = 0;
  let evictions = 0;
  // A context is created inside the turn that first needs it: the time from that turn's start to the event.
  let turnStart = 0;
  const contextCreateMs: number[] = [];
  engine.addEventListener("context:created", () => {
    contextsCreated++;
    contextCreateMs.push(performance.now() - turnStart);
  });
  engine.addEventListener("session:evicted", () => evictions++);

  const result: RunResult = {
    config,
    wallMs: 0,
    outputTokens: 0,
    inputTokens: 0,
    steadyMs: 0,
    steadyOutputTokens: 0,
    openMs: [],
    firstTurnMs: [],
    contextCreateMs: [],
    turnMs: [],
    contextsCreated: 0,
    evictions: 0,
    memoryBytes: 0,
  };
  const start = performance.now();
  const ids: string[] = [];
  const chats: ChatMessage[][] = [];
  for (let i = 0; i < sessions; i++) {
    const adapter = s.adapters[config === "multi" ? i : 0]!;
    const sessionId = `${config}-${i}`;
    const t = performance.now();
    await engine.openSession({
      sessionId,
      modelSha256: s.base.sha256,
      adapters: [{ cid: adapter.cid, sha256: adapter.sha256 }],
      stateKey: randomBytes(32),
    });
    result.openMs.push(performance.now() - t);
    ids.push(sessionId);
    chats.push([{ role: "system", content: sentence(100 + i, 12) }]);
  }
  let steadyStart = 0;
  for (let turn = 0; turn < turns; turn++) {
    if (turn === 1) steadyStart = performance.now();
    for (let i = 0; i < sessions; i++) {
      const chat = chats[i]!;
      chat.push({ role: "user", content: sentence(i * 10 + turn, 20) });
      const t = (turnStart = performance.now());
      const r = await engine.generate(ids[i]!, { prompt: { chat }, maxTokens: ANSWER_TOKENS });
      const ms = performance.now() - t;
      chat.push({ role: "assistant", content: r.text });
      result.turnMs.push(ms);
      if (turn === 0) result.firstTurnMs.push(ms);
      else result.steadyOutputTokens += r.usage.outputTokens;
      result.outputTokens += r.usage.outputTokens;
      result.inputTokens += r.usage.inputTokens;
    }
  }
  const end = performance.now();
  result.wallMs = end - start;
  result.steadyMs = turns > 1 ? end - steadyStart : 0;
  result.memoryBytes = engine.load.memoryBytes;
  result.contextsCreated = contextsCreated;
  result.contextCreateMs = contextCreateMs;
  result.evictions = evictions; // before stop(), which saves every hot session
  await engine.stop();
  await adapterStore.stop();
  await states.stop();
  await rm(dir, { recursive: true, force: true });
  if (result.evictions > 0) throw new Error(`${config}: ${result.evictions} sessions were evicted; the memory budget is too small`);
  return result;
}

const mean = (values: readonly number[]): number => values.reduce((a, b) => a + b, 0) / values.length;

async function main(): Promise<void> {
  const root = await mkdtemp(join(tmpdir(), "soulmesh-bench-lora-"));
  process.once("exit", () => rmSync(root, { recursive: true, force: true })); // also when it fails
  const llama = await getLlama({ gpu: false, build: "never", logLevel: LlamaLogLevel.error });
  const [modelFile, adapterFiles] = await Promise.all([benchModel(), benchAdapters(SESSIONS)]);
  const published = join(root, "published");
  await mkdir(published);
  const adapters = await Promise.all(
    adapterFiles.map(async (file, i) => {
      const cid = `bafybenchpersonaadapter${i}`;
      await copyFile(file.path, join(published, cid));
      return { ...file, cid };
    }),
  );
  const hashCache = new FileHashCache({ path: join(root, "hashes.json") });
  const base = await loadBaseModel(llama, { source: modelFile.path, modelsDir: root, hashCache, gpuLayers: 0 });
  // Room for one context per session (the multi-adapter case), by node-llama-cpp's estimate plus the adapter.
  const { cpuRam, gpuVram } = await base.model.fileInsights.estimateContextResourceRequirementsV2({
    contextSize: CONTEXT_SIZE,
    sequences: SEQUENCES_PER_CONTEXT,
    modelGpuLayers: base.model.gpuLayers,
  });
  const adapterBytes = Math.max(...(await Promise.all(adapterFiles.map(async (f) => (await stat(f.path)).size))));
  const perContext = cpuRam + gpuVram + adapterBytes;
  const memoryBudgetBytes = Math.ceil(perContext * SESSIONS * 1.25);
  if (memoryBudgetBytes > freemem()) log(`warning: a budget of ${memoryBudgetBytes} bytes exceeds free memory`);
  const setup: Setup = { llama, base, root, published, adapters, memoryBudgetBytes };
  log(
    `${SESSIONS} sessions × ${TURNS} turns × ${ANSWER_TOKENS} tokens, threads ${defaultThreads()}, context ${CONTEXT_SIZE} ` +
      `× ${SEQUENCES_PER_CONTEXT} sequences (${(perContext / 2 ** 20).toFixed(0)} MiB each by estimate), ` +
      `budget ${(memoryBudgetBytes / 2 ** 30).toFixed(1)} GiB`,
  );

  log("warm-up…");
  await runConfig(setup, "single", 2, 1);
  await runConfig(setup, "multi", 2, 1);

  const runs: RunResult[] = [];
  for (const config of ["single", "multi", "multi", "single"] as const) {
    const r = await runConfig(setup, config, SESSIONS, TURNS);
    log(
      `${config.padEnd(6)}: ${((r.outputTokens * 1000) / r.wallMs).toFixed(1)} tok/s over ${(r.wallMs / 1000).toFixed(1)} s ` +
        `(steady ${((r.steadyOutputTokens * 1000) / r.steadyMs).toFixed(1)} tok/s), open ${mean(r.openMs).toFixed(0)} ms, ` +
        `first turn ${mean(r.firstTurnMs).toFixed(0)} ms, later turns ` +
        `${mean(r.turnMs.slice(SESSIONS)).toFixed(0)} ms; ${r.contextsCreated} contexts, ` +
        `${mean(r.contextCreateMs).toFixed(0)} ms to create each`,
    );
    runs.push(r);
  }
  await base.dispose();
  await llama.dispose();
  await rm(root, { recursive: true, force: true });

  const pooled = (config: Config) => {
    const rs = runs.filter((r) => r.config === config);
    const sum = (f: (r: RunResult) => number) => rs.reduce((a, r) => a + f(r), 0);
    return {
      throughput: (sum((r) => r.outputTokens) * 1000) / sum((r) => r.wallMs),
      steadyThroughput: (sum((r) => r.steadyOutputTokens) * 1000) / sum((r) => r.steadyMs),
      outputTokens: rs[0]!.outputTokens,
      inputTokens: rs[0]!.inputTokens,
      wallMs: mean(rs.map((r) => r.wallMs)),
      turnMs: mean(rs.flatMap((r) => r.turnMs)),
      laterTurnMs: mean(rs.flatMap((r) => r.turnMs.slice(SESSIONS))),
      firstTurnMs: mean(rs.flatMap((r) => r.firstTurnMs)),
      openMs: mean(rs.flatMap((r) => r.openMs)),
      contextCreateMs: mean(rs.flatMap((r) => r.contextCreateMs)),
      contexts: rs[0]!.contextsCreated,
      memoryBytes: rs[0]!.memoryBytes,
    };
  };
  const single = pooled("single");
  const multi = pooled("multi");
  const figures = {
    multiLoraThroughputRatio: round(multi.throughput / single.throughput, 3),
    multiLoraSteadyThroughputRatio: round(multi.steadyThroughput / single.steadyThroughput, 3),
    multiTokensPerSecond: round(multi.throughput),
    singleTokensPerSecond: round(single.throughput),
    multiSteadyTokensPerSecond: round(multi.steadyThroughput),
    singleSteadyTokensPerSecond: round(single.steadyThroughput),
    outputTokensPerRun: { multi: multi.outputTokens, single: single.outputTokens },
    inputTokensPerRun: { multi: multi.inputTokens, single: single.inputTokens },
    wallMsPerRun: { multi: round(multi.wallMs), single: round(single.wallMs) },
    turnMeanMs: { multi: round(multi.turnMs), single: round(single.turnMs) },
    laterTurnMeanMs: { multi: round(multi.laterTurnMs), single: round(single.laterTurnMs) },
    firstTurnMeanMs: { multi: round(multi.firstTurnMs), single: round(single.firstTurnMs) },
    openSessionMeanMs: { multi: round(multi.openMs), single: round(single.openMs) },
    runTokensPerSecond: runs.map((r) => round((r.outputTokens * 1000) / r.wallMs)),
    contextsCreatedPerRun: { multi: multi.contexts, single: single.contexts },
    contextCreateMeanMs: { multi: round(multi.contextCreateMs), single: round(single.contextCreateMs) },
    contextMemoryBytes: { multi: multi.memoryBytes, single: single.memoryBytes },
    memoryBudgetBytes,
    sessions: SESSIONS,
    turnsPerSession: TURNS,
    answerTokens: ANSWER_TOKENS,
    runsPerConfiguration: 2,
    model: "bench-66M-f32",
    threads: defaultThreads(),
    contextSize: CONTEXT_SIZE,
    sequencesPerContext: SEQUENCES_PER_CONTEXT,
    goals: { multiLoraThroughputRatio: 0.9 },
  };
  log(`multi/single throughput ${figures.multiLoraThroughputRatio} (goal ≥ 0.9)`);
  console.log(JSON.stringify(figures));
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
