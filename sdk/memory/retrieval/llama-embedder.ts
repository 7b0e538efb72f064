/**
 * Embeddings from an embedding GGUF (e.g. nomic-embed, bge) through node-llama-cpp, for agents whose owner
 * configured one: better semantic recall than averaged word vectors, at the cost of a model in memory and a
 * forward pass per text.
 */
import { stat } from "node:fs/promises";
import { availableParallelism } from "node:os";
import { basename } from "node:path";
import { getLlama, type Llama } from "node-llama-cpp";
import { normalize, type Embedder } from "./embedder.js";

/** Options of {@link loadLlamaEmbedder}. */
export interface LlamaEmbedderOptions {
  modelPath: string;
  /** CPU threads; default: cores − 1, at least 1 (node-llama-cpp's own default oversubscribes 2 cores). */
  threads?: number;
  /** Tokens per text at most (longer texts are cut); default the model's training context, at most 2,048. */
  contextSize?: number;
  /**
   * The embedder's id, saved with every index; default `llama:<file name>:<file size>:<dimensions>`. Set it
   * when the same model may sit under another name.
   */
  id?: string;
  /** A Llama instance to share (default: a CPU one of its own). */
  llama?: Llama;
  signal?: AbortSignal;
}

/** An embedder that holds a model: dispose() frees it. */
export type DisposableEmbedder = Embedder & { dispose(): Promise<void> };

/**
 * Loads an embedding model.
 *
 * @example
 * const embedder = await loadLlamaEmbedder({ modelPath: "./models/nomic-embed-text-v1.5.Q8_0.gguf" })
 * const [vector] = await embedder.embed(["I adopted a puppy"])
 * await embedder.dispose()
 */
export async function loadLlamaEmbedder(options: LlamaEmbedderOptions): Promise<DisposableEmbedder> {
  const { signal } = options;
  signal?.throwIfAborted();
  const size = (await stat(options.modelPath)).size;
  const llama = options.llama ?? (await getLlama({ gpu: false }));
  const model = await llama.loadModel({ modelPath: options.modelPath, ...(signal !== undefined && { loadSignal: signal }) });
  try {
    const contextSize = options.contextSize ?? Math.min(model.trainContextSize, 2048);
    const context = await model.createEmbeddingContext({
      contextSize,
      threads: options.threads ?? Math.max(1, availableParallelism() - 1),
      ...(signal !== undefined && { createSignal: signal }),
    });
    const dimensions = model.embeddingVectorSize;
    // One text at a time: the context evaluates one sequence, and a second call must not interleave.
    let queue: Promise<unknown> = Promise.resolve();
    const embedOne = async (text: string): Promise<Float32Array> => {
      const tokens = model.tokenize(text).slice(0, contextSize);
      const embedding = await context.getEmbeddingFor(tokens);
      return normalize(Float32Array.from(embedding.vector));
    };
    return {
      id: options.id ?? `llama:${basename(options.modelPath)}:${size}:${dimensions}`,
      dimensions,
      embed: (texts, o = {}) => {
        const run = queue.then(async () => {
          const out: Float32Array[] = [];
          for (const text of texts) {
            o.signal?.throwIfAborted();
            out.push(await embedOne(text));
          }
          return out;
        });
        queue = run.catch(() => undefined);
        return run;
      },
      dispose: async () => {
        await queue;
        await context.dispose();
        await model.dispose();
      },
    };
  } catch (err) {
    await model.dispose();
    throw err;
  }
}
