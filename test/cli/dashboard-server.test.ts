/**
 * The creator dashboard's HTTP server at the HTTP level (no browser), over a real devnet and an in-memory block
 * store: configuration, the JSON-RPC proxy, static files, adapter uploads, preparing a persona that a dev account
 * then mints through /rpc, and the refusals (bad inputs, foreign Origin or Host, no IPFS). Then `soulmesh dashboard`
 * itself as a child process.
 */
import { createHash } from "node:crypto";
import { mkdir, mkdtemp, readFile as readFsFile, rm, writeFile } from "node:fs/promises";
import { request } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Interface } from "ethers";
import { CID } from "multiformats/cid";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { MAX_ADAPTER_BYTES, MAX_PREPARE_BODY_BYTES, MAX_RPC_BODY_BYTES, startDashboardServer } from "../../cli/dashboard/server.js";
import type { DashboardServer } from "../../cli/dashboard/server.js";
import { startDevnet } from "../../cli/devnet/devnet.js";
import type { Devnet } from "../../cli/devnet/devnet.js";
import { connectContracts } from "../../sdk/chain/contracts.js";
import { parseCharacterCard } from "../../sdk/memory/persona/card.js";
import { v2Card } from "../../sdk/memory/persona/fixtures.js";
import { readFile } from "../../sdk/vault/files.js";
import { tinyFixtures, type TinyFixtures } from "../fixtures/gguf/llama.js";
import { runCli } from "../helpers/cli.js";
import { MemoryBlockStore } from "../helpers/memory-block-store.js";

const INDEX_HTML = "<!doctype html><title>Soulmesh test page</title><script type=module src=/assets/app.js></script>";
const APP_JS = "console.log('dashboard')";

interface Answer {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  text: string;
  json: any;
}

/** An HTTP request with full control of the headers (fetch would not let a test forge Host). */
function http(
  server: { port: number },
  path: string,
  options: { method?: string; headers?: Record<string, string>; body?: Uint8Array | string; chunked?: boolean } = {},
): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const body = typeof options.body === "string" ? Buffer.from(options.body) : options.body;
    const req = request(
      {
        host: "127.0.0.1",
        port: server.port,
        path,
        method: options.method ?? (body === undefined ? "GET" : "POST"),
        headers: {
          ...(body !== undefined && (options.chunked ? { "transfer-encoding": "chunked" } : { "content-length": String(body.byteLength) })),
          ...options.headers,
        },
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("end", () => {
          const text = Buffer.concat(chunks).toString("utf8");
          let json: unknown;
          try {
            json = JSON.parse(text);
          } catch {
            json = undefined;
          }
          resolve({ status: res.statusCode!, headers: res.headers, text, json });
        });
        res.on("error", reject);
      },
    );
    req.on("error", reject);
    req.end(body);
  });
}

const postJson = (server: { port: number }, path: string, value: unknown, headers: Record<string, string> = {}): Promise<Answer> =>
  http(server, path, { body: JSON.stringify(value), headers: { "content-type": "application/json", ...headers } });

const sha256Hex = (bytes: Uint8Array): string => `0x${createHash("sha256").update(bytes).digest("hex")}`;
const base64 = (bytes: Uint8Array): string => Buffer.from(bytes).toString("base64");
const json = (value: unknown): Uint8Array => new TextEncoder().encode(JSON.stringify(value));

let root: string;
let assetsDir: string;
let devnet: Devnet;
let store: MemoryBlockStore;
let server: DashboardServer;
let bare: DashboardServer;
let fx: TinyFixtures;
let lora: Uint8Array;

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), "soulmesh-dashboard-"));
  assetsDir = join(root, "dist");
  await mkdir(join(assetsDir, "assets"), { recursive: true });
  await writeFile(join(assetsDir, "index.html"), INDEX_HTML);
  await writeFile(join(assetsDir, "assets", "app.js"), APP_JS);
  await writeFile(join(root, "secret.txt"), "not served");
  [devnet, fx] = await Promise.all([startDevnet({ port: 0, home: join(root, "devnet") }), tinyFixtures()]);
  lora = new Uint8Array(await readFsFile(fx.adapters[0]!.path));
  store = new MemoryBlockStore();
  const common = { rpcUrl: devnet.rpc.url, deployment: devnet.deployment, assetsDir };
  server = await startDashboardServer({ ...common, store, baseModels: [{ name: "tiny.gguf", sha256: fx.base.sha256 }] });
  bare = await startDashboardServer(common);
}, 60_000);

afterAll(async () => {
  await server?.close();
  await bare?.close();
  await devnet?.stop();
  await rm(root, { recursive: true, force: true });
});

describe("dashboard server", () => {
  it("gives the page its configuration: chain, deployment without keys, dev accounts, IPFS, base models", async () => {
    const { status, json: config, text } = await http(server, "/api/config");
    expect(status).toBe(200);
    expect(config.chainId).toBe(31337);
    expect(config.deployment.contracts).toEqual(devnet.deployment.contracts);
    expect(config.deployment.startBlock).toBe(devnet.deployment.startBlock);
    expect(config.deployment.devAccounts).toBeUndefined();
    for (const account of devnet.deployment.devAccounts!) expect(text).not.toContain(account.privateKey.slice(2));
    expect(config.devAccounts).toContainEqual({ label: "creator", address: devnet.deployment.devAccounts![2]!.address });
    expect(config.devAccounts).toHaveLength(devnet.deployment.devAccounts!.length);
    expect(config.ipfs).toBe(true);
    expect(config.baseModels).toEqual([{ name: "tiny.gguf", sha256: fx.base.sha256 }]);
    expect((await http(bare, "/api/config")).json).toMatchObject({ ipfs: false, baseModels: [] });
  });

  it("proxies JSON-RPC to the chain, single and batch", async () => {
    const single = await postJson(server, "/rpc", { jsonrpc: "2.0", id: 7, method: "eth_chainId", params: [] });
    expect(single.status).toBe(200);
    expect(single.json).toEqual({ jsonrpc: "2.0", id: 7, result: "0x7a69" });
    const batch = await postJson(server, "/rpc", [
      { jsonrpc: "2.0", id: 1, method: "eth_chainId", params: [] },
      { jsonrpc: "2.0", id: 2, method: "eth_blockNumber", params: [] },
    ]);
    expect(batch.json).toHaveLength(2);
    expect(batch.json[0]).toMatchObject({ id: 1, result: "0x7a69" });
    expect(BigInt(batch.json[1].result)).toBe(BigInt(await devnet.chain.provider.getBlockNumber()));
    expect((await http(server, "/rpc")).status).toBe(405);
  });

  it("serves the built page and its assets, and nothing else", async () => {
    const index = await http(server, "/");
    expect(index).toMatchObject({ status: 200, text: INDEX_HTML });
    expect(index.headers["content-type"]).toMatch(/^text\/html/);
    const app = await http(server, "/assets/app.js");
    expect(app).toMatchObject({ status: 200, text: APP_JS });
    expect(app.headers["content-type"]).toMatch(/^text\/javascript/);
    for (const path of ["/missing.js", "/assets", "/%2e%2e/secret.txt", "/..%2fsecret.txt", "/api/nothing"]) {
      const answer = await http(server, path);
      expect(answer.status, path).toBe(404);
      expect(answer.json.error.name, path).toBe("RouteNotFoundError");
    }
    expect((await http(server, "/", { method: "PUT", body: "x" })).json.error.name).toBe("MethodNotAllowedError");
  });

  it("says how to build the page when its build is missing", async () => {
    const empty = join(root, "empty-dist");
    await mkdir(empty, { recursive: true });
    const unbuilt = await startDashboardServer({ rpcUrl: devnet.rpc.url, deployment: devnet.deployment, assetsDir: empty });
    try {
      const answer = await http(unbuilt, "/");
      expect(answer.status).toBe(503);
      expect(answer.json.error.name).toBe("DashboardNotBuiltError");
      expect(answer.json.error.message).toContain("npm run build:dashboard");
      expect((await http(unbuilt, "/assets/app.js")).status).toBe(404);
    } finally {
      await unbuilt.close();
    }
  });

  it("stores an uploaded LoRA adapter: its SHA-256 and blocks; refuses anything else, storing nothing", async () => {
    const upload = await http(server, "/api/adapters", { body: lora, headers: { "content-type": "application/octet-stream" } });
    expect(upload.status, upload.text).toBe(200);
    expect(upload.json).toEqual({ cid: upload.json.cid, sha256: sha256Hex(lora), size: lora.byteLength });
    expect(Buffer.from(await readFile(store, CID.parse(upload.json.cid))).equals(Buffer.from(lora))).toBe(true);

    const blocks = store.blocks.size;
    const model = new Uint8Array(await readFsFile(fx.base.path));
    const refused = await http(server, "/api/adapters", { body: model, headers: { "content-type": "application/octet-stream" } });
    expect(refused.status).toBe(400);
    expect(refused.json.error.name).toBe("NotALoraAdapterError");
    expect(refused.json.error.message).toMatch(/general.type/);
    const junk = await http(server, "/api/adapters", { body: "not gguf" });
    expect(junk.json.error.name).toBe("NotALoraAdapterError");
    const unsized = await http(server, "/api/adapters", { body: lora, chunked: true });
    expect(unsized.status).toBe(411);
    expect(unsized.json.error.name).toBe("LengthRequiredError");
    expect(store.blocks.size).toBe(blocks);
  });

  it("refuses oversized bodies with 413, by their declared length or as they stream, storing nothing", async () => {
    const blocks = store.blocks.size;
    // Declared lengths above the limits are refused before a byte is read (the test sends only a few).
    const hugeRpc = await http(server, "/rpc", { body: "{}", headers: { "content-length": String(MAX_RPC_BODY_BYTES + 1) } });
    expect(hugeRpc.status).toBe(413);
    expect(hugeRpc.json.error.name).toBe("RequestTooLargeError");
    const hugeAdapter = await http(server, "/api/adapters", { body: "GGUF", headers: { "content-length": String(MAX_ADAPTER_BYTES + 1) } });
    expect(hugeAdapter.status).toBe(413);
    expect(hugeAdapter.json.error.name).toBe("RequestTooLargeError");
    // A prepare body with no declared length is cut off as soon as it passes the limit.
    const streamed = await http(server, "/api/personas/prepare", {
      body: new Uint8Array(MAX_PREPARE_BODY_BYTES + 1024).fill(0x20),
      chunked: true,
      headers: { "content-type": "application/json" },
    });
    expect(streamed.status).toBe(413);
    expect(streamed.json.error.name).toBe("RequestTooLargeError");
    expect(store.blocks.size).toBe(blocks);
    // The server still answers afterwards.
    expect((await postJson(server, "/rpc", { jsonrpc: "2.0", id: 1, method: "eth_chainId", params: [] })).json.result).toBe("0x7a69");
  });

  it("streams a large upload through (several MiB), and refuses a large non-LoRA after its first MiB", async () => {
    // A LoRA header followed by 5 MiB: the header check reads the first MiB, the rest streams into the store.
    const big = new Uint8Array(lora.byteLength + 5 * 1024 * 1024);
    big.set(lora);
    for (let i = lora.byteLength; i < big.byteLength; i++) big[i] = (i * 7) % 256;
    const upload = await http(server, "/api/adapters", { body: big });
    expect(upload.status, upload.text).toBe(200);
    expect(upload.json).toMatchObject({ sha256: sha256Hex(big), size: big.byteLength });
    expect(sha256Hex(await readFile(store, CID.parse(upload.json.cid)))).toBe(sha256Hex(big));

    const blocks = store.blocks.size;
    const model = new Uint8Array(await readFsFile(fx.base.path));
    const notLora = new Uint8Array(4 * 1024 * 1024);
    notLora.set(model.subarray(0, Math.min(model.byteLength, notLora.byteLength)));
    const refused = await http(server, "/api/adapters", { body: notLora });
    expect(refused.status).toBe(400);
    expect(refused.json.error.name).toBe("NotALoraAdapterError");
    expect(store.blocks.size).toBe(blocks);
    // The server still answers after cutting that upload short.
    expect((await http(server, "/api/config")).status).toBe(200);
  });

  it("prepares a persona that a dev account mints through /rpc, then reads it back", async () => {
    const upload = await http(server, "/api/adapters", { body: lora });
    const card = v2Card();
    const name = parseCharacterCard(json(card)).name;
    const prepared = await postJson(server, "/api/personas/prepare", {
      card: base64(json(card)),
      adapterCid: upload.json.cid,
      baseModelHash: fx.base.sha256,
      baseModelName: "tiny.gguf",
    });
    expect(prepared.status, prepared.text).toBe(200);
    expect(prepared.json).toMatchObject({
      adapterCid: upload.json.cid,
      adapterSha256: sha256Hex(lora),
      baseModelHash: fx.base.sha256,
      manifest: { name: name, adapter: upload.json, baseModel: { hash: fx.base.sha256, name: "tiny.gguf" } },
    });
    const manifest = JSON.parse(new TextDecoder().decode(await readFile(store, CID.parse(prepared.json.manifestCid))));
    expect(manifest).toEqual(prepared.json.manifest);
    expect(manifest.card.cid).toBe(prepared.json.cardCid);

    // Signed by the devnet node itself: the page never holds a key.
    const creator = devnet.deployment.devAccounts!.find((a) => a.label === "creator")!;
    const registry = connectContracts(devnet.deployment, devnet.chain.provider).personaRegistry;
    const data = registry.interface.encodeFunctionData("createPersona", [
      prepared.json.manifestCid,
      prepared.json.adapterSha256,
      prepared.json.baseModelHash,
      200_000n,
      5_000_000n,
    ]);
    const sent = await postJson(server, "/rpc", {
      jsonrpc: "2.0",
      id: 1,
      method: "eth_sendTransaction",
      params: [{ from: creator.address, to: devnet.deployment.contracts.personaRegistry, data }],
    });
    expect(sent.json.error).toBeUndefined();
    const receipt = await devnet.chain.provider.waitForTransaction(sent.json.result as string);
    expect(receipt?.status).toBe(1);
    const created = receipt!.logs
      .map((log) => (registry.interface as Interface).parseLog(log))
      .find((parsed) => parsed?.name === "PersonaCreated");
    const personaId = created!.args.personaId as bigint;
    expect(await registry.ownerOf(personaId)).toBe(creator.address);

    const read = await http(server, `/api/personas/${personaId}`);
    expect(read.status, read.text).toBe(200);
    expect(read.json).toMatchObject({
      personaId: personaId.toString(),
      name: name,
      manifestCid: prepared.json.manifestCid,
      manifest,
      card: { name: name },
    });
    const unknown = await http(server, `/api/personas/${personaId + 1000n}`);
    expect(unknown.status).toBe(404);
    expect(unknown.json.error.name).toBe("PersonaNotFoundError");
    expect((await http(server, "/api/personas/abc")).json.error.name).toBe("InvalidRequestError");
    expect((await http(bare, `/api/personas/${personaId}`)).status).toBe(503);
  });

  it("refuses a bad card, an unknown adapter or a bad request with a typed 400, storing nothing", async () => {
    const blocks = store.blocks.size;
    const good = { card: base64(json(v2Card())), baseModelHash: fx.base.sha256 };
    const cases: [unknown, string][] = [
      [{ ...good, card: base64(json({ hello: "world" })) }, "NotACharacterCardError"],
      [{ ...good, card: base64(new Uint8Array([0x89, 0x50, 0x4e, 0x47, 1, 2, 3])) }, "NotPngError"],
      [{ ...good, adapterCid: "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy" }, "UnknownAdapterError"],
      [{ ...good, baseModelHash: "0x1234" }, "InvalidPersonaParameterError"],
      [{ ...good, card: "not base64!" }, "InvalidRequestError"],
      [{ baseModelHash: fx.base.sha256 }, "InvalidRequestError"],
      [[1, 2], "InvalidRequestError"],
    ];
    for (const [body, name] of cases) {
      const answer = await postJson(server, "/api/personas/prepare", body);
      expect(answer.status, name).toBe(400);
      expect(answer.json.error.name).toBe(name);
      expect(answer.json.error.message.length).toBeGreaterThan(20);
    }
    const notJson = await http(server, "/api/personas/prepare", { body: "{", headers: { "content-type": "application/json" } });
    expect(notJson.json.error.name).toBe("InvalidRequestError");
    expect(store.blocks.size).toBe(blocks);
  });

  it("refuses POSTs from another origin and requests for another host", async () => {
    const call = { jsonrpc: "2.0", id: 1, method: "eth_chainId", params: [] };
    const foreign = await postJson(server, "/rpc", call, { origin: "https://evil.example" });
    expect(foreign.status).toBe(403);
    expect(foreign.json.error.name).toBe("ForbiddenOriginError");
    const upload = await http(server, "/api/adapters", { body: lora, headers: { origin: "null" } });
    expect(upload.json.error.name).toBe("ForbiddenOriginError");
    for (const origin of [`http://127.0.0.1:${server.port}`, `http://localhost:${server.port}`]) {
      expect((await postJson(server, "/rpc", call, { origin })).json.result).toBe("0x7a69");
    }
    for (const host of ["evil.example", `evil.example:${server.port}`, "127.0.0.1:1", `127.0.0.2:${server.port}`]) {
      const answer = await http(server, "/api/config", { headers: { host } });
      expect(answer.status, host).toBe(403);
      expect(answer.json.error.name).toBe("ForbiddenHostError");
    }
    expect((await http(server, "/api/config", { headers: { host: `localhost:${server.port}` } })).status).toBe(200);
  });

  it("answers 503 IpfsUnavailableError for publishing without a store", async () => {
    const prepare = await postJson(bare, "/api/personas/prepare", { card: base64(json(v2Card())), baseModelHash: fx.base.sha256 });
    expect(prepare.status).toBe(503);
    expect(prepare.json.error.name).toBe("IpfsUnavailableError");
    const upload = await http(bare, "/api/adapters", { body: lora });
    expect(upload.status).toBe(503);
    expect(upload.json.error.name).toBe("IpfsUnavailableError");
  });
});

describe("soulmesh dashboard", () => {
  it("serves until SIGINT, printing its URL as JSON", async () => {
    const home = join(root, "cli-home");
    const cli = runCli(["dashboard", "--port", "0", "--json", "--home", home, "--deployment", devnet.deploymentPath], {
      SOULMESH_DASHBOARD_DIST: assetsDir,
      SOULMESH_RPC_URL: "",
      SOULMESH_IPFS_API: "",
    });
    try {
      const ready = await cli.firstJson<{ url: string; chainId: number; devAccounts: { label: string }[]; ipfs: boolean }>();
      expect(ready).toMatchObject({ chainId: 31337, ipfs: true });
      expect(ready.url).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
      expect(ready.devAccounts.map((a) => a.label)).toContain("creator");
      const config = await fetch(`${ready.url}/api/config`);
      expect(config.status).toBe(200);
      expect(await config.json()).toMatchObject({ chainId: 31337, ipfs: true, deployment: { contracts: devnet.deployment.contracts } });
      expect(await (await fetch(`${ready.url}/`)).text()).toBe(INDEX_HTML);
      cli.child.kill("SIGINT");
      expect(await cli.exited()).toBe(0);
    } finally {
      cli.child.kill("SIGKILL");
    }
  }, 60_000);

  it("says to build the page when its dist folder is missing", async () => {
    const cli = runCli(["dashboard", "--port", "0", "--json", "--home", join(root, "cli-home-2"), "--deployment", devnet.deploymentPath], {
      SOULMESH_DASHBOARD_DIST: join(root, "no-dist"),
      SOULMESH_RPC_URL: "",
      SOULMESH_IPFS_API: "",
    });
    expect(await cli.exited()).toBe(1);
    const error = JSON.parse(cli.stdout().trim().split("\n").at(-1)!) as { error: { name: string; message: string } };
    expect(error.error.name).toBe("DashboardNotBuiltError");
    expect(error.error.message).toContain("npm run build:dashboard");
  }, 30_000);
});
