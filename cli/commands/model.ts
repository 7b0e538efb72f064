import { randomBytes } from "node:crypto";
import { mkdtemp, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { basename, dirname, join } from "node:path";
import type { Command } from "commander";
import { InvalidArgumentError } from "commander";
import { getLlama, LlamaLogLevel, type Llama } from "node-llama-cpp";
import { soulmeshHome } from "../../sdk/chain/deployment.js";
import {
  AdapterStore,
  createEngine,
  defaultThreads,
  FileHashCache,
  folderAdapterSource,
  loadBaseModel,
  sha256File,
  SessionStateStore,
  type LoadedModel,
  type ModelLoadProgress,
} from "../../node/engine/index.js";
import { createOutput, type Output } from "../output.js";
import { globalOptions } from "./options.js";

function parsePositiveInt(value: string): number {
  if (!/^\d+$/.test(value) || Number(value) < 1) throw new InvalidArgumentError("expected a positive whole number.");
  return Number(value);
}

function parseTemperature(value: string): number {
  const t = Number(value);
  if (!Number.isFinite(t) || t < 0 || t > 10) throw new InvalidArgumentError("expected a number from 0 to 10.");
  return t;
}

/** Progress lines for a model's download, hash and load: at most one line per phase per 10%. */
function modelProgress(out: Output): (p: ModelLoadProgress) => void {
  const shown = new Map<string, number>();
  return ({ phase, done, total }) => {
    if (!(total > 0)) return;
    const tenth = Math.floor((done / total) * 10);
    if ((shown.get(phase) ?? -1) >= tenth) return;
    shown.set(phase, tenth);
    out.progress(`${phase === "hash" ? "hashing" : phase === "load" ? "loading" : "downloading"} ${tenth * 10}%`);
  };
}

/** Loads a model as every `soulmesh model` command does: hash cache in the models folder, progress shown. */
function loadForCli(
  llama: Llama,
  source: string,
  options: { modelsDir: string; offline: boolean; out: Output; signal?: AbortSignal },
): Promise<LoadedModel> {
  return loadBaseModel(llama, {
    source,
    modelsDir: options.modelsDir,
    hashCache: new FileHashCache({ path: join(options.modelsDir, "hashes.json") }),
    gpuLayers: 0,
    download: !options.offline,
    showProgressBar: !options.out.json,
    onProgress: modelProgress(options.out),
    ...(options.signal !== undefined && { signal: options.signal }),
  });
}

interface ModelCommandOptions {
  modelsDir?: string;
  offline: boolean;
}

interface RunCommandOptions extends ModelCommandOptions {
  prompt: string;
  system?: string;
  raw: boolean;
  adapter?: string;
  adapterScale: number;
  maxTokens: number;
  temperature: number;
  threads?: number;
  contextSize: number;
}

/** Registers `soulmesh model inspect` and `soulmesh model run`. */
export function registerModel(program: Command): void {
  const model = program
    .command("model")
    .description("Inspect and try the GGUF models a provider serves (local path or hf:<user>/<repo>/<file>)");

  model
    .command("inspect <source>")
    .description("Download if needed, hash and describe a model: its SHA-256 is what providers and personas register")
    .option("--models-dir <dir>", "where hf: models are downloaded (default <home>/models)")
    .option("--offline", "never download: an hf: model must already be in the models folder", false)
    .addHelpText(
      "after",
      `
Examples:
  $ soulmesh model inspect ./models/qwen2.5-0.5b-instruct-q4_k_m.gguf
  $ soulmesh model inspect hf:Qwen/Qwen2.5-0.5B-Instruct-GGUF/qwen2.5-0.5b-instruct-q4_k_m.gguf --json`,
    )
    .action(async (source: string, opts: ModelCommandOptions, cmd: Command) => {
      const g = globalOptions(cmd);
      const out = createOutput({ json: g.json });
      const home = g.home ?? soulmeshHome();
      const modelsDir = opts.modelsDir ?? join(home, "models");
      const llama = await getLlama({ gpu: false, build: "never", logLevel: LlamaLogLevel.error });
      try {
        const loaded = await loadForCli(llama, source, { modelsDir, offline: opts.offline, out });
        try {
          const m = loaded.model;
          const info = {
            source,
            path: loaded.path,
            sha256: loaded.sha256,
            architecture: loaded.architecture,
            bytes: (await stat(loaded.path)).size,
            trainContextSize: m.trainContextSize,
          };
          out.result(
            info,
            [
              `model        ${loaded.path}`,
              `sha256       ${loaded.sha256}`,
              `architecture ${info.architecture}`,
              `size         ${(info.bytes / 2 ** 20).toFixed(1)} MiB`,
              `context      ${info.trainContextSize} tokens (trained)`,
              "",
              "Register this sha256 as a model you serve (provider) or as your persona's base model (creator).",
            ].join("\n"),
          );
        } finally {
          await loaded.dispose();
        }
      } finally {
        await llama.dispose();
      }
    });

  model
    .command("run <source>")
    .description("Generate locally through the provider engine, to check a model (and a persona adapter) works")
    .requiredOption("--prompt <text>", "the user message (or, with --raw, the text to continue)")
    .option("--system <text>", "a system prompt (chat only)")
    .option("--raw", "continue the text as is instead of using the model's chat template", false)
    .option("--adapter <file>", "a GGUF LoRA adapter file to apply")
    .option("--adapter-scale <n>", "the adapter's scale", Number, 1)
    .option("--max-tokens <n>", "most tokens to generate", parsePositiveInt, 128)
    .option("--temperature <t>", "sampling temperature (0 = greedy)", parseTemperature, 0)
    .option("--threads <n>", `CPU threads (default cores − 1 = ${defaultThreads()})`, parsePositiveInt)
    .option("--context-size <n>", "context size in tokens", parsePositiveInt, 2048)
    .option("--models-dir <dir>", "where hf: models are downloaded (default <home>/models)")
    .option("--offline", "never download: an hf: model must already be in the models folder", false)
    .addHelpText(
      "after",
      `
The output streams to stdout as it is generated; with --json, one object with the text and the exact
usage (input tokens evaluated, reused from cache, output tokens) is printed at the end.

Examples:
  $ soulmesh model run ./models/tiny.gguf --prompt "Hello, who are you?"
  $ soulmesh model run ./models/base.gguf --adapter ./persona.gguf --prompt "Hi" --max-tokens 64 --json`,
    )
    .action(async (source: string, opts: RunCommandOptions, cmd: Command) => {
      const g = globalOptions(cmd);
      const out = createOutput({ json: g.json });
      const home = g.home ?? soulmeshHome();
      const modelsDir = opts.modelsDir ?? join(home, "models");
      const work = await mkdtemp(join(tmpdir(), "soulmesh-model-run-"));
      const llama = await getLlama({ gpu: false, build: "never", logLevel: LlamaLogLevel.error });
      const abort = new AbortController();
      const onSigint = (): void => abort.abort(new Error("interrupted"));
      process.once("SIGINT", onSigint);
      try {
        const loaded = await loadForCli(llama, source, { modelsDir, offline: opts.offline, out, signal: abort.signal });
        const adapters = new AdapterStore({
          dir: join(work, "adapters"),
          maxBytes: 2 ** 40,
          sources: opts.adapter === undefined ? [] : [folderAdapterSource(dirname(opts.adapter))],
        });
        const states = new SessionStateStore({ dir: join(work, "states"), ttlMs: 60_000 });
        await adapters.start();
        await states.start();
        const engine = createEngine({
          llama,
          models: [loaded],
          adapters,
          states,
          contextSize: Math.min(opts.contextSize, loaded.model.trainContextSize),
          sequencesPerContext: 1,
          ...(opts.threads !== undefined && { threads: opts.threads }),
        });
        await engine.start();
        try {
          const adapterRefs =
            opts.adapter === undefined
              ? []
              : [{ cid: basename(opts.adapter), sha256: await sha256File(opts.adapter), scale: opts.adapterScale }];
          const sessionId = "local";
          await engine.openSession({ sessionId, modelSha256: loaded.sha256, adapters: adapterRefs, stateKey: randomBytes(32) });
          const started = performance.now();
          let firstTokenMs: number | undefined;
          const result = await engine.generate(sessionId, {
            prompt: opts.raw
              ? { text: opts.prompt }
              : {
                  chat: [
                    ...(opts.system !== undefined ? [{ role: "system" as const, content: opts.system }] : []),
                    { role: "user" as const, content: opts.prompt },
                  ],
                },
            maxTokens: opts.maxTokens,
            sampling: { temperature: opts.temperature },
            signal: abort.signal,
            onChunk: (chunk) => {
              firstTokenMs ??= performance.now() - started;
              if (!g.json) process.stdout.write(chunk.text);
            },
          });
          const seconds = (performance.now() - started) / 1000;
          const value = {
            model: loaded.sha256,
            text: result.text,
            stopReason: result.stopReason,
            usage: result.usage,
            timeToFirstTokenMs: firstTokenMs === undefined ? null : Math.round(firstTokenMs),
            tokensPerSecond: Number((result.usage.outputTokens / seconds).toFixed(1)),
          };
          if (g.json) out.result(value, "");
          else
            process.stderr.write(
              `\n\n${result.usage.inputTokens} input tokens, ${result.usage.outputTokens} output tokens ` +
                `(${value.tokensPerSecond} tokens/s), stopped: ${result.stopReason}\n`,
            );
        } finally {
          await engine.stop();
          await states.stop();
          await adapters.stop();
          await loaded.dispose();
        }
      } finally {
        process.off("SIGINT", onSigint);
        await llama.dispose();
        await rm(work, { recursive: true, force: true });
      }
    });
}
