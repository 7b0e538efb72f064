/**
 * What the provider network costs a chat turn: time to first token and generation tokens/s through the whole
 * path (SDK chat turn → libp2p over TCP loopback with Noise and Yamux → provider node → engine →
 * node-llama-cpp) against bare node-llama-cpp, in the same process and the same run, on the bench model
 * (66M parameters, F32, test/fixtures/gguf).
 *
 * Setup: an in-process EDR chain with Soulmesh deployed; a real provider (node/provider startProvider: engine,
 * libp2p host, quote/session/inference/voucher protocols, voucher book, settlement worker, registration),
 * engine threads = defaultThreads() (cores − 1), contextSize 4096, sequencesPerContext 1 (so its context has
 * the bare one's shape); a persona without adapter on the bench model; one payer with a deposit; a client
 * libp2p host and a vocabulary-only tokenizer (exact input-token checks, as a real client runs).
 * The prompt: a system and a user message (words of the bench vocabulary) of ≈200 tokens through the model's
 * chat template (ChatML); GENERATED tokens greedily (temperature 0). The bench model never emits EOS, so
 * maxTokens bounds the output exactly.
 *
 * Each run of `--runs N` (default 5, after one warm-up of each, not counted) is one bare run then one network
 * run, interleaved:
 * - bare: one context (same contextSize and threads as the engine's, 1 sequence) on the provider's own
 *   LlamaModel; the sequence is cleared, then `sequence.evaluate(promptTokens, {temperature: 0})` with the
 *   prompt tokenized by sdk/client/tokenizer.ts tokenizeChat, exactly as the engine tokenizes it. TTFT: from the
 *   evaluate call to the first token; tokens/s: tokens after the first over the time from the first to the last.
 * - network: a new chat (openChat: registry, quotes; not timed) whose first turn opens a fresh provider
 *   session, so no KV cache is reused (checked: usage.cachedInputTokens = 0). Session open (quote, chain
 *   reads, signing, the session protocol) is not part of a turn: TTFT runs from the chat's `session:opened`
 *   event (the end of the open, inside turn()) to the first onChunk, plus the client's work in turn() before
 *   the open (the local tokenizer's count, timed). It includes building and validating the request, a new
 *   Yamux stream and protocol negotiation, the provider's decode, checks, engine admission, tokenization,
 *   sequence acquisition, prompt evaluation and the first chunk's way back. tokens/s: output tokens after the
 *   first over the time from the first chunk to the last (the receipt and voucher come after the last chunk
 *   and are not counted). Afterwards the chat is closed, the provider's session closed (its sequence freed for
 *   the next run) and its voucher settled, before the next run starts.
 * Figures are medians over the interleaved pairs (bare run i, network run i), so that the machine's drift
 * between runs cancels out: throughputRatio = median of network / bare tokens per second of each pair,
 * ttftOverheadMs = median of network − bare TTFT of each pair (goals: ≥ 0.97 and ≤ 15 ms). `breakdown` splits the network TTFT (medians, ms): client request to the
 * provider's handler, handler to engine.generate, engine.generate to its first chunk, that chunk to the
 * client's onChunk; `engineTokensPerSecond` is the generation speed seen at the engine's onChunk.
 * Two diagnostics less sensitive to other processes on the machine: `tokenIntervalMs`, the median gap between
 * consecutive tokens (bare), engine chunks and client chunks; `jsMsPerToken`, the main thread's busy time per
 * token from the first token to the last (event-loop utilization: JavaScript plus node-llama-cpp's synchronous
 * batch preparation and sampling, which run on that thread too). The network − bare difference of the latter is
 * what the whole path (provider and client, both in this process) adds on the main thread per token.
 *
 *   npm run bench -- network-overhead [--runs N] [--tokens N]
 */
import { mkdtemp, rm } from "node:fs/promises";
import { rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { performance, type EventLoopUtilization } from "node:perf_hooks";
import { join } from "node:path";
import { ZeroHash, type Wallet } from "ethers";
import { getLlama, LlamaLogLevel, type Token } from "node-llama-cpp";
import { connectContracts } from "../sdk/chain/contracts.js";
import { createClientHost, loadLocalTokenizer, openChat, type LocalTokenizer } from "../sdk/client/index.js";
import { tokenizeChat } from "../sdk/client/tokenizer.js";
import type { ChatMessage } from "../sdk/protocol/messages.js";
import { defaultThreads } from "../node/engine/threads.js";
import { startProvider } from "../node/provider/provider.js";
import { benchModel } from "../test/fixtures/gguf/llama.js";
import { createTestChain } from "../test/helpers/chain.js";
import { deployFixture, USD } from "../test/helpers/soulmesh.js";
import { argNumber, log, median, round, sentence } from "./_util.js";

const CONTEXT_SIZE = 4096;
const PROMPT_TOKENS = 200;
const PRICES = { input: 500_000n, output: 1_500_000n };

interface BareRun {
  ttftMs: number;
  tokensPerSecond: number;
  tokens: number;
  /** Median time between consecutive tokens (chunks): robust to bursts of load from other processes. */
  tokenIntervalMs: number;
  /** Main-thread (event loop) busy time from the first token to the last, per token: the JavaScript work. */
  jsMsPerToken: number;
}

/** The median gap between consecutive timestamps. */
const medianGap = (times: readonly number[]): number => median(times.slice(1).map((t, i) => t - times[i]!));

interface NetworkRun extends BareRun {
  requestToHandlerMs: number;
  handlerToEngineMs: number;
  engineTtftMs: number;
  chunkDeliveryMs: number;
  tokenizeMs: number;
  engineTokensPerSecond: number;
  engineTokenIntervalMs: number;
}

async function main(): Promise<void> {
  const runs = argNumber("runs", 5);
  const generated = argNumber("tokens", 128);
  const threads = defaultThreads();
  const root = await mkdtemp(join(tmpdir(), "soulmesh-bench-net-"));
  process.once("exit", () => rmSync(root, { recursive: true, force: true }));

  log("starting the chain and deploying…");
  const chain = await createTestChain();
  const f = await deployFixture(chain);
  const [, providerWallet, payer, creator] = chain.wallets as [Wallet, Wallet, Wallet, Wallet];
  const escrow = { chainId: f.deployment.chainId, address: f.deployment.contracts.inferenceEscrow };
  const file = await benchModel();
  log(`bench model ${file.path}`);

  const llama = await getLlama({ gpu: false, build: "never", logLevel: LlamaLogLevel.error });
  await f.fund(providerWallet.address, BigInt(f.deployment.parameters.minStake));
  log("starting the provider…");
  const node = await startProvider({
    dataDir: join(root, "provider"),
    models: [file.path],
    prices: PRICES,
    deployment: f.deployment,
    rpc: chain.provider,
    privateKey: providerWallet.privateKey,
    metricsPort: 0,
    llama,
    engine: { threads, contextSize: CONTEXT_SIZE, sequencesPerContext: 1 },
  });
  const { engine, protocols, worker } = node.parts;
  const model = node.models[0]!.model;

  const personaId = await f.createPersona(creator, { adapterSha256: ZeroHash, baseModelHash: file.sha256, royaltyPerMillion: 200_000n });
  const agentId = await f.mintAgent(payer, personaId);
  // The provider is paid only from the payer's lane with it.
  await f.depositAndCommit(payer, providerWallet.address, 100n * USD);
  const innerTokenizer = await loadLocalTokenizer(file.path, { modelSha256: file.sha256, llama });
  let tokenizeMs = 0;
  const tokenizer: LocalTokenizer = {
    modelSha256: innerTokenizer.modelSha256,
    count: (prompt) => {
      const start = performance.now();
      try {
        return innerTokenizer.count(prompt);
      } finally {
        tokenizeMs += performance.now() - start;
      }
    },
    dispose: () => innerTokenizer.dispose(),
  };
  const client = await createClientHost();
  const libp2p = await client.start();
  const contracts = connectContracts(f.deployment, chain.provider);

  // The prompt: a system message and a user message grown until the chat has PROMPT_TOKENS tokens or more.
  let words = 10;
  const messagesOf = (n: number): ChatMessage[] => [
    { role: "system", content: sentence(1, 30) },
    { role: "user", content: sentence(2, n) },
  ];
  while (tokenizeChat(model, messagesOf(words)).tokens.length < PROMPT_TOKENS) words++;
  const messages = messagesOf(words);
  const promptTokens: Token[] = tokenizeChat(model, messages).tokens;

  // Bare node-llama-cpp: the engine's context shape, on the same loaded model.
  const context = await model.createContext({ contextSize: CONTEXT_SIZE, sequences: 1, threads });
  const sequence = context.getSequence();
  const bare = async (): Promise<BareRun> => {
    await sequence.clearHistory();
    const start = performance.now();
    const times: number[] = [];
    let elu: EventLoopUtilization | undefined;
    let jsMs = 0;
    const iterator = sequence.evaluate(promptTokens, { temperature: 0, yieldEogToken: true });
    try {
      for await (const _token of iterator) {
        times.push(performance.now());
        if (times.length === 1) elu = performance.eventLoopUtilization();
        if (times.length >= generated) {
          jsMs = performance.eventLoopUtilization(elu).active;
          break;
        }
      }
    } finally {
      await iterator.return();
    }
    const first = times[0]!;
    const last = times.at(-1)!;
    const tokens = times.length;
    return { ttftMs: first - start, tokensPerSecond: ((tokens - 1) * 1000) / (last - first), tokens, tokenIntervalMs: medianGap(times), jsMsPerToken: jsMs / (tokens - 1) };
  };

  // Where a network turn's time goes: the engine's call and first chunk, the handler's start (turn:served).
  let engineCalledAt = 0;
  const engineChunks: number[] = [];
  const generate = engine.generate.bind(engine);
  engine.generate = (sessionId, options) => {
    engineCalledAt = performance.now();
    const onChunk = options.onChunk;
    return generate(sessionId, {
      ...options,
      onChunk: (chunk) => {
        engineChunks.push(performance.now());
        if (engineChunks.length === 1) netElu.start = performance.eventLoopUtilization();
        onChunk?.(chunk);
      },
    });
  };
  const netElu: { start: EventLoopUtilization | undefined; activeMs: number } = { start: undefined, activeMs: 0 };
  const handler: { served: { ttftMs: number } | undefined } = { served: undefined };
  protocols.addEventListener("turn:served", (e) => (handler.served = e.detail));

  const network = async (): Promise<NetworkRun> => {
    const chat = await openChat({
      libp2p,
      contracts,
      signer: payer,
      escrow,
      agentId,
      personaId,
      modelSha256: file.sha256,
      spendingCap: 5n * USD,
      tokenizer,
      stallTimeoutMs: 60_000,
    });
    let openedAt = 0;
    let sessionId = "";
    chat.addEventListener("session:opened", (e) => {
      openedAt = performance.now();
      sessionId = e.detail.sessionId;
    });
    const chunks: number[] = [];
    engineChunks.length = 0;
    netElu.activeMs = 0;
    handler.served = undefined;
    tokenizeMs = 0;
    const result = await chat.turn({
      prompt: messages,
      maxTokens: generated,
      sampling: { temperature: 0 },
      onChunk: () => {
        chunks.push(performance.now());
        if (chunks.length === generated) netElu.activeMs = performance.eventLoopUtilization(netElu.start).active;
      },
    });
    chat.close();
    if (result.usage.cachedInputTokens !== 0) throw new Error(`the turn reused ${result.usage.cachedInputTokens} cached tokens`);
    if (result.usage.inputTokens !== promptTokens.length) throw new Error(`the provider evaluated ${result.usage.inputTokens} prompt tokens`);
    if (result.failovers.length > 0) throw new Error(`the turn failed over: ${result.failovers.map((x) => x.kind).join(", ")}`);
    const served = handler.served as { ttftMs: number } | undefined; // set by the event during the turn
    if (served === undefined || chunks.length === 0 || engineChunks.length === 0) throw new Error("the turn streamed nothing");
    const tokens = result.usage.outputTokens;
    const first = chunks[0]!;
    const last = chunks.at(-1)!;
    const engineFirst = engineChunks[0]!;
    const handlerStart = engineFirst - served.ttftMs;
    // Free the session's sequence for the next run and settle its voucher, so nothing runs in the background.
    await engine.closeSession(sessionId);
    await new Promise((resolve) => setTimeout(resolve, 50));
    await worker.settleNow();
    return {
      ttftMs: first - openedAt + tokenizeMs,
      tokensPerSecond: ((tokens - 1) * 1000) / (last - first),
      tokens,
      requestToHandlerMs: handlerStart - openedAt,
      handlerToEngineMs: engineCalledAt - handlerStart,
      engineTtftMs: engineFirst - engineCalledAt,
      chunkDeliveryMs: first - engineFirst,
      tokenizeMs,
      engineTokensPerSecond: ((engineChunks.length - 1) * 1000) / (engineChunks.at(-1)! - engineFirst),
      tokenIntervalMs: medianGap(chunks),
      jsMsPerToken: netElu.activeMs / (engineChunks.length - 1),
      engineTokenIntervalMs: medianGap(engineChunks),
    };
  };

  log(`threads ${threads}, prompt ${promptTokens.length} tokens, ${generated} generated; warm-up…`);
  await bare();
  await network();
  const bares: BareRun[] = [];
  const nets: NetworkRun[] = [];
  for (let i = 0; i < runs; i++) {
    const b = await bare();
    const n = await network();
    bares.push(b);
    nets.push(n);
    log(
      `run ${i + 1}/${runs}: bare ttft ${b.ttftMs.toFixed(1)} ms, ${b.tokensPerSecond.toFixed(1)} tok/s ` +
        `(gap ${b.tokenIntervalMs.toFixed(2)} ms, js ${b.jsMsPerToken.toFixed(3)} ms/token) | network ttft ` +
        `${n.ttftMs.toFixed(1)} ms (request→handler ${n.requestToHandlerMs.toFixed(1)}, handler→engine ` +
        `${n.handlerToEngineMs.toFixed(1)}, engine ${n.engineTtftMs.toFixed(1)}, chunk→client ${n.chunkDeliveryMs.toFixed(1)}, ` +
        `tokenize ${n.tokenizeMs.toFixed(2)}), ${n.tokensPerSecond.toFixed(1)} tok/s (engine ${n.engineTokensPerSecond.toFixed(1)}; ` +
        `gap ${n.tokenIntervalMs.toFixed(2)} ms, engine ${n.engineTokenIntervalMs.toFixed(2)} ms, js ${n.jsMsPerToken.toFixed(3)} ms/token)`,
    );
  }

  await sequence.dispose();
  await context.dispose();
  await client.stop();
  await node.stop();
  await tokenizer.dispose();
  await llama.dispose();
  await chain.close();
  await rm(root, { recursive: true, force: true });

  const m = (pick: (r: NetworkRun) => number) => median(nets.map(pick));
  const networkTps = m((r) => r.tokensPerSecond);
  const bareTps = median(bares.map((r) => r.tokensPerSecond));
  const networkTtft = m((r) => r.ttftMs);
  const bareTtft = median(bares.map((r) => r.ttftMs));
  const figures = {
    throughputRatio: round(median(nets.map((r, i) => r.tokensPerSecond / bares[i]!.tokensPerSecond)), 3),
    ttftOverheadMs: round(median(nets.map((r, i) => r.ttftMs - bares[i]!.ttftMs))),
    networkTokensPerSecond: round(networkTps),
    bareTokensPerSecond: round(bareTps),
    networkTtftMs: round(networkTtft),
    bareTtftMs: round(bareTtft),
    promptTokens: promptTokens.length,
    outputTokens: median(nets.map((r) => r.tokens)),
    runs,
    threads,
    model: "bench-66M-f32",
    breakdown: {
      requestToHandlerMs: round(m((r) => r.requestToHandlerMs), 2),
      handlerToEngineMs: round(m((r) => r.handlerToEngineMs), 2),
      engineTtftMs: round(m((r) => r.engineTtftMs), 2),
      chunkDeliveryMs: round(m((r) => r.chunkDeliveryMs), 2),
      clientTokenizeMs: round(m((r) => r.tokenizeMs), 2),
    },
    engineTokensPerSecond: round(m((r) => r.engineTokensPerSecond)),
    tokenIntervalMs: {
      bare: round(median(bares.map((r) => r.tokenIntervalMs)), 3),
      engine: round(m((r) => r.engineTokenIntervalMs), 3),
      network: round(m((r) => r.tokenIntervalMs), 3),
    },
    jsMsPerToken: { bare: round(median(bares.map((r) => r.jsMsPerToken)), 3), network: round(m((r) => r.jsMsPerToken), 3) },
  };
  console.log(JSON.stringify(figures));
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
