/** `soulmesh model inspect` and `soulmesh model run`, as a user runs them, on generated GGUF models. */
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { removeTinyFixtures, tinyFixtures, type TinyFixtures } from "../fixtures/gguf/llama.js";
import { runCli } from "../helpers/cli.js";

let fx: TinyFixtures;
let home: string;

beforeAll(async () => {
  fx = await tinyFixtures();
  home = await mkdtemp(join(tmpdir(), "soulmesh-model-cli-"));
});

afterAll(async () => {
  await rm(home, { recursive: true, force: true });
  await removeTinyFixtures();
});

async function soulmesh(args: string[]): Promise<{ code: number | null; json: Record<string, unknown>; stderr: string }> {
  const cli = runCli(["--home", home, "--json", ...args]);
  const code = await cli.exited();
  return { code, json: JSON.parse(cli.stdout().trim().split("\n").at(-1)!) as Record<string, unknown>, stderr: cli.stderr() };
}

describe("soulmesh model", () => {
  it("inspect prints the SHA-256 to register, the architecture and the context size", async () => {
    const { code, json } = await soulmesh(["model", "inspect", fx.base.path]);
    expect(code).toBe(0);
    expect(json).toMatchObject({ sha256: fx.base.sha256, architecture: "llama", trainContextSize: 2048, path: fx.base.path });
  });

  it("run generates through the engine, with and without a persona adapter, and reports exact usage", async () => {
    const args = ["model", "run", fx.base.path, "--raw", "--prompt", "The people of the world", "--max-tokens", "6"];
    const plain = await soulmesh(args);
    const persona = await soulmesh([...args, "--adapter", fx.adapters[0]!.path]);
    expect(plain.code).toBe(0);
    expect(persona.code).toBe(0);
    expect(plain.json).toMatchObject({ model: fx.base.sha256, stopReason: "maxTokens", usage: { cachedInputTokens: 0, outputTokens: 6 } });
    expect(persona.json.text).not.toBe(plain.json.text);
  });

  it("fails with a typed error and a hint: missing model, adapter for another base", async () => {
    const missing = await soulmesh(["model", "inspect", join(home, "nope.gguf")]);
    expect(missing.code).toBe(1);
    expect(missing.json).toMatchObject({ error: { name: "ModelNotFoundError" } });

    const foreign = await soulmesh(["model", "run", fx.base.path, "--prompt", "hi", "--adapter", fx.otherBaseAdapter.path]);
    expect(foreign.code).toBe(1);
    expect(foreign.json).toMatchObject({ error: { name: "AdapterBaseMismatchError" } });
    expect(String((foreign.json.error as { message: string }).message)).toMatch(/another base model/);
  });
});
