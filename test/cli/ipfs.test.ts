import { spawn } from "node:child_process";
import { mkdir, mkdtemp, readFile, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { create as createKuboClient } from "kubo-rpc-client";
import type { CID } from "multiformats/cid";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { cborBlock, rawBlock, rejection } from "../helpers/blocks.js";
import { freePort } from "../helpers/net.js";
import {
  apiFilePath,
  IpfsServiceRunningError,
  openLocalIpfs,
  startLocalIpfsService,
} from "../../cli/ipfs/local-ipfs.js";
import type { IpfsApiFile } from "../../cli/ipfs/local-ipfs.js";
import {
  IPFS_RPC_VERSION,
  IpfsApiPortInUseError,
  MAX_BLOCK_BYTES,
  serveIpfsRpc,
} from "../../cli/ipfs/rpc-server.js";
import type { IpfsRpcServer } from "../../cli/ipfs/rpc-server.js";
import { createHeliaBlockStore, createKuboBlockStore } from "../../sdk/vault/block-store.js";
import { addFile, readFile as readIpfsFile } from "../../sdk/vault/files.js";
import type { BlockFetchOptions, HeliaBlockStore, KuboBlockStore } from "../../sdk/vault/block-store.js";
import {
  BlockIntegrityError,
  BlockNotFoundError,
  KuboRequestError,
  KuboUnreachableError,
} from "../../sdk/vault/block-store-errors.js";

const text = new TextEncoder();

const LOCAL_IPFS_MODULE = new URL("../../cli/ipfs/local-ipfs.ts", import.meta.url).href;

/**
 * `soulmesh up` as far as IPFS goes, in its own process: starts the home's service, prints api.json's
 * content as one JSON line, and runs until killed.
 */
function spawnService(home: string): { pid: number; ready: Promise<{ url: string }> } {
  const script =
    `const { startLocalIpfsService } = await import(${JSON.stringify(LOCAL_IPFS_MODULE)});` +
    `const s = await startLocalIpfsService({ home: ${JSON.stringify(home)}, port: 0 });` +
    `console.log(JSON.stringify(s.api)); setInterval(() => {}, 60_000);`;
  const child = spawn(process.execPath, ["--import", "tsx", "--input-type=module", "-e", script], {
    cwd: fileURLToPath(new URL("../..", import.meta.url)),
    stdio: ["ignore", "pipe", "pipe"],
  });
  let out = "";
  let err = "";
  child.stderr.on("data", (d: Buffer) => (err += d.toString()));
  const ready = new Promise<{ url: string }>((resolve, reject) => {
    child.stdout.on("data", (d: Buffer) => {
      out += d.toString();
      if (out.includes("\n")) resolve(JSON.parse(out.split("\n")[0]!) as { url: string });
    });
    child.once("exit", (code) => reject(new Error(`service exited with ${code}: ${err}`)));
  });
  return { pid: child.pid!, ready };
}

/** A pid that no process has any more: a child that ran and exited. */
async function deadPid(): Promise<number> {
  const child = spawn(process.execPath, ["-e", ""], { stdio: "ignore" });
  await new Promise((resolve) => child.once("exit", resolve));
  return child.pid!;
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

function multipart(bytes: Uint8Array): { body: Uint8Array<ArrayBuffer>; contentType: string } {
  const boundary = "----soulmesh-test-boundary";
  const body = Buffer.concat([
    Buffer.from(
      `--${boundary}\r\nContent-Disposition: form-data; name="file"; filename=""\r\n` +
        `Content-Type: application/octet-stream\r\n\r\n`,
    ),
    bytes,
    Buffer.from(`\r\n--${boundary}--\r\n`),
  ]);
  return { body: new Uint8Array(body), contentType: `multipart/form-data; boundary=${boundary}` };
}

describe("IPFS RPC API over an embedded Helia node", () => {
  let root: string;
  let node: HeliaBlockStore;
  let api: IpfsRpcServer;
  let kubo: KuboBlockStore;
  const cleanups: Array<() => Promise<void>> = [];

  beforeAll(async () => {
    root = await mkdtemp(join(tmpdir(), "soulmesh-ipfs-rpc-"));
    node = createHeliaBlockStore({ dir: join(root, "served") });
    await node.start();
    cleanups.push(() => node.stop());
    api = await serveIpfsRpc({ store: node, port: 0 });
    cleanups.push(() => api.close());
    kubo = createKuboBlockStore({ url: api.url, fetchTimeoutMs: 10_000 });
    await kubo.start();
    cleanups.push(() => kubo.stop());
  });

  afterAll(async () => {
    for (const cleanup of cleanups.reverse()) await cleanup().catch(() => {});
    if (root !== undefined) await rm(root, { recursive: true, force: true });
  });

  async function post(path: string, init: RequestInit = {}): Promise<{ status: number; json: unknown }> {
    const res = await fetch(`${api.url}${path}`, { method: "POST", ...init });
    const body = await res.text();
    let json: unknown;
    try {
      json = JSON.parse(body);
    } catch {
      json = body;
    }
    return { status: res.status, json };
  }

  it("puts, stats, gets and pins blocks through the Kubo client; Helia holds them", async () => {
    const child = await rawBlock("ciphertext of a segment");
    const parent = await cborBlock({ segments: [child.cid] });
    expect(await kubo.has(child.cid)).toBe(false);
    await kubo.put(child.cid, child.bytes);
    await kubo.put(parent.cid, parent.bytes);
    await kubo.put(parent.cid, parent.bytes); // idempotent
    expect(await kubo.has(child.cid)).toBe(true);
    expect(await kubo.has(parent.cid)).toBe(true);
    expect(await kubo.get(parent.cid)).toEqual(parent.bytes);
    expect(await node.get(child.cid)).toEqual(child.bytes);
    expect(await node.get(parent.cid)).toEqual(parent.bytes);
    await kubo.pin(parent.cid);
    await kubo.pin(parent.cid);

    const client = createKuboClient({ url: api.url });
    const stat = await client.block.stat(parent.cid);
    expect(stat.cid.equals(parent.cid)).toBe(true);
    expect(stat.size).toBe(parent.bytes.byteLength);
    // the deprecated `format` parameter names the codec too
    const legacy = await cborBlock({ legacy: true });
    const stored = await client.block.put(legacy.bytes, { format: "dag-cbor", mhtype: "sha2-256" });
    expect(stored.equals(legacy.cid)).toBe(true);
    expect(await node.get(legacy.cid)).toEqual(legacy.bytes);
  });

  it("refuses a port already in use with IpfsApiPortInUseError", async () => {
    const err = await rejection(serveIpfsRpc({ store: node, port: api.port }));
    expect(err).toBeInstanceOf(IpfsApiPortInUseError);
    expect((err as Error).message).toContain(String(api.port));
    expect((await createKuboClient({ url: api.url }).version()).version).toBe(IPFS_RPC_VERSION);
  });

  it("answers id with the Helia node's peer id and addresses", async () => {
    const id = await createKuboClient({ url: api.url }).id();
    expect(id.id.toString()).toBe(node.peerId.toString());
    expect(id.addresses.map((a) => a.toString())).toEqual(node.multiaddrs());
  });

  it("gives up on a missing block with BlockNotFoundError; a missing pin too", async () => {
    const { cid } = await rawBlock("nobody has this");
    const got = await rejection(kubo.get(cid, { timeoutMs: 300 }));
    expect(got).toBeInstanceOf(BlockNotFoundError);
    expect((got as BlockNotFoundError).reason).toBe("timeout");
    const pinned = await rejection(kubo.pin(cid, { timeoutMs: 300 }));
    expect(pinned).toBeInstanceOf(BlockNotFoundError);
    expect(await kubo.has(cid)).toBe(false);
    // offline stat answers as Kubo does: HTTP 500 with a Kubo error body
    const res = await post(`/api/v0/block/stat?arg=${cid.toString()}&offline=true`);
    expect(res.status).toBe(500);
    expect(res.json).toMatchObject({ Type: "error", Message: expect.stringMatching(/could not find/) });
  });

  it("refuses a block whose CID does not match its bytes and stores nothing", async () => {
    const { cid } = await rawBlock("what the CID was computed from");
    const err = await rejection(kubo.put(cid, text.encode("other bytes")));
    expect(err).toBeInstanceOf(BlockIntegrityError);
    expect(await kubo.has(cid)).toBe(false);
    expect(await node.has(cid)).toBe(false);
  });

  it("stores a multi-chunk UnixFS file (dag-pb root over raw leaves) put through the API, byte for byte", async () => {
    const bytes = new Uint8Array(600 * 1024).map((_, i) => (i * 31 + 7) % 251);
    const { cid } = await addFile(kubo, bytes);
    expect(cid.code).toBe(0x70);
    expect(await readIpfsFile(node, cid)).toEqual(bytes);
  });

  it("refuses codecs and hashes it cannot verify, storing nothing", async () => {
    const bytes = text.encode("a dag-json block?");
    const { body, contentType } = multipart(bytes);
    const json = await post("/api/v0/block/put?cid-codec=dag-json", { body, headers: { "content-type": contentType } });
    expect(json.status).toBe(400);
    expect(json.json).toMatchObject({ Type: "error", Message: expect.stringMatching(/raw, dag-cbor and dag-pb/) });
    const blake = await post("/api/v0/block/put?mhtype=blake2b-256", {
      body,
      headers: { "content-type": contentType },
    });
    expect(blake.status).toBe(400);
    expect(await node.has((await rawBlock(bytes)).cid)).toBe(false);
    const notMultipart = await post("/api/v0/block/put", { body: new Uint8Array(bytes) });
    expect(notMultipart.status).toBe(400);
    expect(await node.has((await rawBlock(bytes)).cid)).toBe(false);
  });

  it("refuses GET (405), browsers (403), unknown commands (404) and bad arguments (400)", async () => {
    const get = await fetch(`${api.url}/api/v0/version`);
    expect(get.status).toBe(405);
    expect(await get.json()).toMatchObject({ Type: "error" });

    const { cid, bytes } = await rawBlock("sent from a web page");
    const { body, contentType } = multipart(bytes);
    const fromPage = await post("/api/v0/block/put", {
      body,
      headers: { "content-type": contentType, origin: "https://evil.example" },
    });
    expect(fromPage.status).toBe(403);
    expect(await node.has(cid)).toBe(false);

    const unknown = await post("/api/v0/repo/gc");
    expect(unknown.status).toBe(404);
    expect(unknown.json).toMatchObject({ Type: "error", Message: expect.stringContaining("repo/gc") });
    expect((await post("/webui")).status).toBe(404);

    expect((await post("/api/v0/block/get?arg=not-a-cid")).status).toBe(400);
    expect((await post("/api/v0/block/get")).status).toBe(400);
    expect((await post(`/api/v0/block/get?arg=${cid.toString()}&timeout=soon`)).status).toBe(400);
    expect((await post(`/api/v0/pin/add?arg=${cid.toString()}&recursive=false`)).status).toBe(400);
  });

  it("refuses an oversized block with 413, declared or streamed, and stores nothing", async () => {
    const big = await rawBlock(new Uint8Array(MAX_BLOCK_BYTES + 1).fill(7));
    const { body, contentType } = multipart(big.bytes);
    const declared = await post("/api/v0/block/put", { body, headers: { "content-type": contentType } });
    expect(declared.status).toBe(413);
    expect(declared.json).toMatchObject({ Type: "error", Message: expect.stringMatching(/at most 2097152 bytes/) });

    // the Kubo client streams the upload without a length: the refusal still reaches it as an answer
    const err = await rejection(kubo.put(big.cid, big.bytes));
    expect(err).toBeInstanceOf(KuboRequestError);
    expect((err as Error).message).toMatch(/at most 2097152 bytes/);
    expect(await node.has(big.cid)).toBe(false);

    // the largest block allowed goes through
    const max = await rawBlock(new Uint8Array(MAX_BLOCK_BYTES).fill(8));
    await kubo.put(max.cid, max.bytes);
    expect(await node.has(max.cid)).toBe(true);
  });

  it("aborts a request's work when its client goes away", async () => {
    const signals: AbortSignal[] = [];
    // The served node, watched: what signal does block/get hand it?
    const watched = new Proxy(node, {
      get(target, prop) {
        if (prop === "get") {
          return (cid: CID, options: BlockFetchOptions = {}) => {
            signals.push(options.signal!);
            return target.get(cid, options);
          };
        }
        const value: unknown = Reflect.get(target, prop, target);
        return typeof value === "function" ? (value as (...a: unknown[]) => unknown).bind(target) : value;
      },
    });
    const server = await serveIpfsRpc({ store: watched, port: 0 });
    cleanups.push(() => server.close());
    const { cid } = await rawBlock("nobody has this either");
    const client = new AbortController();
    const request = fetch(`${server.url}/api/v0/block/get?arg=${cid.toString()}&timeout=10m`, {
      method: "POST",
      signal: client.signal,
    }).catch((err: unknown) => err);
    await expect.poll(() => signals.length, { timeout: 20_000 }).toBe(1);
    expect(signals[0]!.aborted).toBe(false);
    client.abort();
    await request;
    await expect.poll(() => signals[0]!.aborted, { timeout: 20_000 }).toBe(true);
    await server.close();
  });

  it("serves its blocks to another Helia node over bitswap", async () => {
    const other = createHeliaBlockStore({
      dir: join(root, "other"),
      peers: [node.multiaddrs()[0]!],
      fetchTimeoutMs: 10_000,
    });
    await other.start();
    cleanups.push(() => other.stop());
    const { cid, bytes } = await rawBlock("put through the API, fetched by a peer");
    await kubo.put(cid, bytes);
    expect(await other.has(cid)).toBe(false);
    expect(await other.get(cid)).toEqual(bytes);
    expect(await other.has(cid)).toBe(true);
  });

  it("fetches through the served node from its peers", async () => {
    const peer = createHeliaBlockStore({ dir: join(root, "peer") });
    await peer.start();
    cleanups.push(() => peer.stop());
    await node.dial(peer.multiaddrs()[0]!);
    const { cid, bytes } = await rawBlock("only the peer holds this");
    await peer.put(cid, bytes);
    expect(await kubo.has(cid)).toBe(false); // offline: not local yet
    expect(await kubo.get(cid)).toEqual(bytes);
    expect(await node.has(cid)).toBe(true);
  });
});

describe("the local IPFS service of a soulmesh home", () => {
  let root: string;

  beforeAll(async () => {
    root = await mkdtemp(join(tmpdir(), "soulmesh-local-ipfs-"));
  });

  afterAll(async () => {
    if (root !== undefined) await rm(root, { recursive: true, force: true });
  });

  it("serves the home's node to other commands, refuses a second service, and cleans up on stop", async () => {
    const home = join(root, "home");
    const service = await startLocalIpfsService({ home, port: 0 });
    let stopped = false;
    try {
      const record = JSON.parse(await readFile(apiFilePath(home), "utf8")) as IpfsApiFile;
      expect(record).toEqual({
        url: service.api.url,
        pid: process.pid,
        peerId: service.store.peerId.toString(),
        multiaddrs: service.store.multiaddrs(),
      });
      expect((await stat(apiFilePath(home))).mode & 0o777).toBe(0o600);

      const ipfs = await openLocalIpfs({ home });
      expect(ipfs.kind).toBe("kubo");
      expect(ipfs.description).toContain(service.api.url);
      const { cid, bytes } = await rawBlock("written by another command");
      await ipfs.store.put(cid, bytes);
      expect(await service.store.get(cid)).toEqual(bytes);
      await ipfs.close();

      const second = await rejection(startLocalIpfsService({ home, port: 0 }));
      expect(second).toBeInstanceOf(IpfsServiceRunningError);
      expect((second as IpfsServiceRunningError).pid).toBe(process.pid);
      expect((second as Error).message).toContain(service.api.url);
      expect(JSON.parse(await readFile(apiFilePath(home), "utf8"))).toEqual(record);

      await service.stop();
      stopped = true;
      await service.stop(); // idempotent
      await expect(stat(apiFilePath(home))).rejects.toMatchObject({ code: "ENOENT" });

      // no service: the command opens the repository itself, with the blocks put through the API
      const direct = await openLocalIpfs({ home });
      expect(direct.kind).toBe("helia");
      expect(await direct.store.get(cid)).toEqual(bytes);
      await direct.close();
    } finally {
      if (!stopped) await service.stop();
    }
  });

  it("reaches the blocks of a service run by another process, and the repository once it is killed", async () => {
    const home = join(root, "two-processes");
    const service = spawnService(home);
    try {
      const { url } = await service.ready;
      const ipfs = await openLocalIpfs({ home });
      expect(ipfs.kind).toBe("kubo");
      expect(ipfs.description).toContain(`process ${service.pid}`);
      expect(ipfs.store.kind === "kubo" && ipfs.store.url).toBe(url);
      const { cid, bytes } = await rawBlock("put from another process");
      await ipfs.store.put(cid, bytes);
      await ipfs.close();

      // killed without a chance to clean up: api.json stays, naming a dead pid
      process.kill(service.pid, "SIGKILL");
      await expect.poll(() => isAlive(service.pid), { timeout: 20_000 }).toBe(false);
      expect((JSON.parse(await readFile(apiFilePath(home), "utf8")) as IpfsApiFile).pid).toBe(service.pid);
      const direct = await openLocalIpfs({ home });
      expect(direct.kind).toBe("helia");
      expect(await direct.store.get(cid)).toEqual(bytes);
      await direct.close();
    } finally {
      if (isAlive(service.pid)) process.kill(service.pid, "SIGKILL");
    }
  });

  it("takes over an api.json left by a dead process, even if its URL still answers", async () => {
    const home = join(root, "stale");
    await mkdir(join(home, "ipfs"), { recursive: true });
    // The recorded URL answers (another home's service took the port), but the pid that wrote it is gone.
    const elsewhere = await startLocalIpfsService({ home: join(root, "elsewhere"), port: 0 });
    try {
      const stale: IpfsApiFile = { url: elsewhere.api.url, pid: await deadPid(), peerId: "x", multiaddrs: [] };
      await writeFile(apiFilePath(home), JSON.stringify(stale));

      const ipfs = await openLocalIpfs({ home });
      expect(ipfs.kind).toBe("helia");
      await ipfs.close();

      const service = await startLocalIpfsService({ home, port: 0 });
      try {
        const record = JSON.parse(await readFile(apiFilePath(home), "utf8")) as IpfsApiFile;
        expect(record.pid).toBe(process.pid);
        expect(record.url).toBe(service.api.url);
      } finally {
        await service.stop();
      }
    } finally {
      await elsewhere.stop();
    }
  });

  it("uses a Kubo API given explicitly, and says so when it does not answer", async () => {
    const home = join(root, "explicit");
    const service = await startLocalIpfsService({ home: join(root, "serving"), port: 0 });
    try {
      const ipfs = await openLocalIpfs({ home, api: service.api.url });
      expect(ipfs.kind).toBe("kubo");
      await ipfs.close();
    } finally {
      await service.stop();
    }
    const dead = `http://127.0.0.1:${await freePort()}`;
    const err = await rejection(openLocalIpfs({ home, api: dead }));
    expect(err).toBeInstanceOf(KuboUnreachableError);
    // nothing was created for the home: the explicit API is all that was used
    await expect(stat(join(home, "ipfs"))).rejects.toMatchObject({ code: "ENOENT" });
  });
});
