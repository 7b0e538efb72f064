// The client SDK against the real provider protocols (node/p2p/provider-protocols.ts) on the tiny fixture
// model: engine, voucher book, EDR chain, libp2p over TCP loopback. One chat of two turns, input tokens
// checked exactly with a local vocabulary-only tokenizer of the same model file; sampled replies within the
// output-token bounds that stop a provider from billing tokens it did not stream (attack 10 of issue 14).
import { copyFile, mkdir, mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { findLocalModelFile, loadModelTokenizer, MODEL_HASHES_FILE } from "../../cli/models.js";
import { FileHashCache } from "../../node/engine/file-hash.js";
import { verifyVoucher } from "../../sdk/chain/voucher.js";
import { checkTurnUsage, loadLocalTokenizer, outputTokenUpperBound, type LocalTokenizer } from "../../sdk/client/index.js";
import { startTestNetwork, type TestNetwork } from "../helpers/test-network.js";

let net: TestNetwork;
let tokenizer: LocalTokenizer;

beforeAll(async () => {
  net = await startTestNetwork();
  tokenizer = await loadLocalTokenizer(net.fx.base.path, { modelSha256: net.fx.base.sha256, llama: net.tiny.llama });
}, 120_000);

afterAll(async () => {
  await tokenizer?.dispose();
  await net?.stop();
});

describe("client against the real provider", () => {
  it("chats two turns with a persona's adapter, every usage exact and every voucher accepted", async () => {
    const accepted: { inputTokens: bigint; outputTokens: bigint }[] = [];
    net.protocols.addEventListener("voucher:accepted", (e) => accepted.push({ inputTokens: e.detail.inputTokens, outputTokens: e.detail.outputTokens }));
    const chat = await net.openTestChat({ withAdapter: true, tokenizer });
    const history: { role: "user" | "assistant"; content: string }[] = [{ role: "user", content: "Hello there" }];
    const first = await chat.turn({ prompt: [...history], maxTokens: 12, sampling: { temperature: 0, seed: 1 } });
    history.push({ role: "assistant", content: first.text }, { role: "user", content: "And then?" });
    const second = await chat.turn({ prompt: [...history], maxTokens: 12, sampling: { temperature: 0, seed: 1 } });
    for (const turn of [first, second]) {
      expect(turn.violations).toEqual([]);
      expect(turn.failovers).toEqual([]);
      expect(turn.provider).toBe(net.providerWallet.address);
      expect(turn.usage.outputTokens).toBeLessThanOrEqual(12);
      expect(turn.payment?.ack).toBeDefined();
    }
    expect(first.usage.inputTokens).toBe(tokenizer.count({ kind: "chat", messages: history.slice(0, 1) }));
    expect(second.usage.inputTokens).toBe(tokenizer.count({ kind: "chat", messages: history }));
    const v = second.payment!.voucher;
    expect(accepted.at(-1)).toEqual({ inputTokens: v.inputTokens, outputTokens: v.outputTokens });
    expect(verifyVoucher(v, net.escrow, second.payment!.signature)).toBe(true);
    expect(v.inputTokens).toBe(
      BigInt(first.usage.inputTokens - first.usage.cachedInputTokens + second.usage.inputTokens - second.usage.cachedInputTokens),
    );
    expect(v.outputTokens).toBe(BigInt(first.usage.outputTokens + second.usage.outputTokens));
    chat.close();
  }, 60_000);

  it("attack 10: an honest provider's sampled replies stay within the output bounds, and the tokenizer's is the tighter", async () => {
    const chat = await net.openTestChat({ tokenizer });
    try {
      for (const [temperature, seed] of [[0, 1], [0.8, 2], [1.2, 3], [1.5, 4]] as const) {
        const turn = await chat.turn({ prompt: `Tell me about ${seed}`, maxTokens: 40, sampling: { temperature, seed } });
        expect(turn.violations).toEqual([]);
        const bytes = new TextEncoder().encode(turn.text).length;
        const tight = outputTokenUpperBound(turn.text, { tokenizer });
        expect(turn.usage.outputTokens).toBeLessThanOrEqual(tight);
        expect(turn.usage.outputTokens).toBeLessThanOrEqual(outputTokenUpperBound(turn.text));
        // The byte bound lets an overcharger bill ~4 tokens a word; the tokenizer's leaves it the slack.
        if (bytes > 40) expect(tight).toBeLessThan(outputTokenUpperBound(turn.text));
        // The same receipt, billed at the byte bound: over the tokenizer's bound, so capped to it.
        const inflated = outputTokenUpperBound(turn.text);
        if (inflated > tight) {
          const check = checkTurnUsage({
            usage: { ...turn.usage, outputTokens: inflated },
            maxTokens: 10_000,
            prompt: { kind: "chat", messages: [{ role: "user", content: `Tell me about ${seed}` }] },
            outputText: turn.text,
            outputUpperBound: tight,
            previous: { inputTokens: 0n, outputTokens: 0n },
            receipt: turn.receipt,
            receiptSignature: turn.receiptSignature,
            expected: { payer: turn.receipt.payer, provider: turn.provider, agentId: BigInt(turn.receipt.agentId), session: BigInt(turn.receipt.session), turn: turn.receipt.turn, modelSha256: turn.receipt.modelSha256, adapterSha256s: turn.receipt.adapterSha256s },
            escrow: net.escrow,
          });
          // The receipt does not say the inflated count, so it is invalid outright; the bound is listed too.
          expect(check.violations.map((v) => v.kind)).toContain("output-over-text");
        }
      }
    } finally {
      chat.close();
    }
  }, 120_000);

  it("the CLI finds a tokenizer for a model already hashed in its home's models folder, and only then", async () => {
    const home = await mkdtemp(join(tmpdir(), "soulmesh-tokenizer-home-"));
    try {
      const modelsDir = join(home, "models");
      await mkdir(join(modelsDir, "sub"), { recursive: true });
      const path = join(modelsDir, "sub", "tiny.gguf");
      await copyFile(net.fx.base.path, path);
      // Not hashed yet (as before `up` or `provider start` ran): not found, and not hashed here.
      expect(await findLocalModelFile(net.fx.base.sha256, { home })).toBeUndefined();
      const hashes = new FileHashCache({ path: join(modelsDir, MODEL_HASHES_FILE) });
      expect(await hashes.sha256(path)).toBe(net.fx.base.sha256);
      await hashes.flush();
      expect(await findLocalModelFile(net.fx.base.sha256.toUpperCase().replace("0X", "0x"), { home })).toBe(path);
      expect(await loadModelTokenizer(`0x${"12".repeat(32)}`, { home })).toBeUndefined();
      const found = await loadModelTokenizer(net.fx.base.sha256, { home });
      expect(found).toBeDefined();
      try {
        expect(found!.modelSha256).toBe(net.fx.base.sha256);
        const prompt = { kind: "chat" as const, messages: [{ role: "user" as const, content: "Hello there" }] };
        expect(found!.count(prompt)).toBe(tokenizer.count(prompt));
        expect(found!.countText!(" Hello there friend")).toBe(tokenizer.countText!(" Hello there friend"));
      } finally {
        await found!.dispose();
        // Disposing twice is harmless.
        await found!.dispose();
      }
    } finally {
      await rm(home, { recursive: true, force: true });
    }
  }, 60_000);
});
