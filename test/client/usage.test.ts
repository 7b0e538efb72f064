import { Wallet } from "ethers";
import { beforeAll, describe, expect, it } from "vitest";
import {
  checkTurnUsage,
  OUTPUT_TOKEN_SLACK,
  outputTokenUpperBound,
  promptTokenUpperBound,
  TEMPLATE_TOKENS_BASE,
  TEMPLATE_TOKENS_PER_MESSAGE,
  type TurnUsageInput,
} from "../../sdk/client/usage.js";
import { hashOutput, hashPrompt, signReceipt } from "../../sdk/protocol/signing.js";
import type { Prompt, Receipt } from "../../sdk/protocol/messages.js";

const provider = new Wallet(`0x${"11".repeat(32)}`);
const payer = new Wallet(`0x${"22".repeat(32)}`);
const stranger = new Wallet(`0x${"33".repeat(32)}`);
const escrow = { chainId: 31337n, address: `0x${"ee".repeat(20)}` };
const MODEL = `0x${"ab".repeat(32)}`;
const ADAPTER = `0x${"01".repeat(32)}`;
const prompt: Prompt = { kind: "chat", messages: [{ role: "user", content: "Hello there" }] };
const text = "General Kenobi!";

interface Case {
  usage?: Partial<Receipt["usage"]>;
  receipt?: Partial<Receipt>;
  signer?: Wallet;
  input?: Partial<TurnUsageInput>;
}

/** A turn on session 7, turn 2, after 100/40 tokens vouched; honest by default: 30 in (10 cached), 20 out. */
async function turn(c: Case = {}): Promise<TurnUsageInput> {
  const usage = { inputTokens: 30, cachedInputTokens: 10, outputTokens: 20, ...c.usage };
  const receipt: Receipt = {
    payer: payer.address,
    provider: provider.address,
    agentId: "5",
    session: "7",
    turn: 2,
    modelSha256: MODEL,
    adapterSha256s: [ADAPTER],
    promptHash: hashPrompt(prompt),
    outputHash: hashOutput(text),
    usage,
    cumulativeInputTokens: String(100 + usage.inputTokens - usage.cachedInputTokens),
    cumulativeOutputTokens: String(40 + usage.outputTokens),
    ...c.receipt,
  };
  let receiptSignature: string;
  try {
    receiptSignature = await signReceipt(c.signer ?? provider, receipt, escrow);
  } catch {
    // Receipts the schema refuses cannot be signed through signReceipt; sign anything to test rejection.
    receiptSignature = `0x${"00".repeat(65)}`;
  }
  return {
    usage,
    maxTokens: 64,
    prompt,
    outputText: text,
    previous: { inputTokens: 100n, outputTokens: 40n },
    receipt,
    receiptSignature,
    expected: { payer: payer.address, provider: provider.address, agentId: 5n, session: 7n, turn: 2, modelSha256: MODEL, adapterSha256s: [ADAPTER] },
    escrow,
    ...c.input,
  };
}

const kinds = (r: ReturnType<typeof checkTurnUsage>) => r.violations.map((v) => v.kind);

describe("checkTurnUsage", () => {
  it("accepts an honest turn and pays the receipt's cumulative totals", async () => {
    const r = checkTurnUsage(await turn());
    expect(r).toEqual({ status: "ok", billed: { inputTokens: 20n, outputTokens: 20n }, cumulative: { inputTokens: 120n, outputTokens: 60n }, violations: [] });
  });

  it("accepts an exact input count from the local tokenizer", async () => {
    expect(checkTurnUsage(await turn({ input: { expectedInputTokens: 30 } })).status).toBe("ok");
  });

  it("accepts mixed-case hashes and addresses in the receipt", async () => {
    const r = await turn({ receipt: { modelSha256: MODEL.toUpperCase().replace("0X", "0x"), payer: payer.address.toLowerCase() } });
    expect(checkTurnUsage(r).status).toBe("ok");
  });

  it("output over maxTokens: pays maxTokens of output, not more", async () => {
    // A text long enough to hold 500 tokens (an explicit bound), so that only maxTokens caps.
    const r = checkTurnUsage(await turn({ usage: { outputTokens: 500 }, input: { outputUpperBound: 1_000 } }));
    expect(r.status).toBe("overcharge");
    expect(kinds(r)).toEqual(["output-over-max"]);
    if (r.status === "invalid") throw new Error("unreachable");
    expect(r.billed).toEqual({ inputTokens: 20n, outputTokens: 64n });
    expect(r.cumulative).toEqual({ inputTokens: 120n, outputTokens: 104n });
  });

  it("output over maxTokens and over the text: pays the lower of the two", async () => {
    // Before attack 10 was fixed this paid maxTokens (64) for a 15-byte reply; the text holds 15 + slack.
    const r = checkTurnUsage(await turn({ usage: { outputTokens: 500 } }));
    expect(kinds(r)).toEqual(["output-over-max", "output-over-text"]);
    if (r.status === "invalid") throw new Error("unreachable");
    expect(r.billed.outputTokens).toBe(BigInt(outputTokenUpperBound(text)));
    expect(r.billed.outputTokens).toBe(15n + BigInt(OUTPUT_TOKEN_SLACK));
  });

  it("output bound: UTF-8 bytes plus the slack, plus the longest stop string; a tokenizer's count tightens it", () => {
    expect(outputTokenUpperBound("")).toBe(OUTPUT_TOKEN_SLACK);
    expect(outputTokenUpperBound("héllo 🙂")).toBe(11 + OUTPUT_TOKEN_SLACK);
    expect(outputTokenUpperBound("ok", { stop: ["\nUser:", "###"] })).toBe(2 + OUTPUT_TOKEN_SLACK + 6);
    // One token per 4 characters: 100 characters, 25 tokens, plus 1 in 16 for a non-canonical reply.
    const tokenizer = { countText: (t: string) => Math.ceil(t.length / 4) };
    expect(outputTokenUpperBound("a".repeat(100), { tokenizer })).toBe(25 + 2 + OUTPUT_TOKEN_SLACK);
    // Never above the byte bound, whatever the tokenizer says.
    expect(outputTokenUpperBound("ab", { tokenizer: { countText: () => 50 } })).toBe(2 + OUTPUT_TOKEN_SLACK);
  });

  it("an honest reply cut at a stop string is billed the stop's tokens too: allowed when the stop strings are given", async () => {
    // "General Kenobi!" and 20 tokens: 15 bytes + 8 slack hold it; 30 tokens only with the 9-byte stop's allowance.
    const over = checkTurnUsage(await turn({ usage: { outputTokens: 30 }, input: { maxTokens: 64 } }));
    expect(kinds(over)).toEqual(["output-over-text"]);
    expect(checkTurnUsage(await turn({ usage: { outputTokens: 30 }, input: { stop: ["\n\nUser:  "] } })).status).toBe("ok");
  });

  it("input above the local count: pays the local count", async () => {
    const r = checkTurnUsage(await turn({ usage: { inputTokens: 90 }, input: { expectedInputTokens: 30 } }));
    expect(kinds(r)).toEqual(["input-mismatch"]);
    if (r.status === "invalid") throw new Error("unreachable");
    expect(r.billed).toEqual({ inputTokens: 20n, outputTokens: 20n });
    expect(r.cumulative).toEqual({ inputTokens: 120n, outputTokens: 60n });
  });

  it("input below the local count is a mismatch too, paid as claimed (never more than the provider asks)", async () => {
    const r = checkTurnUsage(await turn({ usage: { inputTokens: 25 }, input: { expectedInputTokens: 30 } }));
    expect(r.status).toBe("overcharge");
    expect(kinds(r)).toEqual(["input-mismatch"]);
    if (r.status === "invalid") throw new Error("unreachable");
    expect(r.cumulative).toEqual({ inputTokens: 115n, outputTokens: 60n });
  });

  it("input over the prompt's bound without a tokenizer: pays the bound", async () => {
    const bound = promptTokenUpperBound(prompt);
    expect(bound).toBe(new TextEncoder().encode("Hello there").length + TEMPLATE_TOKENS_PER_MESSAGE + TEMPLATE_TOKENS_BASE);
    const r = checkTurnUsage(await turn({ usage: { inputTokens: 10_000, cachedInputTokens: 0 } }));
    expect(kinds(r)).toEqual(["input-over-bound"]);
    if (r.status === "invalid") throw new Error("unreachable");
    expect(r.billed).toEqual({ inputTokens: BigInt(bound), outputTokens: 20n });
    // An explicit bound wins over the default.
    const tight = checkTurnUsage(await turn({ input: { promptUpperBound: 25 } }));
    expect(kinds(tight)).toEqual(["input-over-bound"]);
    if (tight.status === "invalid") throw new Error("unreachable");
    expect(tight.billed.inputTokens).toBe(15n);
  });

  it("counts UTF-8 bytes, not characters, in the bound", () => {
    expect(promptTokenUpperBound({ kind: "text", text: "héllo 🙂" })).toBe(11 + TEMPLATE_TOKENS_BASE);
  });

  it("cumulative above previous + billed: pays previous + billed", async () => {
    const r = checkTurnUsage(await turn({ receipt: { cumulativeInputTokens: "500", cumulativeOutputTokens: "900" } }));
    expect(kinds(r)).toEqual(["cumulative-mismatch"]);
    if (r.status === "invalid") throw new Error("unreachable");
    expect(r.cumulative).toEqual({ inputTokens: 120n, outputTokens: 60n });
    expect(r.billed).toEqual({ inputTokens: 20n, outputTokens: 20n });
  });

  it("cumulative below previous + billed: pays no more than the provider claims, never below the last voucher", async () => {
    const r = checkTurnUsage(await turn({ receipt: { cumulativeInputTokens: "110", cumulativeOutputTokens: "41" } }));
    expect(kinds(r)).toEqual(["cumulative-mismatch"]);
    if (r.status === "invalid") throw new Error("unreachable");
    expect(r.cumulative).toEqual({ inputTokens: 110n, outputTokens: 41n });
    expect(r.billed).toEqual({ inputTokens: 10n, outputTokens: 1n });
  });

  it("several overcharges at once are all listed and all capped", async () => {
    const r = checkTurnUsage(await turn({ usage: { inputTokens: 80, cachedInputTokens: 0, outputTokens: 99 }, input: { expectedInputTokens: 30 } }));
    // Output: over maxTokens (64) and over what the 15-byte text holds (23, since attack 10): the lower is paid.
    expect(kinds(r)).toEqual(["output-over-max", "output-over-text", "input-mismatch"]);
    if (r.status === "invalid") throw new Error("unreachable");
    expect(r.billed).toEqual({ inputTokens: 30n, outputTokens: 15n + BigInt(OUTPUT_TOKEN_SLACK) });
  });

  it("cached above input: the receipt cannot even be valid, so nothing is due", async () => {
    const r = checkTurnUsage(await turn({ usage: { inputTokens: 5, cachedInputTokens: 9 }, receipt: { cumulativeInputTokens: "100" } }));
    expect(r.status).toBe("invalid");
    expect(kinds(r)).toContain("cached-over-input");
    expect(kinds(r)).toContain("receipt-signature");
  });

  it.each([
    ["payer", { payer: stranger.address }],
    ["provider", { provider: stranger.address }],
    ["agentId", { agentId: "6" }],
    ["session", { session: "8" }],
    ["turn", { turn: 3 }],
    ["modelSha256", { modelSha256: `0x${"cd".repeat(32)}` }],
    ["adapterSha256s", { adapterSha256s: [] }],
    ["promptHash", { promptHash: hashPrompt({ kind: "text", text: "other" }) }],
  ] as const)("a receipt with the wrong %s is invalid: nothing is paid", async (field, patch) => {
    // A receipt naming another provider is signed by that other one, so that only the field is wrong.
    const r = checkTurnUsage(await turn({ receipt: patch as Partial<Receipt>, ...(field === "provider" && { signer: stranger }) }));
    expect(r.status).toBe("invalid");
    expect(r.violations[0]).toMatchObject({ kind: "receipt-field" });
    expect(r.violations[0]!.message).toContain(field);
    expect("cumulative" in r).toBe(false);
  });

  it("a receipt over other output is invalid", async () => {
    const r = checkTurnUsage(await turn({ receipt: { outputHash: hashOutput("something else") } }));
    expect(kinds(r)).toEqual(["output-hash"]);
    expect(r.status).toBe("invalid");
  });

  it("a receipt whose usage differs from the streamed usage is invalid", async () => {
    const input = await turn();
    const r = checkTurnUsage({ ...input, usage: { ...input.usage, outputTokens: 19 } });
    expect(r.status).toBe("invalid");
    expect(kinds(r)[0]).toBe("usage-mismatch");
  });

  it("a receipt signed by someone else, or for another escrow, is invalid", async () => {
    expect(kinds(checkTurnUsage(await turn({ signer: undefined, input: { receiptSignature: `0x${"12".repeat(65)}` } })))).toEqual(["receipt-signature"]);
    const forged = await turn();
    forged.receiptSignature = await signReceipt(provider, forged.receipt, { ...escrow, chainId: 1n });
    expect(kinds(checkTurnUsage(forged))).toEqual(["receipt-signature"]);
  });

  it("attack 10: a reply of \"ok\" billed as 256 output tokens is an overcharge, paid at most what the text can hold", async () => {
    // A provider streams "ok" (2 bytes) and bills 256 output tokens, within maxTokens: before, this passed as honest.
    const input = await turn({ usage: { outputTokens: 256 }, input: { maxTokens: 256 } });
    const r = checkTurnUsage({ ...input, outputText: "ok", receipt: { ...input.receipt, outputHash: hashOutput("ok") }, receiptSignature: await signReceipt(provider, { ...input.receipt, outputHash: hashOutput("ok") }, escrow) });
    expect(r.status).toBe("overcharge");
    expect(kinds(r)).toContain("output-over-text");
    if (r.status === "invalid") throw new Error("unreachable");
    // Every token but the special ones decodes to at least one byte: 2 bytes and the slack, no more.
    expect(r.billed.outputTokens).toBe(2n + BigInt(OUTPUT_TOKEN_SLACK));
    expect(r.cumulative.outputTokens).toBe(40n + r.billed.outputTokens);
  });

  it("an integrity failure wins over an overcharge: nothing is paid", async () => {
    const r = checkTurnUsage(await turn({ usage: { outputTokens: 500 }, receipt: { turn: 9 } }));
    expect(r.status).toBe("invalid");
    expect(kinds(r)).toEqual(["receipt-field", "output-over-max", "output-over-text"]);
  });
});

beforeAll(() => {
  expect(provider.address).not.toBe(payer.address);
});
