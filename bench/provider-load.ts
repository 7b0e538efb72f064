/**
 * One provider under load: SESSIONS chats (default 32), each of its own payer (a fresh wallet with a deposit committed to the provider's lane and
 * an agent) and its own client libp2p host, all taking TURNS turns (default 4) at once against one real provider
 * (node/provider startProvider: engine, libp2p, quote/session/inference/voucher protocols, voucher book,
 * settlement worker) on the tiny fixture model (test/fixtures/gguf tinyFixtures(), 0.46M parameters), over TCP
 * loopback with Noise and Yamux, on an in-process EDR chain.
 *
 * Engine settings are the provider's defaults (threads cores − 1, contextSize the model's 2048, 4 sequences
 * per context, maxConcurrent 2, maxQueued 16, memory budget half the free memory): 18 turns are admitted at
 * once and the rest are answered ProviderBusyError, as a deployed node would answer them.
 *
 * How: the chats are opened first (registry, quotes; not timed; at most 4 new connections a second, since libp2p
 * refuses a 6th inbound connection within a second from one IP and every client here is on 127.0.0.1), then every chat runs its turns one after
 * another, all chats at once. Each turn sends the whole conversation so far (a user message of 12 words, the
 * answers kept verbatim) and asks for TOKENS tokens (default 16) greedily; the first turn of a chat also opens
 * its provider session, and every turn ends with its voucher exchange, as in real use. With one provider, a
 * busy answer makes the client's turn fail (AllProvidersFailedError, its failures of kind "busy"): the bench
 * waits 100–200 ms (random) and runs the turn again, and counts one busy rejection per "provider:failed" event
 * of kind "busy". Any other failure is an error (printed on stderr, the turn skipped).
 * - turnsPerSec: turns completed over the wall time from the start to the last chat's end;
 * - p50Ms / p95Ms / maxMs: turn latency, from the first call of turn() to its success, busy retries and waits
 *   included; firstTurnP50Ms / laterTurnP50Ms split it by turns that open a session and those that do not;
 * - outputTokensPerSec: output tokens of completed turns over the same wall time;
 * - busyRejections, busyTurns (turns that met at least one), errors (anything but busy), providerBusy (busy
 *   answers the provider counted, from its request:failed events), sessionsOpened (the client opens a new
 *   session after a busy turn, so this exceeds SESSIONS when there were busy answers).
 * One repetition (`--runs N` repeats the whole load on the same provider with new chats; figures are then over
 * all turns).
 *
 * Then, in the same run (each repetition: without, then with), the same load once more (new payers and chats)
 * beside an attack (issue 14, attack 5):
 * two attacking peers hold STALLED streams (default 64, 32 each: libp2p's cap per protocol and connection) of
 * the /voucher protocol, half of them sending nothing and half a frame (a length prefix of 300 bytes and 10
 * of them), each reopened 250 ms after the provider drops it, for the whole phase. The attackers run in this
 * process, so their CPU is the provider's too. Its figures:
 * - honestLostTurnsUnderAttack: turns served whose voucher the provider did not acknowledge (refused or timed
 *   out; the client's TurnResult.payment.ack), plus turns that failed outright, goal 0;
 * - honestThroughputRatioUnderAttack: turnsPerSec under attack ÷ turnsPerSec without (above), goal ≥ 0.8;
 * - turnsPerSecUnderAttack, p95MsUnderAttack, errorsUnderAttack (failed turns, as `errors`), turnsUnderAttack;
 * - attackStreamsOpened (streams the attackers got open, reopenings included) and attackStreamsRefused (those
 *   the provider answered ProviderBusyError unread, from its stream:refused events, by reason).
 * `--no-attack` skips the phase (its keys are then absent).
 *
 *   npm run bench -- provider-load [--sessions N] [--turns N] [--tokens N] [--runs N] [--stalled N] [--no-attack]
 */
import { mkdtemp, rm } from "node:fs/promises";
import { rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Connection, Stream } from "@libp2p/interface";
import { Wallet, ZeroHash } from "ethers";
import { getLlama, LlamaLogLevel } from "node-llama-cpp";
import { connectContracts } from "../sdk/chain/contracts.js";
import type { Multiaddr } from "@multiformats/multiaddr";
import { AllProvidersFailedError, createClientHost, openChat, type ChatSession, type ClientHost } from "../sdk/client/index.js";
import type { ChatMessage } from "../sdk/protocol/messages.js";
import { ProviderBusyError } from "../sdk/protocol/errors.js";
import { encodeVarint } from "../sdk/protocol/codec.js";
import { PROTOCOL_IDS } from "../sdk/protocol/ids.js";
import { readStream } from "../sdk/protocol/stream.js";
import { defaultThreads } from "../node/engine/threads.js";
import { startProvider } from "../node/provider/provider.js";
import { removeTinyFixtures, tinyFixtures } from "../test/fixtures/gguf/llama.js";
import { createTestChain } from "../test/helpers/chain.js";
import { deployFixture, USD } from "../test/helpers/soulmesh.js";
import { argNumber, log, median, round, sentence } from "./_util.js";

const PRICES = { input: 500_000n, output: 1_500_000n };
const DEPOSIT = 10n * USD;

/** The value at quantile `q` (0–1) of a non-empty list, nearest rank. */
function quantile(values: readonly number[], q: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))]!;
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** A flag `--NAME` on the command line. */
const flag = (name: string): boolean => process.argv.includes(`--${name}`);

/** Streams one attacking peer holds per protocol and connection: libp2p's own cap (maxInboundStreams). */
const STREAMS_PER_CONNECTION = 32;

/**
 * `count` stalled streams of `protocol` from `hosts` (spread evenly, at most 32 each) to `target`, held until
 * stop(): half send nothing, half a frame's length prefix and 10 of its 300 bytes; each stream the provider drops
 * (answered or timed out) is reopened 250 ms later.
 */
async function stallStreams(hosts: ClientHost[], target: Multiaddr, protocol: string, count: number) {
  const attack = new AbortController();
  const { signal } = attack;
  let opened = 0;
  const loops: Promise<void>[] = [];
  const perHost = Math.ceil(count / hosts.length);
  if (perHost > STREAMS_PER_CONNECTION) throw new Error(`--stalled ${count} needs more than ${hosts.length} attacking peers`);
  for (const [h, host] of hosts.entries()) {
    const libp2p = await host.start();
    let connection: Connection | undefined;
    const open = async (slot: number): Promise<Stream> => {
      if (connection === undefined || connection.status !== "open") connection = await libp2p.dial(target, { signal });
      const stream = await connection.newStream(protocol, { signal });
      opened++;
      if (slot % 2 === 1) stream.send(Uint8Array.from([...encodeVarint(300), ...new Uint8Array(10)]));
      return stream;
    };
    const hold = async (slot: number, first: Stream | undefined): Promise<void> => {
      let stream = first;
      while (!signal.aborted) {
        try {
          stream ??= await open(slot);
          const held = stream;
          const ended = (async () => {
            for await (const _ of readStream(held)); // whatever the provider answers, until it closes its side
          })().catch(() => {});
          await Promise.race([ended, new Promise((resolve) => signal.addEventListener("abort", resolve, { once: true }))]);
          held.abort(new Error("reopen"));
        } catch {
          // refused by libp2p (its per-connection cap), the connection dropped, or the attack is over
        }
        stream = undefined;
        await sleep(250);
      }
    };
    const slots = Array.from({ length: Math.min(perHost, count - h * perHost) }, (_, i) => i);
    // 8 at a time: yamux drops a connection whose peer opens more than 10 streams not yet acknowledged.
    for (let i = 0; i < slots.length; i += 8) {
      const batch = await Promise.all(slots.slice(i, i + 8).map((slot) => open(slot).catch(() => undefined)));
      batch.forEach((stream, j) => loops.push(hold(slots[i + j]!, stream)));
    }
  }
  return {
    opened: () => opened,
    async stop() {
      attack.abort();
      await Promise.all(loops);
    },
  };
}

interface Turn {
  ms: number;
  first: boolean;
  outputTokens: number;
}

/** What one phase (baseline or under attack) measured over its repetitions. */
interface Phase {
  done: Turn[];
  errors: string[];
  busyRejections: number;
  busyTurns: number;
  sessionsOpened: number;
  wallMs: number;
  /** Turns served whose voucher was not acknowledged. */
  unpaid: number;
}

async function main(): Promise<void> {
  const sessions = argNumber("sessions", 32);
  const turns = argNumber("turns", 4);
  const maxTokens = argNumber("tokens", 16);
  const repetitions = argNumber("runs", 1);
  const stalled = argNumber("stalled", 64);
  const underAttack = !flag("no-attack");
  const root = await mkdtemp(join(tmpdir(), "soulmesh-bench-load-"));
  process.once("exit", () => rmSync(root, { recursive: true, force: true }));

  log("starting the chain and deploying…");
  const chain = await createTestChain();
  const f = await deployFixture(chain);
  const [deployer, providerWallet, , creator] = chain.wallets as [Wallet, Wallet, Wallet, Wallet];
  const escrow = { chainId: f.deployment.chainId, address: f.deployment.contracts.inferenceEscrow };
  const fx = await tinyFixtures();
  const llama = await getLlama({ gpu: false, build: "never", logLevel: LlamaLogLevel.error });
  await f.fund(providerWallet.address, BigInt(f.deployment.parameters.minStake));
  log("starting the provider…");
  const node = await startProvider({
    dataDir: join(root, "provider"),
    models: [fx.base.path],
    prices: PRICES,
    deployment: f.deployment,
    rpc: chain.provider,
    privateKey: providerWallet.privateKey,
    metricsPort: 0,
    llama,
  });
  const { protocols, engine, host: providerHost } = node.parts;
  let providerBusy = 0;
  const providerErrors: string[] = [];
  let attacking = false;
  protocols.addEventListener("request:failed", (e) => {
    const { protocol, error } = e.detail;
    // The attack's stalled streams time out by design; only the honest phase's failures are the provider's.
    if (attacking) return;
    if (error instanceof ProviderBusyError) providerBusy++;
    else providerErrors.push(`${protocol}: ${error instanceof Error ? `${error.name}: ${error.message}` : String(error)}`);
  });
  const refused: Record<string, number> = {};
  protocols.addEventListener("stream:refused", (e) => {
    if (attacking) refused[e.detail.reason] = (refused[e.detail.reason] ?? 0) + 1;
  });

  const personaId = await f.createPersona(creator, { adapterSha256: ZeroHash, baseModelHash: fx.base.sha256, royaltyPerMillion: 200_000n });
  const contracts = connectContracts(f.deployment, chain.provider);

  /** One run of the load, counted into `phase`: SESSIONS new payers and chats, all taking their turns at once. */
  async function load(phase: Phase, label: string, during?: { start: () => Promise<void>; stop: () => Promise<void> }): Promise<void> {
    log(`${label}: ${sessions} payers (wallet, deposit, agent), client hosts, chats…`);
    const total = DEPOSIT * BigInt(sessions);
    await f.fund(deployer.address, total);
    await (await f.contracts.token.approve(f.deployment.contracts.inferenceEscrow, total)).wait();
    const payers: { wallet: Wallet; agentId: bigint }[] = [];
    for (let i = 0; i < sessions; i++) {
      const wallet = new Wallet(Wallet.createRandom().privateKey, chain.provider);
      await chain.provider.send("hardhat_setBalance", [wallet.address, "0x8AC7230489E80000"]);
      await (await f.contracts.inferenceEscrow.depositFor(wallet.address, DEPOSIT)).wait();
      // Only a lane with the provider backs its sessions: the payer commits its deposit to it.
      await (await f.as(wallet).inferenceEscrow.commit(node.address, DEPOSIT)).wait();
      payers.push({ wallet, agentId: await f.mintAgent(wallet, personaId) });
    }
    const hosts: ClientHost[] = [];
    const chats: ChatSession[] = [];
    for (const [i, payer] of payers.entries()) {
      // libp2p refuses more than 5 inbound connections per second from one IP (its inboundConnectionThreshold
      // default), and every client here comes from 127.0.0.1: connect at most 4 a second.
      if (i > 0 && i % 4 === 0) await sleep(1_100);
      const host = await createClientHost();
      hosts.push(host);
      const chat = await openChat({
        libp2p: await host.start(),
        contracts,
        signer: payer.wallet,
        escrow,
        agentId: payer.agentId,
        personaId,
        modelSha256: fx.base.sha256,
        spendingCap: USD,
        stallTimeoutMs: 60_000,
      });
      chat.addEventListener("provider:failed", (e) => {
        if (e.detail.kind === "busy") phase.busyRejections++;
      });
      chat.addEventListener("session:opened", () => phase.sessionsOpened++);
      chats.push(chat);
    }

    await during?.start();
    log(`${sessions} chats × ${turns} turns of ${maxTokens} tokens, all at once…`);
    const start = performance.now();
    await Promise.all(
      chats.map(async (chat, c) => {
        const history: ChatMessage[] = [];
        for (let t = 0; t < turns; t++) {
          history.push({ role: "user", content: sentence(c * 31 + t, 12) });
          const begin = performance.now();
          let sawBusy = false;
          for (;;) {
            try {
              const result = await chat.turn({ prompt: [...history], maxTokens, sampling: { temperature: 0 } });
              if (result.failovers.some((x) => x.kind === "busy")) sawBusy = true;
              phase.done.push({ ms: performance.now() - begin, first: t === 0, outputTokens: result.usage.outputTokens });
              // Served, and vouched by the client, but the voucher never reached the provider's book.
              if (result.payment !== undefined && result.payment.ack === undefined) phase.unpaid++;
              history.push({ role: "assistant", content: result.text });
              break;
            } catch (err) {
              // Busy answers are waited out, but not forever: a provider that stays busy two minutes failed the turn.
              if (
                err instanceof AllProvidersFailedError &&
                err.failures.length > 0 &&
                err.failures.every((x) => x.kind === "busy") &&
                performance.now() - begin < 120_000
              ) {
                sawBusy = true;
                await sleep(100 + Math.random() * 100);
                continue;
              }
              phase.errors.push(`chat ${c} turn ${t}: ${err instanceof Error ? `${err.name}: ${err.message}` : String(err)}`);
              history.pop();
              break;
            }
          }
          if (sawBusy) phase.busyTurns++;
        }
      }),
    );
    const elapsed = performance.now() - start;
    phase.wallMs += elapsed;
    await during?.stop();
    log(
      `  ${(elapsed / 1000).toFixed(1)} s; busy so far ${phase.busyRejections}, errors so far ${phase.errors.length}, ` +
        `unacknowledged vouchers so far ${phase.unpaid}; engine ${JSON.stringify(engine.load)}`,
    );
    for (const chat of chats) chat.close();
    await Promise.all(hosts.map((h) => h.stop()));
    // The chats are over: their sessions close, as their clients would close them, so that the next run finds
    // the engine as this one did.
    for (const session of protocols.sessions()) await protocols.close(session.sessionId);
  }

  const emptyPhase = (): Phase => ({ done: [], errors: [], busyRejections: 0, busyTurns: 0, sessionsOpened: 0, wallMs: 0, unpaid: 0 });
  const base = emptyPhase();
  const attacked = underAttack ? emptyPhase() : undefined;
  let attackStreamsOpened = 0;
  const target = providerHost.multiaddrs().find((m) => !m.toString().includes("/ws"))!;
  // Each repetition runs the load without, then with the attack: the two are measured under the same conditions
  // (a shared machine's load drifts over a run).
  for (let rep = 0; rep < repetitions; rep++) {
    await load(base, `without attack, repetition ${rep + 1}/${repetitions}`);
    if (attacked === undefined) continue;
    const attackers = [await createClientHost(), await createClientHost()];
    let stall: Awaited<ReturnType<typeof stallStreams>> | undefined;
    await load(attacked, `under attack (${stalled} stalled /voucher streams from ${attackers.length} peers), repetition ${rep + 1}/${repetitions}`, {
      async start() {
        attacking = true;
        stall = await stallStreams(attackers, target, PROTOCOL_IDS.voucher, stalled);
        log(`  the attackers hold ${stall.opened()} streams`);
      },
      async stop() {
        attackStreamsOpened += stall?.opened() ?? 0;
        await stall?.stop();
        attacking = false;
      },
    });
    await Promise.all(attackers.map((h) => h.stop()));
  }

  for (const e of base.errors) log(`error: ${e}`);
  for (const e of attacked?.errors ?? []) log(`error under attack: ${e}`);
  for (const e of providerErrors) log(`provider error: ${e}`);
  const load_ = engine.load;
  await node.stop();
  await llama.dispose();
  await chain.close();
  await removeTinyFixtures();
  await rm(root, { recursive: true, force: true });

  const { done, errors, busyRejections, busyTurns, sessionsOpened, wallMs } = base;
  const ms = done.map((t) => t.ms);
  const outputTokens = done.reduce((sum, t) => sum + t.outputTokens, 0);
  const firsts = done.filter((t) => t.first).map((t) => t.ms);
  const laters = done.filter((t) => !t.first).map((t) => t.ms);
  const turnsPerSec = (done.length * 1000) / wallMs;
  const figures = {
    turnsPerSec: round(turnsPerSec, 2),
    p50Ms: round(quantile(ms, 0.5)),
    p95Ms: round(quantile(ms, 0.95)),
    maxMs: round(Math.max(...ms)),
    busyRejections,
    errors: errors.length,
    sessions,
    turnsPerSession: turns,
    maxTokens,
    turns: done.length,
    outputTokensPerSec: round((outputTokens * 1000) / wallMs, 1),
    firstTurnP50Ms: round(firsts.length > 0 ? median(firsts) : 0),
    laterTurnP50Ms: round(laters.length > 0 ? median(laters) : 0),
    busyTurns,
    providerBusy,
    providerErrors: providerErrors.length,
    sessionsOpened,
    wallSeconds: round(wallMs / 1000, 2),
    repetitions,
    engine: { threads: defaultThreads(), maxConcurrent: 2, maxQueued: 16, sequencesPerContext: 4, contexts: load_.contexts },
    ...(attacked !== undefined && {
      // Turns the attack cost the provider: served but their voucher never arrived, or not served at all.
      honestLostTurnsUnderAttack: attacked.unpaid + attacked.errors.length,
      honestThroughputRatioUnderAttack: round((attacked.done.length * 1000) / attacked.wallMs / turnsPerSec, 2),
      turnsPerSecUnderAttack: round((attacked.done.length * 1000) / attacked.wallMs, 2),
      p95MsUnderAttack: round(quantile(attacked.done.map((t) => t.ms), 0.95)),
      turnsUnderAttack: attacked.done.length,
      errorsUnderAttack: attacked.errors.length,
      unacknowledgedVouchersUnderAttack: attacked.unpaid,
      busyRejectionsUnderAttack: attacked.busyRejections,
      stalledStreams: stalled,
      attackStreamsOpened,
      attackStreamsRefused: refused,
    }),
  };
  console.log(JSON.stringify(figures));
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
