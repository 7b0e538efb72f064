import { createHash } from "node:crypto";
import { copyFile, mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { getLlama } from "node-llama-cpp";
import type { Llama } from "node-llama-cpp";
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it, vi } from "vitest";
import { tinyFixtures } from "../../test/fixtures/gguf/llama.js";
import type { TinyFixtures } from "../../test/fixtures/gguf/llama.js";
import {
  HashMismatchError,
  InvalidGgufError,
  InvalidHashError,
  InvalidModelUriError,
  ModelNotFoundError,
} from "./errors.js";
import { FileHashCache } from "./file-hash.js";
import { hfUriProblem, isHuggingFaceUri, loadBaseModel, readBaseModelInfo, resolveModelFile } from "./models.js";

let dir: string;
let modelsDir: string;
let hashCache: FileHashCache;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), "soulmesh-models-"));
  modelsDir = join(dir, "models");
  hashCache = new FileHashCache({ path: join(dir, "hashes.json") });
});
afterEach(() => rm(dir, { recursive: true, force: true }));

let llama: Llama;
beforeAll(async () => {
  llama = await getLlama({ gpu: false, build: "never" });
});
afterAll(() => llama?.dispose());

function sha256Of(bytes: Uint8Array | string): string {
  return `0x${createHash("sha256").update(bytes).digest("hex")}`;
}

describe("resolveModelFile", () => {
  it("returns a local GGUF path as an absolute path", async () => {
    const path = join(dir, "m.gguf");
    await writeFile(path, "x");
    expect(await resolveModelFile(path, { modelsDir })).toBe(path);
  });

  it("refuses a missing path and a directory with ModelNotFoundError", async () => {
    await expect(resolveModelFile(join(dir, "missing.gguf"), { modelsDir })).rejects.toBeInstanceOf(ModelNotFoundError);
    await mkdir(join(dir, "folder.gguf"));
    const err = await resolveModelFile(join(dir, "folder.gguf"), { modelsDir }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ModelNotFoundError);
    expect((err as Error).name).toBe("ModelNotFoundError");
    expect((err as Error).message).toContain("hf:");
  });

  it("tells hf: URIs from paths", () => {
    expect(isHuggingFaceUri("hf:alice/tiny-GGUF:Q8_0")).toBe(true);
    expect(isHuggingFaceUri("huggingface:alice/tiny")).toBe(true);
    expect(isHuggingFaceUri("./hf/model.gguf")).toBe(false);
  });

  it("refuses malformed hf: URIs with the reason, before any network access", async () => {
    const malformed = [
      "hf:",
      "hf:alice",
      "hf:alice/",
      "hf:/tiny-GGUF",
      "hf:alice//tiny.gguf",
      "hf:alice/tiny-GGUF/../secret.gguf",
      "hf:alice/tiny-GGUF/readme.md",
      "hf:alice/tiny-GGUF:",
      "hf:alice/tiny-GGUF:Q8_0/tiny.gguf",
      "hf:al ice/tiny-GGUF",
    ];
    for (const uri of malformed) {
      expect(hfUriProblem(uri), uri).toBeDefined();
      const err = await resolveModelFile(uri, { modelsDir }).catch((e: unknown) => e);
      expect(err, uri).toBeInstanceOf(InvalidModelUriError);
      expect((err as Error).message).toContain(uri);
    }
    for (const uri of ["hf:alice/tiny-GGUF", "hf:alice/tiny-GGUF:Q8_0", "hf:alice/tiny-GGUF/sub/tiny.Q8_0.gguf#dev"]) {
      expect(hfUriProblem(uri), uri).toBeUndefined();
    }
  });

  it("finds an hf: model already downloaded into modelsDir without network access", async () => {
    // node-llama-cpp names a download hf_<user>_<file>: finding it proves modelsDir is where it downloads to.
    await mkdir(modelsDir, { recursive: true });
    const file = join(modelsDir, "hf_alice_tiny.Q8_0.gguf");
    await writeFile(file, "gguf bytes");
    expect(await resolveModelFile("hf:alice/tiny-GGUF/tiny.Q8_0.gguf", { modelsDir })).toBe(file);
    expect(await resolveModelFile("hf:alice/tiny-GGUF:Q8_0", { modelsDir, download: false })).toBe(file);
  });

  it("with downloads off, refuses an hf: model not in modelsDir", async () => {
    const err = await resolveModelFile("hf:alice/tiny-GGUF:Q8_0", { modelsDir, download: false }).catch(
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(ModelNotFoundError);
    expect(String((err as Error).cause)).toContain(modelsDir);
  });

  it("stops with the signal's reason when already aborted", async () => {
    const reason = new Error("stop");
    await expect(
      resolveModelFile("hf:alice/tiny-GGUF:Q8_0", { modelsDir, signal: AbortSignal.abort(reason) }),
    ).rejects.toBe(reason);
  });
});

describe("loadBaseModel with bad inputs", () => {
  it("refuses a missing path and a directory", async () => {
    await expect(loadBaseModel(llama, { source: join(dir, "nope.gguf"), modelsDir, hashCache })).rejects.toBeInstanceOf(
      ModelNotFoundError,
    );
    await expect(loadBaseModel(llama, { source: dir, modelsDir, hashCache })).rejects.toBeInstanceOf(
      ModelNotFoundError,
    );
  });

  it("refuses a file that is not GGUF with InvalidGgufError", async () => {
    const path = join(dir, "notes.gguf");
    await writeFile(path, "this is not a GGUF file at all, just text that is long enough to parse a header from");
    const err = await loadBaseModel(llama, { source: path, modelsDir, hashCache }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(InvalidGgufError);
    expect((err as InvalidGgufError).path).toBe(path);
    await expect(readBaseModelInfo(path)).rejects.toBeInstanceOf(InvalidGgufError);
  });

  it("refuses a file whose hash is not the expected one before reading it as GGUF", async () => {
    // Not GGUF either: the hash check comes first, so the parser never sees unverified bytes.
    const path = join(dir, "model.gguf");
    await writeFile(path, "some bytes");
    const expected = `0x${"00".repeat(32)}`;
    const err = await loadBaseModel(llama, { source: path, modelsDir, hashCache, expectedSha256: expected }).catch(
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(HashMismatchError);
    expect(err).toMatchObject({ what: "model", expected, actual: sha256Of("some bytes") });
  });

  it("refuses a malformed expected hash", async () => {
    const path = join(dir, "model.gguf");
    await writeFile(path, "some bytes");
    await expect(
      loadBaseModel(llama, { source: path, modelsDir, hashCache, expectedSha256: "sha256:abc" }),
    ).rejects.toBeInstanceOf(InvalidHashError);
  });
});

describe("loadBaseModel with real GGUF models", () => {
  let fx: TinyFixtures;
  beforeAll(async () => {
    fx = await tinyFixtures();
  });

  it("hashes, reads and loads a model, remembering its hash for the next start", async () => {
    const phases = new Set<string>();
    const loaded = await loadBaseModel(llama, {
      source: fx.base.path,
      modelsDir,
      hashCache,
      expectedSha256: fx.base.sha256.toUpperCase().replace("0X", "0x"),
      gpuLayers: 0,
      onProgress: ({ phase }) => phases.add(phase),
    });
    try {
      expect(loaded.sha256).toBe(fx.base.sha256);
      expect(loaded.path).toBe(fx.base.path);
      expect(loaded.architecture).toBe("llama");
      // ggml ne order: a projection is [n_in, n_out].
      expect(loaded.tensorShapes.get("blk.0.attn_q.weight")).toEqual([64, 64]);
      expect(loaded.tensorShapes.get("blk.0.attn_k.weight")).toEqual([64, 32]);
      expect(loaded.model.tokenize("hello").length).toBeGreaterThan(0);
      expect([...phases].sort()).toEqual(["hash", "load"]);
    } finally {
      await loaded.dispose();
    }
    // The hash is cached on disk: a fresh cache (next start) knows it without reading the model.
    expect(await new FileHashCache({ path: join(dir, "hashes.json") }).peek(fx.base.path)).toBe(fx.base.sha256);
  });

  it("refuses a model whose hash is not the registered one, and loads nothing", async () => {
    const loadModel = vi.spyOn(llama, "loadModel");
    try {
      const err = await loadBaseModel(llama, {
        source: fx.base.path,
        modelsDir,
        hashCache,
        expectedSha256: fx.otherBase.sha256,
      }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(HashMismatchError);
      expect(err).toMatchObject({ name: "HashMismatchError", expected: fx.otherBase.sha256, actual: fx.base.sha256 });
      expect(loadModel).not.toHaveBeenCalled();
    } finally {
      loadModel.mockRestore();
    }
  });

  it("refuses an adapter given as the model", async () => {
    const err = await loadBaseModel(llama, { source: fx.adapters[0]!.path, modelsDir, hashCache }).catch(
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(InvalidGgufError);
    expect((err as Error).message).toContain("adapter");
  });

  it("refuses a truncated GGUF file", async () => {
    const bytes = await readFile(fx.base.path);
    const path = join(dir, "truncated.gguf");
    await writeFile(path, bytes.subarray(0, 2000));
    await expect(loadBaseModel(llama, { source: path, modelsDir, hashCache })).rejects.toBeInstanceOf(InvalidGgufError);
  });

  it("loads an hf: model already in modelsDir, without network access", async () => {
    await mkdir(modelsDir, { recursive: true });
    await copyFile(fx.base.path, join(modelsDir, "hf_alice_tiny.Q8_0.gguf"));
    const loaded = await loadBaseModel(llama, {
      source: "hf:alice/tiny-GGUF:Q8_0",
      modelsDir,
      hashCache,
      download: false,
      expectedSha256: fx.base.sha256,
    });
    expect(loaded.path).toBe(join(modelsDir, "hf_alice_tiny.Q8_0.gguf"));
    expect(loaded.sha256).toBe(fx.base.sha256);
    await loaded.dispose();
  });

  it("stops with the signal's reason, before loading anything", async () => {
    const loadModel = vi.spyOn(llama, "loadModel");
    const reason = new Error("shutting down");
    try {
      await expect(
        loadBaseModel(llama, { source: fx.base.path, modelsDir, hashCache, signal: AbortSignal.abort(reason) }),
      ).rejects.toBe(reason);
      expect(loadModel).not.toHaveBeenCalled();
    } finally {
      loadModel.mockRestore();
    }
  });
});
