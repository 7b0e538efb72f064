/**
 * `soulmesh up` as a child process: the whole local network from one command, checked from this process on
 * the chain, over libp2p and on IPFS; a second `up` on the same home refused; SIGTERM stopping it cleanly; a
 * re-run clearing the previous chain's local state and falling back to the tiny model when the download fails.
 * The creator dashboard that `up` serves answers on the network's chain and IPFS, or is reported as not served.
 * Also `soulmesh devnet` starting the home's IPFS service, and the model resolution's fallback rules.
 */
import { access, mkdir, mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { JsonRpcProvider } from "ethers";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ModelNotFoundError, InvalidModelUriError } from "../../node/engine/errors.js";
import { apiFilePath, openLocalIpfs } from "../../cli/ipfs/local-ipfs.js";
import { DEFAULT_MODEL_URI, fallbackMessage, resolveUpModel, TINY_MODEL_FILE } from "../../cli/up/model.js";
import { huggingFaceEndpoint, ModelDownloadError, modelProbeUrl } from "../../node/engine/model-probe.js";
import { startUpDashboard } from "../../cli/up/dashboard.js";
import { UP_DEFAULTS } from "../../cli/up/network.js";
import { connectContracts } from "../../sdk/chain/contracts.js";
import type { SoulmeshContracts } from "../../sdk/chain/contracts.js";
import { devAccounts } from "../../sdk/chain/dev-accounts.js";
import { readDeployment } from "../../sdk/chain/deployment.js";
import { createClientHost, gatherQuotes, readProviders } from "../../sdk/client/index.js";
import { readPersona } from "../../sdk/memory/persona/publish.js";
import { removeTinyFixtures, tinyFixtures } from "../fixtures/gguf/llama.js";
import { runCli } from "../helpers/cli.js";
import type { CliProcess } from "../helpers/cli.js";
import { MemoryBlockStore } from "../helpers/memory-block-store.js";

/** A host that never resolves (RFC 2606): the download fails at once, as without network. */
const NO_HOST = "http://soulmesh-no-such-host.invalid";
const CLEAN_ENV = { SOULMESH_ACCOUNT: "", SOULMESH_RPC_URL: "", SOULMESH_DEPLOYMENT: "", SOULMESH_IPFS_API: "", HF_ENDPOINT: NO_HOST };

interface Summary {
  pid: number;
  chainId: number;
  rpcUrl: string;
  deploymentPath: string;
  ipfs: { api: string; peerId: string; apiFile: string };
  model: { source: string; path: string; sha256: string; tiny: boolean; fallbackReason: string | null };
  provider: { address: string; peerId: string; multiaddrs: string[]; dataDir: string; statusUrl: string };
  persona: { id: string; name: string; creator: string };
  agent: { id: string; owner: string };
  deposit: { units: string; formatted: string };
  dashboard: string | null;
}

/** A stand-in for dashboard/dist, which another process may be rebuilding while these tests run. */
const TEST_PAGE = "<!doctype html><title>Soulmesh up test page</title>";

let root: string;
let dist: string;
const children: CliProcess[] = [];

/** `up --no-chat` in a child process; never on the dashboard's default port 5173, which a developer may be using. */
function up(home: string, extra: string[] = [], env: Record<string, string> = {}): CliProcess {
  const dashboard = extra.includes("--no-dashboard") ? [] : ["--dashboard-port", "0"];
  const p = runCli(["up", "--no-chat", "--port", "0", "--json", "--home", home, ...dashboard, ...extra], {
    ...CLEAN_ENV,
    SOULMESH_DASHBOARD_DIST: dist,
    ...env,
  });
  children.push(p);
  return p;
}

async function stopped(p: CliProcess): Promise<number | null> {
  p.child.kill("SIGTERM");
  return p.exited();
}

async function exists(path: string): Promise<boolean> {
  return access(path).then(
    () => true,
    () => false,
  );
}

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), "soulmesh-up-"));
  dist = join(root, "dist");
  await mkdir(dist);
  await writeFile(join(dist, "index.html"), TEST_PAGE);
});

afterAll(async () => {
  for (const p of children) if (p.child.exitCode === null && p.child.signalCode === null) p.child.kill("SIGKILL");
  await removeTinyFixtures();
  await rm(root, { recursive: true, force: true });
});

describe("soulmesh up --no-chat --offline", () => {
  let home: string;
  let cli: CliProcess;
  let summary: Summary;
  let rpc: JsonRpcProvider;
  let contracts: SoulmeshContracts;
  const [, user, creator, providerAccount] = devAccounts(4);

  beforeAll(async () => {
    home = join(root, "home");
    cli = up(home, ["--offline"]);
    summary = await cli.firstJson<Summary>(90_000);
    rpc = new JsonRpcProvider(summary.rpcUrl, undefined, { staticNetwork: true, polling: false });
    contracts = connectContracts(await readDeployment(summary.deploymentPath), rpc);
  }, 120_000);

  afterAll(() => rpc?.destroy());

  it("serves the generated tiny model, saying that its replies are noise", async () => {
    const fx = await tinyFixtures();
    expect(summary.model).toMatchObject({ tiny: true, sha256: fx.base.sha256, path: join(home, "models", TINY_MODEL_FILE) });
    expect(summary.model.fallbackReason).toBe("--offline");
    expect(cli.stderr()).toContain(fallbackMessage(DEFAULT_MODEL_URI, "--offline"));
  });

  it("publishes the demo persona on chain and IPFS, with the served model's hash", async () => {
    expect(summary.persona).toEqual({ id: "1", name: "Wren", creator: creator!.address });
    const record = await contracts.personaRegistry.personaOf(1n);
    expect(record.baseModelHash.toLowerCase()).toBe(summary.model.sha256);
    expect(await contracts.personaRegistry.ownerOf(1n)).toBe(creator!.address);
    // Through the running service's API, as every other command reads it.
    const ipfs = await openLocalIpfs({ home });
    try {
      expect(ipfs.kind).toBe("kubo");
      const persona = await readPersona({ registry: contracts.personaRegistry, store: ipfs.store, personaId: 1n });
      expect(persona.card.name).toBe("Wren");
      expect(persona.royaltyPerMillion).toBe(UP_DEFAULTS.royaltyPerMillion);
    } finally {
      await ipfs.close();
    }
  });

  it("mints agent 1 of the persona for dev account 1 and deposits 50 tUSD for it", async () => {
    expect(summary.agent).toEqual({ id: "1", owner: user!.address });
    expect(await contracts.agentRegistry.ownerOf(1n)).toBe(user!.address);
    expect(await contracts.agentRegistry.personaOf(1n)).toBe(1n);
    expect(await contracts.inferenceEscrow.depositOf(user!.address)).toBe(50_000_000n);
    expect(summary.deposit).toEqual({ units: "50000000", formatted: "50 tUSD" });
  });

  it("registers the provider (dev account 3), which answers quotes over libp2p", async () => {
    const records = await readProviders(contracts.providerRegistry, { modelSha256: summary.model.sha256 });
    expect(records.map((r) => r.address)).toEqual([providerAccount!.address]);
    expect(records[0]!.peerId).toBe(summary.provider.peerId);
    const host = await createClientHost();
    try {
      const libp2p = await host.start();
      const { quoted, unreachable } = await gatherQuotes(libp2p, records, { modelSha256: summary.model.sha256 });
      expect(unreachable).toEqual([]);
      expect(quoted).toHaveLength(1);
      expect(quoted[0]!.quote).toMatchObject({
        provider: providerAccount!.address,
        models: [summary.model.sha256],
        priceInputPerMillion: UP_DEFAULTS.prices.input.toString(),
        priceOutputPerMillion: UP_DEFAULTS.prices.output.toString(),
      });
    } finally {
      await host.stop();
    }
  });

  it("serves the creator dashboard on the network's chain and IPFS node", async () => {
    expect(summary.dashboard).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    expect(new URL(summary.dashboard!).port).not.toBe("5173");
    const page = await fetch(summary.dashboard!);
    expect(await page.text()).toBe(TEST_PAGE);
    const config = (await (await fetch(`${summary.dashboard}/api/config`)).json()) as {
      chainId: number;
      deployment: { contracts: Record<string, string>; devAccounts?: unknown };
      devAccounts: { label: string; address: string }[];
      ipfs: boolean;
      baseModels: { sha256: string }[];
    };
    expect(config.chainId).toBe(summary.chainId);
    expect(config.deployment.contracts).toEqual((await readDeployment(summary.deploymentPath)).contracts);
    expect(config.deployment.devAccounts).toBeUndefined();
    expect(config.ipfs).toBe(true);
    expect(config.devAccounts).toContainEqual({ label: "creator", address: creator!.address });
    expect(config.baseModels.map((m) => m.sha256)).toContain(summary.model.sha256);
    const persona = await fetch(`${summary.dashboard}/api/personas/1`);
    expect(persona.status).toBe(200);
    expect(((await persona.json()) as { name: string }).name).toBe("Wren");
    const missing = await fetch(`${summary.dashboard}/api/personas/2`);
    expect(((await missing.json()) as { error: { name: string } }).error.name).toBe("PersonaNotFoundError");
  });

  it("reports, rather than throws, a dashboard whose page is not built or whose port is taken", async () => {
    const deployment = await readDeployment(summary.deploymentPath);
    const base = { rpcUrl: summary.rpcUrl, deployment, store: new MemoryBlockStore(), home: join(root, "no-home") };
    const notBuilt = await startUpDashboard({ ...base, assetsDir: join(root, "no-dist"), port: 0 });
    expect(notBuilt.server).toBeUndefined();
    expect(notBuilt).toMatchObject({ reason: expect.stringContaining("npm run build:dashboard") });
    const port = Number(new URL(summary.dashboard!).port);
    const taken = await startUpDashboard({ ...base, assetsDir: dist, port });
    expect(taken.server).toBeUndefined();
    expect(taken).toMatchObject({
      reason: `port ${port} is in use (pass --dashboard-port 0 or --no-dashboard)`,
      warning: expect.stringContaining("--dashboard-port 0"),
    });
    // The running one is untouched.
    expect((await fetch(`${summary.dashboard}/api/config`)).status).toBe(200);
  });

  it("records its IPFS service in <home>/ipfs/api.json", async () => {
    const record = JSON.parse(await readFile(apiFilePath(home), "utf8")) as { url: string; pid: number };
    expect(record).toMatchObject({ url: summary.ipfs.api, pid: summary.pid });
  });

  it("refuses a second `up` on the same home, naming the running one", async () => {
    const second = up(home, ["--offline"]);
    const code = await second.exited();
    expect(code).toBe(1);
    const error = (JSON.parse(second.stdout().trim().split("\n").at(-1)!) as { error: { name: string; message: string } }).error;
    expect(error.name).toBe("DevnetRunningError");
    expect(error.message).toContain(`process ${summary.pid}`);
    // The first one is untouched.
    expect(await contracts.agentRegistry.ownerOf(1n)).toBe(user!.address);
  }, 60_000);

  it("stops cleanly on SIGTERM: exit 0, api.json and devnet.json removed", async () => {
    expect(await stopped(cli)).toBe(0);
    expect(await exists(apiFilePath(home))).toBe(false);
    expect(await exists(summary.deploymentPath)).toBe(false);
  }, 60_000);

  it("on a re-run clears the old chain's agents and vouchers, and falls back when the download fails", async () => {
    const stale = join(home, "agents", "31337-1");
    const otherChain = join(home, "agents", "8453-1");
    const vouchers = join(summary.provider.dataDir, "vouchers", "stale-marker");
    for (const dir of [stale, otherChain, join(summary.provider.dataDir, "vouchers")]) await mkdir(dir, { recursive: true });
    await writeFile(vouchers, "old chain");
    await writeFile(join(stale, "journal"), "old chain");

    const again = up(home, ["--model", "hf:soulmesh/missing-GGUF/missing.gguf", "--no-dashboard"]);
    const s = await again.firstJson<Summary>(90_000);
    try {
      expect(s.model.tiny).toBe(true);
      expect(s.model.fallbackReason).toContain("ENOTFOUND");
      expect(again.stderr()).toContain(
        "Could not download hf:soulmesh/missing-GGUF/missing.gguf (ENOTFOUND soulmesh-no-such-host.invalid): using a generated " +
          "tiny model instead; its replies are noise. Pass --model PATH to use a real GGUF.",
      );
      expect(await readdir(join(home, "agents"))).toEqual(["8453-1"]);
      expect(await exists(vouchers)).toBe(false);
      expect(s.agent.id).toBe("1");
      expect(s.dashboard).toBeNull();
      expect(again.stderr()).not.toContain("creator dashboard");
    } finally {
      expect(await stopped(again)).toBe(0);
    }
  }, 120_000);
});

describe("soulmesh devnet", () => {
  it("also runs the home's IPFS service, and stops it on SIGTERM", async () => {
    const home = join(root, "devnet-home");
    const p = runCli(["devnet", "--port", "0", "--json", "--home", home], CLEAN_ENV);
    children.push(p);
    const d = await p.firstJson<{ chainId: number; ipfs: { api: string; apiFile: string } }>(60_000);
    expect(d.ipfs.apiFile).toBe(apiFilePath(home));
    const ipfs = await openLocalIpfs({ home });
    try {
      expect(ipfs.kind).toBe("kubo");
      expect(ipfs.description).toContain(d.ipfs.api);
    } finally {
      await ipfs.close();
    }
    expect(await stopped(p)).toBe(0);
    expect(await exists(apiFilePath(home))).toBe(false);
  }, 90_000);
});

describe("resolveUpModel", () => {
  const uri = "hf:soulmesh/test-GGUF/test.gguf";
  let modelsDir: string;
  beforeAll(async () => {
    modelsDir = join(root, "models");
  });

  it("falls back to the tiny model when the host does not resolve, saying why", async () => {
    const saved = process.env.HF_ENDPOINT;
    process.env.HF_ENDPOINT = NO_HOST;
    try {
      const told: string[] = [];
      const model = await resolveUpModel({ source: uri, modelsDir, onFallback: (f) => told.push(f.message) });
      expect(model).toMatchObject({ tiny: true, uri: undefined, path: join(modelsDir, TINY_MODEL_FILE) });
      expect(model.fallback!.reason).toBe("ENOTFOUND soulmesh-no-such-host.invalid");
      expect(told).toEqual([fallbackMessage(uri, "ENOTFOUND soulmesh-no-such-host.invalid")]);
    } finally {
      if (saved === undefined) delete process.env.HF_ENDPOINT;
      else process.env.HF_ENDPOINT = saved;
    }
  });

  it("falls back when the download itself fails after the host answered", async () => {
    let downloads = 0;
    const model = await resolveUpModel({
      source: uri,
      modelsDir,
      probe: async () => {},
      download: async () => {
        downloads++;
        throw new Error("connection reset by peer");
      },
    });
    expect(downloads).toBe(1);
    expect(model.tiny).toBe(true);
    expect(model.fallback!.reason).toBe("connection reset by peer");
  });

  it("uses the downloaded model, and never probes or downloads with --offline", async () => {
    const ok = await resolveUpModel({ source: uri, modelsDir, probe: async () => {}, download: async () => "/models/x.gguf" });
    expect(ok).toEqual({ path: "/models/x.gguf", source: uri, uri, tiny: false, fallback: undefined });
    const offline = await resolveUpModel({
      source: uri,
      modelsDir,
      offline: true,
      probe: async () => {
        throw new Error("probed although offline");
      },
      download: async () => {
        throw new Error("downloaded although offline");
      },
    });
    expect(offline).toMatchObject({ tiny: true, fallback: { reason: "--offline" } });
  });

  it("refuses a malformed hf: URI or a missing path with typed errors, writing nothing", async () => {
    const empty = join(root, "untouched-models");
    await expect(resolveUpModel({ source: "hf:alice", modelsDir: empty })).rejects.toBeInstanceOf(InvalidModelUriError);
    await expect(resolveUpModel({ source: join(root, "nope.gguf"), modelsDir: empty })).rejects.toBeInstanceOf(ModelNotFoundError);
    expect(await exists(empty)).toBe(false);
  });

  it("probes the URL node-llama-cpp downloads from", () => {
    expect(modelProbeUrl(DEFAULT_MODEL_URI, "https://huggingface.co/")).toBe(
      "https://huggingface.co/Qwen/Qwen2.5-0.5B-Instruct-GGUF/resolve/main/qwen2.5-0.5b-instruct-q4_k_m.gguf",
    );
    expect(modelProbeUrl("hf:a/b-GGUF:Q4_K_M", "https://m.example/")).toBe("https://m.example/api/models/a/b-GGUF");
    expect(modelProbeUrl("hf:a/b/dir/f.gguf#dev", "https://m.example/")).toBe("https://m.example/a/b/resolve/dev/dir/f.gguf");
    expect(huggingFaceEndpoint({})).toBe("https://huggingface.co/");
    expect(huggingFaceEndpoint({ HF_ENDPOINT: "https://hf-mirror.com" })).toBe("https://hf-mirror.com/");
    expect(huggingFaceEndpoint({ MODEL_ENDPOINT: "not a url", HF_ENDPOINT: "http://m" })).toBe("http://m/");
    expect(new ModelDownloadError(uri, "HTTP 404").message).toContain("--model PATH");
  });
});
