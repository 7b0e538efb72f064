// The client SDK against the real provider protocols (node/p2p/provider-protocols.ts) on the tiny fixture
// model: engine, voucher book, EDR chain, libp2p over TCP loopback. One chat of two turns, input tokens
// checked exactly with a local vocabulary-only tokenizer of the same model file.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { verifyVoucher } from "../../sdk/chain/voucher.js";
import { loadLocalTokenizer, type LocalTokenizer } from "../../sdk/client/index.js";
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
});
