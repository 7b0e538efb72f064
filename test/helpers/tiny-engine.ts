import { copyFile, mkdir } from "node:fs/promises";
import { join } from "node:path";
import { getLlama, LlamaLogLevel, type Llama } from "node-llama-cpp";
import {
  AdapterStore,
  createEngine,
  FileHashCache,
  folderAdapterSource,
  loadBaseModel,
  SessionStateStore,
  type EngineOptions,
  type InferenceEngine,
  type LoadedModel,
} from "../../node/engine/index.js";
import type { TinyFixtures } from "../fixtures/gguf/llama.js";

/** A started engine on the tiny fixture model, with what it was built from. */
export interface TinyEngine {
  llama: Llama;
  base: LoadedModel;
  adapters: AdapterStore;
  states: SessionStateStore;
  engine: InferenceEngine;
  /** Stops the engine, its stores and the model, in that order. */
  stop(): Promise<void>;
}

/**
 * A real inference engine on `fx.base` (one thread, CPU only) whose adapters are fetched by CID from a
 * folder under `root`, holding `published` (CID → adapter file).
 *
 * @example
 * const tiny = await startTinyEngine(root, fx, { bafyAdapter: fx.adapters[0]!.path })
 * await tiny.engine.openSession({ sessionId: "s", modelSha256: fx.base.sha256, stateKey })
 * await tiny.stop()
 */
export async function startTinyEngine(
  root: string,
  fx: TinyFixtures,
  published: Record<string, string> = {},
  options: Partial<Omit<EngineOptions, "llama" | "models" | "adapters" | "states">> = {},
): Promise<TinyEngine> {
  const folder = join(root, "published");
  await mkdir(folder, { recursive: true });
  for (const [cid, path] of Object.entries(published)) await copyFile(path, join(folder, cid));
  const llama = await getLlama({ gpu: false, build: "never", logLevel: LlamaLogLevel.error });
  const base = await loadBaseModel(llama, {
    source: fx.base.path,
    modelsDir: root,
    hashCache: new FileHashCache({ path: join(root, "hashes.json") }),
    gpuLayers: 0,
  });
  const adapters = new AdapterStore({ dir: join(root, "adapters"), maxBytes: 2 ** 30, sources: [folderAdapterSource(folder)] });
  await adapters.start();
  const states = new SessionStateStore({ dir: join(root, "states"), ttlMs: 60 * 60_000 });
  await states.start();
  const engine = createEngine({ llama, models: [base], adapters, states, threads: 1, contextSize: 512, memoryBudgetBytes: 2 ** 30, ...options });
  await engine.start();
  return {
    llama,
    base,
    adapters,
    states,
    engine,
    async stop() {
      await engine.stop();
      await adapters.stop();
      await states.stop();
      await base.dispose();
      await llama.dispose();
    },
  };
}
