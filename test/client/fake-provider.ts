// A provider for the client's tests, built on the node's handleProtocol: it answers quotes, sessions,
// inference and vouchers by the wire semantics of /tmp/spec issue 5, without an engine (its "model" emits
// numbered words), and can misbehave on demand: stall, die, answer busy, overcharge, sign a bad receipt,
// quote cheaply and then ask more, or bill a cancelled turn for more than it streamed. Sessions close as the
// real provider's do: only by the peer that opened them, answering the served and vouched totals once a
// running turn has stopped, and then taking only the voucher for exactly the served totals. Its money checks are the real provider's (issue 14): the session's
// royalty and fee at least those in force, the payer's lane (not its deposit) covering the caps of its open
// sessions here, vouchers at the session's rates, and each turn's worst full cost within the session's cap.
import { getAddress, parseEther, Wallet, ZeroHash } from "ethers";
import type { Signer } from "ethers";
import type { SoulmeshContracts } from "../../sdk/chain/contracts.js";
import { sessionCost, verifyVoucher, type EscrowRef, type Voucher, type VoucherRates } from "../../sdk/chain/voucher.js";
import {
  hashOutput,
  hashPrompt,
  hashSessionRequest,
  InsufficientEscrowError,
  InvalidMessageError,
  InvalidSignatureError,
  NotSessionOpenerError,
  PaymentRequiredError,
  PersonaUnavailableError,
  ProviderBusyError,
  SessionExpiredError,
  SessionNotFoundError,
  signReceipt,
  UnexpectedMessageError,
  verifySessionRequest,
  voucherFromWire,
  type InferenceRequest,
  type Prompt,
  type Receipt,
  type SessionOpen,
  type SessionRequest,
} from "../../sdk/protocol/index.js";
import { handleProtocol, type ProtocolService, type ResponseOf } from "../../node/p2p/handler.js";
import type { ProviderHost } from "../../node/p2p/host.js";
import { serveQuotes } from "../../node/p2p/quote.js";
import type { Fixture as P2pFixture } from "../../node/p2p/test-support.js";
import type { Fixture as ChainFixture } from "../helpers/soulmesh.js";

/** How a fake provider (mis)behaves on inference. */
export type Behavior =
  | { kind: "honest" }
  /** Sends `afterChunks` chunks, then nothing more. */
  | { kind: "stall"; afterChunks: number }
  /** Sends `afterChunks` chunks, then stops its libp2p node. */
  | { kind: "die"; afterChunks: number }
  /** Answers ProviderBusyError, as an engine whose queue is full. */
  | { kind: "busy" }
  /** Reports (and signs, and counts as served) more tokens than it used. */
  | { kind: "overcharge"; extraInput?: number; extraOutput?: number }
  /** Signs its receipts with another key. */
  | { kind: "bad-receipt" }
  /** Refuses every session open with this code. */
  | { kind: "reject"; code: string }
  /** Quotes its prices once (the ranking), then `raised` at each quote after (the bait and switch of issue 14). */
  | { kind: "bait"; raised: { input: bigint; output: bigint } }
  /** Answers a session close with `extraOutput` more output tokens served than it counted. */
  | { kind: "inflate-close"; extraOutput: number };

/**
 * The fake model's token count of a prompt: 4 bytes a token, plus 4 per message. The tests' LocalTokenizer
 * counts the same way, as a real one would count as the engine.
 */
export function fakeTokenCount(prompt: Prompt): number {
  const bytes = (s: string) => new TextEncoder().encode(s).length;
  if (prompt.kind === "text") return Math.ceil(bytes(prompt.text) / 4) + 1;
  return prompt.messages.reduce((n, m) => n + Math.ceil(bytes(m.content) / 4) + 4, 1);
}

interface FakeSession {
  id: string;
  /** Replaced by a later session of the channel: its cap no longer held. */
  closed: boolean;
  /** Closed by its payer: no more turns, only the voucher for exactly `served`. */
  closedByPayer: boolean;
  /** The peer whose open was accepted first: the one that may close it. */
  openedBy: string;
  request: SessionRequest;
  adapters: string[];
  nextTurn: number;
  busy: boolean;
  served: { input: bigint; output: bigint };
  vouched: { input: bigint; output: bigint };
  lastPromptTokens: number;
}

export interface FakeProviderOptions {
  p2p: P2pFixture;
  chain: ChainFixture;
  /** Letter put in front of each output word, so a test can tell whose text it got. */
  label: string;
  models: string[];
  prices?: { input: bigint; output: bigint };
  /** Prices quoted (and required), when they should differ from the registered ones. */
  quotedPrices?: { input: bigint; output: bigint };
  behavior?: Behavior;
  /** Words the model writes per turn (fewer if maxTokens is lower). Default 5. */
  outputLength?: number;
  chunkDelayMs?: number;
  queueLength?: number;
  cachedAdapters?: string[];
  /** Registered addresses; default the host's own. */
  registeredMultiaddrs?: (host: ProviderHost) => string[];
}

export class FakeProvider {
  readonly sessions = new Map<string, FakeSession>();
  /** Every voucher accepted, in order, with the signature checked. */
  readonly vouchers: { voucher: Voucher; signature: string; sessionId: string }[] = [];
  /** Every session open received (including rejected ones). */
  readonly opens: SessionOpen[] = [];
  /** Every inference request received. */
  readonly inferences: InferenceRequest[] = [];
  behavior: Behavior;
  /** Quotes answered so far. */
  quotesServed = 0;
  readonly services: ProtocolService[] = [];

  private constructor(
    readonly wallet: Wallet,
    readonly host: ProviderHost,
    readonly options: FakeProviderOptions,
    readonly contracts: SoulmeshContracts,
    readonly escrow: EscrowRef,
    readonly maxLifetime: bigint,
  ) {
    this.behavior = options.behavior ?? { kind: "honest" };
  }

  get address(): string {
    return this.wallet.address;
  }

  get prices(): { input: bigint; output: bigint } {
    if (this.behavior.kind === "bait" && this.quotesServed > 1) return this.behavior.raised;
    return this.options.quotedPrices ?? this.options.prices ?? { input: 1_000_000n, output: 2_000_000n };
  }

  /** Chain time: what the escrow (and so a real provider) judges expiries by. */
  private async chainNow(): Promise<bigint> {
    const block = await this.contracts.inferenceEscrow.runner!.provider!.getBlock("latest");
    return BigInt(block!.timestamp);
  }

  /** Starts a host, serves the four protocols and registers on chain with a fresh funded wallet. */
  static async start(options: FakeProviderOptions): Promise<FakeProvider> {
    const f = options.chain;
    const wallet = await fundedWallet(f);
    const host = await options.p2p.host();
    const escrow = { chainId: BigInt(f.deployment.chainId), address: f.deployment.contracts.inferenceEscrow };
    const maxLifetime = await f.contracts.inferenceEscrow.maxVoucherLifetime();
    const fake = new FakeProvider(wallet, host, options, f.as(wallet), escrow, maxLifetime);
    await fake.serve();
    const stake = BigInt(f.deployment.parameters.minStake);
    await f.fund(wallet.address, stake);
    await (await fake.contracts.token.approve(f.deployment.contracts.providerRegistry, stake)).wait();
    const prices = options.prices ?? { input: 1_000_000n, output: 2_000_000n };
    const addrs = options.registeredMultiaddrs?.(host) ?? host.multiaddrs().map(String);
    await (
      await fake.contracts.providerRegistry.register(host.peerId.toString(), addrs, options.models, prices.input, prices.output, stake)
    ).wait();
    return fake;
  }

  private async serve(): Promise<void> {
    const opts = { responseTimeoutMs: 10_000 };
    this.services.push(
      await serveQuotes(this.host.libp2p, {
        quoteSource: () => {
          this.quotesServed++;
          return {
            provider: this.address,
            models: this.options.models,
            cachedAdapters: this.options.cachedAdapters ?? [],
            priceInputPerMillion: this.prices.input.toString(),
            priceOutputPerMillion: this.prices.output.toString(),
            queueLength: this.options.queueLength ?? 0,
            maxTokens: 4096,
          };
        },
      }),
      await handleProtocol(this.host.libp2p, "session", {
        ...opts,
        handler: (req, ctx) => (req.type === "session.close" ? this.close(req.sessionId, ctx.peer.toString()) : this.open(req, ctx.peer.toString())),
      }),
      await handleProtocol(this.host.libp2p, "inference", { ...opts, handler: (req, ctx) => this.infer(req, ctx.signal) }),
      await handleProtocol(this.host.libp2p, "voucher", { ...opts, handler: async (req) => this.voucher(req.voucher, req.signature) }),
    );
  }

  /** Every session close received, with the totals answered. */
  readonly closes: { sessionId: string; served: { input: bigint; output: bigint } }[] = [];

  private async close(sessionId: string, peer: string): Promise<ResponseOf<"session">> {
    const s = this.sessions.get(sessionId.toLowerCase());
    if (s === undefined) throw new SessionNotFoundError("no such session");
    if (s.openedBy !== peer) throw new NotSessionOpenerError("opened by another peer");
    s.closedByPayer = true;
    // The aborted turn ends (and is counted) first.
    for (let i = 0; s.busy && i < 400; i++) await new Promise((r) => setTimeout(r, 5));
    if (this.behavior.kind === "inflate-close") s.served.output += BigInt(this.behavior.extraOutput);
    this.closes.push({ sessionId: s.id, served: { ...s.served } });
    return {
      type: "session.closed",
      sessionId: s.id,
      served: { inputTokens: s.served.input.toString(), outputTokens: s.served.output.toString() },
      vouched: { inputTokens: s.vouched.input.toString(), outputTokens: s.vouched.output.toString() },
    };
  }

  private async open(open: SessionOpen, peer: string): Promise<ResponseOf<"session">> {
    this.opens.push(open);
    const r = open.request;
    if (getAddress(r.provider) !== this.address) throw new InvalidMessageError("not this provider");
    if (BigInt(r.chainId) !== BigInt(this.escrow.chainId) || getAddress(r.escrow) !== getAddress(this.escrow.address)) {
      throw new InvalidMessageError("wrong chain or escrow");
    }
    if (!verifySessionRequest(r, open.signature)) throw new InvalidSignatureError("not the payer's signature");
    const now = await this.chainNow();
    if (BigInt(r.expiry) <= now + 60n) throw new SessionExpiredError("expiry too soon");
    if (BigInt(r.expiry) > now + this.maxLifetime) throw new InvalidMessageError("expiry too far");
    if (BigInt(r.priceInputPerMillion) < this.prices.input || BigInt(r.priceOutputPerMillion) < this.prices.output) {
      throw new InvalidMessageError("prices below this provider's");
    }
    if (this.behavior.kind === "reject") return { type: "session.rejected", code: this.behavior.code, message: "refused by the test", retryable: false };
    const c = this.contracts;
    if ((await c.agentRegistry.personaOf(BigInt(r.agentId))) !== BigInt(r.personaId)) throw new PersonaUnavailableError("agent/persona");
    const persona = await c.personaRegistry.personaOf(BigInt(r.personaId));
    if (!this.options.models.map((m) => m.toLowerCase()).includes(persona.baseModelHash.toLowerCase())) {
      throw new PersonaUnavailableError("model not served");
    }
    const adapters = persona.adapterSha256 === ZeroHash ? [] : [persona.adapterSha256.toLowerCase()];
    if (adapters.length > 0 && open.adapterCid === undefined) throw new PersonaUnavailableError("no adapter CID");
    // Rates: at least those in force, and no rise pending before the session ends.
    const [royalty, royaltyNext, royaltyAt] = await c.personaRegistry.royaltyScheduleOf(BigInt(r.personaId));
    const [fee, feeNext, feeAt] = await c.inferenceEscrow.protocolFee();
    const signedRoyalty = BigInt(r.royaltyPerMillion);
    const signedFee = BigInt(r.feeBps);
    if (signedRoyalty < royalty || signedFee < fee) throw new InvalidMessageError("royalty or fee below the rates in force");
    if ((royaltyAt !== 0n && royaltyAt <= BigInt(r.expiry) && signedRoyalty < royaltyNext) || (feeAt !== 0n && feeAt <= BigInt(r.expiry) && signedFee < feeNext)) {
      throw new InvalidMessageError("a rate rise takes effect before the session's expiry");
    }
    // The lane, less what this payer owes here unsettled and the caps of its other open sessions here.
    const [lane] = await c.inferenceEscrow.laneOf(r.payer, this.address);
    // (A new session of a channel ends the channel's earlier ones, so their caps are not held for it.)
    const held = [...this.sessions.values()]
      .filter((x) => getAddress(x.request.payer) === getAddress(r.payer) && x.request.agentId !== r.agentId && !x.closed)
      .reduce((sum, x) => sum + BigInt(x.request.spendingCap), 0n);
    if (lane < held + BigInt(r.spendingCap)) {
      return { type: "session.rejected", code: "InsufficientEscrowError", message: `lane ${lane} below the caps ${held} + ${r.spendingCap}`, retryable: false };
    }
    const id = hashSessionRequest(r);
    if (!this.sessions.has(id)) {
      // The payer's earlier sessions here are over once it opens a new one on the channel (the test's stand-in
      // for a real provider's idle timeout).
      for (const x of this.sessions.values()) {
        if (getAddress(x.request.payer) === getAddress(r.payer) && x.request.agentId === r.agentId) x.closed = true;
      }
      this.sessions.set(id, {
        id,
        closed: false,
        closedByPayer: false,
        openedBy: peer,
        request: r,
        adapters,
        nextTurn: 0,
        busy: false,
        served: { input: 0n, output: 0n },
        vouched: { input: 0n, output: 0n },
        lastPromptTokens: 0,
      });
    }
    return { type: "session.accepted", sessionId: id, expiry: r.expiry };
  }

  private async *infer(req: InferenceRequest, signal: AbortSignal): AsyncGenerator<ResponseOf<"inference">> {
    this.inferences.push(req);
    const s = this.sessions.get(req.sessionId.toLowerCase());
    if (s === undefined) throw new SessionNotFoundError("no such session");
    if (s.closedByPayer) throw new SessionNotFoundError("closed by its payer");
    if ((await this.chainNow()) >= BigInt(s.request.expiry) - 30n) throw new SessionExpiredError("expired");
    const same = (a: string[], b: string[]) => a.length === b.length && a.every((x, i) => x.toLowerCase() === b[i]!.toLowerCase());
    if (!this.options.models.some((m) => m.toLowerCase() === req.model.toLowerCase()) || !same(req.adapters, s.adapters)) {
      throw new InvalidMessageError("model or adapters differ from the session's");
    }
    if (req.turn !== s.nextTurn) throw new UnexpectedMessageError(`turn ${s.nextTurn} expected`);
    if (s.busy) throw new ProviderBusyError("a turn is running");
    if (s.served.input > s.vouched.input || s.served.output > s.vouched.output) throw new PaymentRequiredError(`send the voucher for turn ${s.nextTurn - 1}`);
    // The worst full cost once the turn's output is in (its input is not known before it is evaluated).
    const worst = sessionCost({ inputTokens: s.served.input, outputTokens: s.served.output + BigInt(req.maxTokens) }, ratesOf(s.request));
    if (worst > BigInt(s.request.spendingCap)) throw new InsufficientEscrowError("the turn could exceed the spending cap");
    const behavior = this.behavior;
    // As the real provider: refused at admission, the turn number is not spent.
    if (behavior.kind === "busy") throw new ProviderBusyError("queue full");
    s.nextTurn++;
    s.busy = true;
    try {
      const input = fakeTokenCount(req.prompt);
      const cached = Math.min(s.lastPromptTokens, input);
      s.served.input += BigInt(input - cached);
      const n = Math.min(req.maxTokens, this.options.outputLength ?? 5);
      let text = "";
      for (let i = 0; i < n; i++) {
        if ((behavior.kind === "stall" || behavior.kind === "die") && i === behavior.afterChunks) {
          if (behavior.kind === "die") void this.host.stop();
          await sleep(10_000, signal);
          return;
        }
        await sleep(this.options.chunkDelayMs ?? 2, signal);
        const chunk = `${this.options.label}${i} `;
        text += chunk;
        s.served.output += 1n;
        yield { type: "inference.chunk", index: i, text: chunk };
      }
      s.lastPromptTokens = input;
      const extraIn = behavior.kind === "overcharge" ? (behavior.extraInput ?? 0) : 0;
      const extraOut = behavior.kind === "overcharge" ? (behavior.extraOutput ?? 0) : 0;
      s.served.input += BigInt(extraIn);
      s.served.output += BigInt(extraOut);
      const usage = { inputTokens: input + extraIn, cachedInputTokens: cached, outputTokens: n + extraOut };
      const r = s.request;
      const receipt: Receipt = {
        payer: r.payer,
        provider: r.provider,
        agentId: r.agentId,
        session: r.session,
        turn: req.turn,
        modelSha256: req.model,
        adapterSha256s: req.adapters,
        promptHash: hashPrompt(req.prompt),
        outputHash: hashOutput(text),
        usage,
        cumulativeInputTokens: s.served.input.toString(),
        cumulativeOutputTokens: s.served.output.toString(),
      };
      const signer: Signer = behavior.kind === "bad-receipt" ? Wallet.createRandom() : this.wallet;
      const signature =
        behavior.kind === "bad-receipt"
          ? await signer.signTypedData({ name: "Soulmesh Receipt", version: "1", chainId: this.escrow.chainId, verifyingContract: this.escrow.address }, { X: [{ name: "x", type: "uint256" }] }, { x: 1n })
          : await signReceipt(signer, receipt, this.escrow);
      yield { type: "inference.done", usage, stopReason: n < req.maxTokens ? "stop" : "length", receipt, signature };
    } finally {
      s.busy = false;
    }
  }

  private async voucher(wire: Parameters<typeof voucherFromWire>[0], signature: string): Promise<ResponseOf<"voucher">> {
    const v = voucherFromWire(wire);
    const s = [...this.sessions.values()].find(
      (x) =>
        getAddress(x.request.payer) === v.payer &&
        getAddress(x.request.provider) === v.provider &&
        BigInt(x.request.agentId) === v.agentId &&
        BigInt(x.request.session) === v.session,
    );
    if (s === undefined) throw new SessionNotFoundError("no session for this voucher");
    if (v.inputTokens > s.served.input || v.outputTokens > s.served.output) throw new InvalidMessageError("voucher above what was served");
    if (s.closedByPayer && (v.inputTokens !== s.served.input || v.outputTokens !== s.served.output)) {
      throw new InvalidMessageError("a closed session takes only the voucher for its served totals");
    }
    const rates = ratesOf(s.request);
    if (
      v.priceInputPerMillion !== rates.priceInputPerMillion ||
      v.priceOutputPerMillion !== rates.priceOutputPerMillion ||
      v.royaltyPerMillion !== rates.royaltyPerMillion ||
      v.feeBps !== rates.feeBps
    ) {
      throw new InvalidMessageError("voucher rates differ from the session's");
    }
    if (sessionCost({ inputTokens: v.inputTokens, outputTokens: v.outputTokens }, rates) > BigInt(s.request.spendingCap)) {
      throw new InvalidMessageError("voucher above the session's cap");
    }
    if (!verifyVoucher(v, this.escrow, signature)) throw new InvalidSignatureError("not the payer's voucher");
    s.vouched = { input: v.inputTokens, output: v.outputTokens };
    this.vouchers.push({ voucher: v, signature, sessionId: s.id });
    return { type: "voucher.ack", session: v.session.toString(), inputTokens: v.inputTokens.toString(), outputTokens: v.outputTokens.toString() };
  }

  /** The served totals of every session, summed. */
  served(): { input: bigint; output: bigint } {
    let input = 0n;
    let output = 0n;
    for (const s of this.sessions.values()) {
      input += s.served.input;
      output += s.served.output;
    }
    return { input, output };
  }
}

/** Every rate a session signed, as its vouchers must carry them. */
export function ratesOf(r: SessionRequest): VoucherRates {
  return {
    priceInputPerMillion: BigInt(r.priceInputPerMillion),
    priceOutputPerMillion: BigInt(r.priceOutputPerMillion),
    royaltyPerMillion: BigInt(r.royaltyPerMillion),
    feeBps: BigInt(r.feeBps),
  };
}

/** A fresh wallet with ether for gas, connected to the fixture's chain. */
export async function fundedWallet(f: ChainFixture): Promise<Wallet> {
  const wallet = Wallet.createRandom().connect(f.chain.provider);
  await (await f.chain.wallets[0]!.sendTransaction({ to: wallet.address, value: parseEther("10") })).wait();
  return new Wallet(wallet.privateKey, f.chain.provider);
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal.aborted) return reject(signal.reason);
    const timer = setTimeout(() => {
      signal.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal.reason);
    };
    signal.addEventListener("abort", onAbort, { once: true });
  });
}
