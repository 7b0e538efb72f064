/**
 * An `hf:` model that is not downloaded yet, on a machine that cannot reach the download host: `soulmesh provider
 * start` fails at once with ModelHostUnreachableError (instead of node-llama-cpp's minutes of retries), while one
 * already in --models-dir is served without touching the network. Also the probe itself against a local HTTP
 * server (the URL and method node-llama-cpp would download from, the token, HTTP errors, a host that never answers).
 */
import { copyFile, mkdir, mkdtemp, readdir, rm } from "node:fs/promises";
import { createServer } from "node:http";
import type { IncomingMessage, Server } from "node:http";
import type { AddressInfo } from "node:net";
import { existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ModelNotFoundError } from "../../node/engine/errors.js";
import { ModelDownloadError, ModelHostUnreachableError, probeModelHost } from "../../node/engine/model-probe.js";
import { resolveModelFile } from "../../node/engine/models.js";
import type { Deployment } from "../../sdk/chain/deployment.js";
import { removeTinyFixtures, tinyFixtures, type TinyFixtures } from "../fixtures/gguf/llama.js";
import { runCli, type CliProcess } from "../helpers/cli.js";

const URI = "hf:alice/tiny-GGUF/tiny.Q8_0.gguf";
/** The file name node-llama-cpp downloads URI to (hf_<user>_<file>). */
const DOWNLOADED_NAME = "hf_alice_tiny.Q8_0.gguf";

let root: string;
/** A loopback port nothing listens on: the connection is refused at once, as on a machine without network. */
let unreachable: string;
let unreachableHost: string;
let fx: TinyFixtures;
const children: CliProcess[] = [];

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), "soulmesh-provider-offline-"));
  fx = await tinyFixtures();
  // Port 1 would do, but fetch refuses it as a "bad port" before connecting; a port just freed is refused by the OS.
  const closed = createServer();
  await new Promise<void>((resolve) => closed.listen(0, "127.0.0.1", resolve));
  unreachableHost = `127.0.0.1:${(closed.address() as AddressInfo).port}`;
  unreachable = `http://${unreachableHost}`;
  await new Promise<void>((resolve) => closed.close(() => resolve()));
});

afterAll(async () => {
  for (const p of children) {
    if (p.child.exitCode === null && p.child.signalCode === null) {
      p.child.kill("SIGINT");
      await p.exited();
    }
  }
  await rm(root, { recursive: true, force: true });
  await removeTinyFixtures();
});

/** Runs `fn` with the download endpoint pointing at `endpoint`, restoring the environment afterwards. */
async function withEndpoint<T>(endpoint: string, fn: () => Promise<T>): Promise<T> {
  const saved = { MODEL_ENDPOINT: process.env.MODEL_ENDPOINT, HF_ENDPOINT: process.env.HF_ENDPOINT };
  delete process.env.MODEL_ENDPOINT;
  process.env.HF_ENDPOINT = endpoint;
  try {
    return await fn();
  } finally {
    for (const [key, value] of Object.entries(saved)) {
      if (value === undefined) delete process.env[key];
      else process.env[key] = value;
    }
  }
}

describe("resolveModelFile without network", () => {
  it("refuses an hf: model not downloaded yet with ModelHostUnreachableError, downloading nothing", async () => {
    const modelsDir = join(root, "empty-models");
    const err = await withEndpoint(unreachable, () => resolveModelFile(URI, { modelsDir }).catch((e: unknown) => e));
    expect(err).toBeInstanceOf(ModelHostUnreachableError);
    const refused = err as ModelHostUnreachableError;
    expect(refused.host).toBe(unreachableHost);
    expect(refused.reason).toContain("ECONNREFUSED");
    expect(refused.message).toContain(`Cannot reach ${unreachableHost} to download ${URI}`);
    expect(refused.message).toContain("--offline");
    expect(await readdir(modelsDir)).toEqual([]);
  });

  it("finds an hf: model already in modelsDir without probing", async () => {
    const modelsDir = join(root, "models-with-file");
    await mkdir(modelsDir, { recursive: true });
    await copyFile(fx.base.path, join(modelsDir, DOWNLOADED_NAME));
    const probe = async (): Promise<void> => {
      throw new Error("probed although the file is there");
    };
    const path = await withEndpoint(unreachable, () => resolveModelFile(URI, { modelsDir, probe }));
    expect(path).toBe(join(modelsDir, DOWNLOADED_NAME));
  });

  it("stops before downloading when an injected probe fails, and skips the probe when told", async () => {
    const modelsDir = join(root, "probe-models");
    const seen: { uri: string; timeoutMs: number | undefined }[] = [];
    const failing = async (uri: string, options: { timeoutMs?: number }): Promise<void> => {
      seen.push({ uri, timeoutMs: options.timeoutMs });
      throw new ModelDownloadError(uri, "HTTP 404");
    };
    await expect(resolveModelFile(URI, { modelsDir, probe: failing, probeTimeoutMs: 1234 })).rejects.toBeInstanceOf(
      ModelDownloadError,
    );
    expect(seen).toEqual([{ uri: URI, timeoutMs: 1234 }]);
    // With downloads off nothing is probed: the missing file is simply not found.
    await expect(resolveModelFile(URI, { modelsDir, probe: failing, download: false })).rejects.toBeInstanceOf(
      ModelNotFoundError,
    );
    expect(seen).toHaveLength(1);
    expect(await readdir(modelsDir)).toEqual([]);
  });
});

describe("probeModelHost against a local HTTP server", () => {
  let server: Server;
  let endpoint: string;
  const requests: { method: string | undefined; url: string | undefined; authorization: string | undefined }[] = [];
  /** Status to answer per path; paths under /hang/ never get an answer. */
  const statuses = new Map<string, number>();

  beforeAll(async () => {
    server = createServer((req: IncomingMessage, res) => {
      requests.push({ method: req.method, url: req.url, authorization: req.headers.authorization });
      if (req.url?.startsWith("/hang/")) return;
      res.writeHead(statuses.get(req.url ?? "") ?? 404).end();
    });
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    endpoint = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });

  afterAll(async () => {
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });

  it("asks with HEAD for the file node-llama-cpp downloads, sending HF_TOKEN", async () => {
    statuses.set("/alice/tiny-GGUF/resolve/main/tiny.Q8_0.gguf", 302);
    requests.length = 0;
    await probeModelHost(URI, { env: { HF_ENDPOINT: endpoint, HF_TOKEN: "hf_secret" } });
    expect(requests).toEqual([
      { method: "HEAD", url: "/alice/tiny-GGUF/resolve/main/tiny.Q8_0.gguf", authorization: "Bearer hf_secret" },
    ]);
  });

  it("turns HTTP errors into ModelDownloadError saying what to do", async () => {
    const missing = await probeModelHost("hf:alice/tiny-GGUF/missing.gguf", { env: { HF_ENDPOINT: endpoint } }).catch(
      (e: unknown) => e,
    );
    expect(missing).toBeInstanceOf(ModelDownloadError);
    expect((missing as ModelDownloadError).reason).toContain("HTTP 404");
    statuses.set("/private/repo-GGUF/resolve/main/m.gguf", 401);
    const locked = await probeModelHost("hf:private/repo-GGUF/m.gguf", { env: { HF_ENDPOINT: endpoint } }).catch(
      (e: unknown) => e,
    );
    expect(locked).toBeInstanceOf(ModelDownloadError);
    expect((locked as ModelDownloadError).reason).toContain("HF_TOKEN");
  });

  it("gives up on a host that never answers with ModelHostUnreachableError", async () => {
    const err = await probeModelHost("hf:hang/x-GGUF/x.gguf", {
      env: { HF_ENDPOINT: `${endpoint}/hang` },
      timeoutMs: 300,
    }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ModelHostUnreachableError);
    expect((err as ModelHostUnreachableError).reason).toContain("no answer from");
  });

  it("stops with the caller's signal's reason", async () => {
    const reason = new Error("stop");
    await expect(
      probeModelHost("hf:hang/x-GGUF/x.gguf", { env: { HF_ENDPOINT: `${endpoint}/hang` }, signal: AbortSignal.abort(reason) }),
    ).rejects.toBe(reason);
  });
});

describe("soulmesh provider start without network", () => {
  let home: string;
  let deployment: Deployment;

  beforeAll(async () => {
    home = join(root, "home");
    const devnet = runCli(["devnet", "--port", "0", "--json"], { SOULMESH_HOME: home });
    children.push(devnet);
    deployment = await devnet.firstJson<Deployment>();
  });

  function start(modelsDir: string, extra: string[] = []): CliProcess {
    const p = runCli(
      ["provider", "start", "--model", URI, "--models-dir", modelsDir, "--dev-account", "3", "--no-ipfs",
        "--metrics-port", "0", "--threads", "1", "--context-size", "512", "--json", ...extra],
      { SOULMESH_HOME: home, MODEL_ENDPOINT: "", HF_ENDPOINT: unreachable, SOULMESH_PROVIDER_KEY: "" },
    );
    children.push(p);
    return p;
  }

  it("exits 1 with ModelHostUnreachableError for an hf: model not downloaded yet", async () => {
    const modelsDir = join(root, "cli-empty-models");
    const p = start(modelsDir);
    expect(await p.exited()).toBe(1);
    const { error } = JSON.parse(p.stdout()) as { error: { name: string; message: string } };
    expect(error.name).toBe("ModelHostUnreachableError");
    expect(error.message).toContain(`Cannot reach ${unreachableHost} to download ${URI}`);
    expect(error.message).toContain("--models-dir");
    expect(existsSync(join(home, "provider", "provider.json"))).toBe(false);
    expect((await readdir(modelsDir)).filter((f) => f.endsWith(".gguf"))).toEqual([]);
  }, 60_000);

  it("with --offline, says the model is not in --models-dir, without probing", async () => {
    const p = start(join(root, "cli-offline-models"), ["--offline"]);
    expect(await p.exited()).toBe(1);
    expect(JSON.parse(p.stdout())).toMatchObject({ error: { name: "ModelNotFoundError" } });
  }, 60_000);

  it("serves an hf: model already in --models-dir although the host is unreachable", async () => {
    const modelsDir = join(root, "cli-models");
    await mkdir(modelsDir, { recursive: true });
    await copyFile(fx.base.path, join(modelsDir, DOWNLOADED_NAME));
    const p = start(modelsDir);
    const started = await p.firstJson<{ address: string; registration: { action: string } }>(60_000);
    expect(started).toMatchObject({ address: deployment.devAccounts![3]!.address, registration: { action: "registered" } });
    p.child.kill("SIGTERM");
    expect(await p.exited()).toBe(0);
  }, 90_000);
});
