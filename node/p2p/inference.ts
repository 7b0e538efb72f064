/**
 * The inference protocol (/soulmesh/inference/1.0.0), provider side: one turn of an open session, streamed
 * as InferenceChunk frames and closed by InferenceDone with the wire usage and a receipt signed by the
 * provider. A turn is served only when the session's previous turn is paid for by a voucher, when no other
 * session of the same payer has a turn served and not paid for, and only when its worst case (the whole prompt
 * billed and every token asked for, at the session's full price: provider, royalty and fee) stays within the
 * session's spending cap; the most a payer can take without paying is one turn, across all its sessions.
 */
import type { Signer } from "ethers";
import { sessionCost } from "../../sdk/chain/voucher.js";
import {
  InvalidRequestError,
  ProviderBusyError as EngineBusyError,
  SessionNotFoundError as EngineSessionNotFoundError,
  type InferenceEngine,
  type Prompt as EnginePrompt,
  type StopReason as EngineStopReason,
  type TurnResult,
} from "../engine/index.js";
import {
  hashOutput,
  hashPrompt,
  InsufficientEscrowError,
  InternalError,
  InvalidMessageError,
  MAX_CHUNK_TEXT_CHARS,
  PaymentRequiredError,
  ProtocolError,
  ProviderBusyError,
  SessionExpiredError,
  SessionNotFoundError,
  SessionSupersededError,
  signReceipt,
  UnexpectedMessageError,
  type InferenceChunk,
  type InferenceDone,
  type InferenceRequest,
  type Prompt,
  type Receipt,
  type StopReason,
  type Usage,
} from "../../sdk/protocol/index.js";
import { ProtocolStreamError } from "./errors.js";
import type { ChainClock, ProviderSession, SessionTable } from "./sessions.js";

/** Seconds before a session's expiry from which no turn starts: its voucher must still settle after. */
export const TURN_EXPIRY_MARGIN_SECONDS = 30;

/** A finished turn, as the provider counts it (also when the client went away before the end). */
export interface ServedTurn {
  session: ProviderSession;
  turn: number;
  usage: Usage;
  billedInputTokens: number;
  outputTokens: number;
  ttftMs: number;
  durationMs: number;
  stopReason: StopReason;
  aborted: boolean;
}

/** What the inference protocol needs of the provider. */
export interface InferenceContext {
  engine: InferenceEngine;
  table: SessionTable;
  clock: ChainClock;
  signer: Signer;
  escrow: { chainId: bigint; address: string };
  onServed: (turn: ServedTurn) => void;
  /** Turns still generating; `stop()` waits for them so their tokens are counted. */
  running: Set<Promise<unknown>>;
}

/**
 * The inference protocol's handler: checks the request against its session (in the wire's order), then
 * streams the turn. Tokens generated count as served even when the client goes away mid-stream: the engine
 * is aborted and what it produced is added to the session's totals.
 *
 * @example
 * const serve = inferenceHandler({ engine, table, clock, signer, escrow, onServed, running })
 * await handleProtocol(libp2p, "inference", { handler: (request, { signal }) => serve(request, signal) })
 */
export function inferenceHandler(
  ctx: InferenceContext,
): (request: InferenceRequest, signal: AbortSignal) => AsyncGenerator<InferenceChunk | InferenceDone> {
  return async function* serve(request, signal) {
    const started = performance.now();
    const session = ctx.table.get(request.sessionId);
    if (session === undefined) throw new SessionNotFoundError(`No open session ${request.sessionId} on this provider.`);
    const now = await ctx.clock.now({ signal });
    if (ctx.table.get(request.sessionId) !== session) throw new SessionNotFoundError(`Session ${request.sessionId} was closed.`);
    // Checked and claimed with no await in between: two requests for one session cannot both pass.
    admit(session, request, now, ctx.table);
    const turn = session.nextTurn++;

    const chunks: string[] = [];
    let wake: (() => void) | undefined;
    const abort = new AbortController();
    const turnSignal = AbortSignal.any([signal, abort.signal]);
    let firstChunkAt: number | undefined;
    const generation = ctx.engine.generate(session.sessionId, {
      prompt: enginePrompt(request.prompt),
      sampling: request.sampling,
      maxTokens: request.maxTokens,
      stop: request.stop,
      signal: turnSignal,
      // Once the prompt is tokenized, before anything is evaluated: the worst case with its real input.
      admit: (promptTokens) => checkWorstCase(session, request.maxTokens, BigInt(promptTokens)),
      onChunk: ({ text }) => {
        firstChunkAt ??= performance.now();
        chunks.push(text);
        wake?.();
      },
    });
    // Counted whatever becomes of the stream: the client may be gone long before the engine stops.
    const counted = generation.then(
      (result) => {
        let served: ServedTurn;
        let receipt: Receipt;
        try {
          served = count(session, turn, result, started, firstChunkAt);
          receipt = receiptOf(session, request, turn, result, served.usage);
        } finally {
          session.busy = false;
        }
        ctx.onServed(served);
        return { result, served, receipt };
      },
      (err: unknown) => {
        session.busy = false;
        // Refused at admission, before anything ran: the turn number is given back, so that busy means the
        // same to a client whichever queue was full, and it can send the same turn again on this session.
        if ((err instanceof EngineBusyError || err instanceof InsufficientEscrowError) && session.nextTurn === turn + 1) {
          session.nextTurn = turn;
        }
        throw wireError(err, session);
      },
    );
    let done = false;
    ctx.running.add(counted);
    session.turnDone = counted;
    void counted
      .catch(() => {})
      .finally(() => {
        ctx.running.delete(counted);
        if (session.turnDone === counted) session.turnDone = undefined;
        // An ending session (closed or superseded meanwhile) whose turn served nothing unpaid leaves now.
        session.finishIfPaid();
        done = true;
        wake?.();
      });
    try {
      let index = 0;
      for (;;) {
        // Whatever the engine produced while the last frame was being sent goes out as one frame: under load
        // the stream carries fewer, larger frames instead of falling behind by one frame per token.
        const text = chunks.length > 0 ? chunks.splice(0).join("") : undefined;
        if (text !== undefined) {
          // Engine chunks are a token's text; only a stop sequence held back at the end could be longer.
          for (let at = 0; at < text.length; at += MAX_CHUNK_TEXT_CHARS) {
            yield { type: "inference.chunk", index: index++, text: text.slice(at, at + MAX_CHUNK_TEXT_CHARS) };
          }
          continue;
        }
        if (done) break;
        await new Promise<void>((resolve) => (wake = resolve));
        wake = undefined;
      }
      const { result, served, receipt } = await counted;
      const signature = await signReceipt(ctx.signer, receipt, ctx.escrow);
      yield {
        type: "inference.done",
        usage: served.usage,
        stopReason: stopReasonOf(result.stopReason),
        receipt,
        signature,
      };
    } finally {
      // The consumer stopped early (the stream died, or the provider stops): end the generation.
      abort.abort(new ProtocolStreamError("The inference stream ended before the turn did."));
    }
  };
}

/** The checks of a turn, in the wire's order; on success the session is marked busy. */
function admit(session: ProviderSession, request: InferenceRequest, now: number, table: SessionTable): void {
  if (session.ending === "superseded") {
    throw new SessionSupersededError(
      `Session ${session.sessionId} was replaced by a newer session of the same payer and agent: open a new session.`,
    );
  }
  if (session.ending === "closed") throw new SessionNotFoundError(`Session ${session.sessionId} was closed by its payer.`);
  if (BigInt(now) >= session.expiry - BigInt(TURN_EXPIRY_MARGIN_SECONDS)) {
    throw new SessionExpiredError(
      `Session ${session.sessionId} expires at ${session.expiry}; no turn starts within ${TURN_EXPIRY_MARGIN_SECONDS} s of it. Open a new session.`,
    );
  }
  const adapters = request.adapters.map((a) => a.toLowerCase());
  if (
    request.model.toLowerCase() !== session.modelSha256 ||
    adapters.length !== session.adapterSha256s.length ||
    adapters.some((a, i) => a !== session.adapterSha256s[i])
  ) {
    throw new InvalidMessageError(
      `Session ${session.sessionId} runs model ${session.modelSha256} with adapters [${session.adapterSha256s.join(", ")}]; ` +
        `the request names ${request.model} with [${request.adapters.join(", ")}].`,
    );
  }
  if (request.turn !== session.nextTurn) {
    throw new UnexpectedMessageError(`Session ${session.sessionId} expects turn ${session.nextTurn}, not ${request.turn}.`);
  }
  if (session.busy) {
    throw new ProviderBusyError(`Session ${session.sessionId} is serving a turn; send the next once it is done.`);
  }
  if (session.unpaid) {
    throw new PaymentRequiredError(
      `Session ${session.sessionId} has served ${session.served.inputTokens}/${session.served.outputTokens} input/output ` +
        `tokens but vouchers cover ${session.vouched.inputTokens}/${session.vouched.outputTokens}: send the voucher for turn ` +
        `${session.nextTurn - 1} first.`,
    );
  }
  // Without the prompt's tokens yet (the engine counts them next): already over the cap is refused here.
  checkWorstCase(session, request.maxTokens, 0n);
  // One unpaid turn per payer, not per session: else each of its sessions would be a free turn. A turn still
  // running counts: it will be unpaid when it ends.
  const owing = table.ofPayer(session.payer).find((other) => other !== session && (other.unpaid || other.busy));
  if (owing !== undefined) {
    throw new PaymentRequiredError(
      `Session ${owing.sessionId} of the same payer has ${owing.busy ? "a turn running" : "served a turn"} that no ` +
        `voucher covers yet: send its voucher before a turn of session ${session.sessionId}.`,
    );
  }
  session.busy = true;
}

/**
 * Refuses a turn whose worst case, at the session's full rates (provider, royalty and fee, as the escrow will
 * charge them), would take the session above its spending cap: everything served so far, the prompt's
 * `promptTokens` all billed, and every output token asked for.
 */
function checkWorstCase(session: ProviderSession, maxTokens: number, promptTokens: bigint): void {
  const worst = sessionCost(
    {
      inputTokens: session.served.inputTokens + promptTokens,
      outputTokens: session.served.outputTokens + BigInt(maxTokens),
    },
    session.rates,
  );
  if (worst > session.spendingCap) {
    throw new InsufficientEscrowError(
      `A turn of up to ${maxTokens} tokens${promptTokens > 0n ? ` on a prompt of ${promptTokens}` : ""} could bring session ` +
        `${session.sessionId} to ${worst} (provider, royalty and fee), above its spending cap ${session.spendingCap}. ` +
        `Ask for fewer tokens, send a shorter prompt or open a new session.`,
    );
  }
}

function enginePrompt(prompt: Prompt): EnginePrompt {
  return prompt.kind === "chat" ? { chat: prompt.messages } : { text: prompt.text };
}

/** Adds the turn to the session's served totals and returns its wire figures. */
function count(
  session: ProviderSession,
  turn: number,
  result: TurnResult,
  started: number,
  firstChunkAt: number | undefined,
): ServedTurn {
  const { inputTokens: evaluated, cachedInputTokens, outputTokens } = result.usage;
  session.served = {
    inputTokens: session.served.inputTokens + BigInt(evaluated),
    outputTokens: session.served.outputTokens + BigInt(outputTokens),
  };
  const end = performance.now();
  return {
    session,
    turn,
    // The engine counts evaluated tokens; the wire counts the whole prompt, cached part included.
    usage: { inputTokens: evaluated + cachedInputTokens, cachedInputTokens, outputTokens },
    billedInputTokens: evaluated,
    outputTokens,
    ttftMs: (firstChunkAt ?? end) - started,
    durationMs: end - started,
    stopReason: stopReasonOf(result.stopReason),
    aborted: result.stopReason === "aborted",
  };
}

function receiptOf(session: ProviderSession, request: InferenceRequest, turn: number, result: TurnResult, usage: Usage): Receipt {
  return {
    payer: session.payer,
    provider: session.provider,
    agentId: session.agentId.toString(),
    session: session.session.toString(),
    turn,
    modelSha256: session.modelSha256,
    adapterSha256s: [...session.adapterSha256s],
    promptHash: hashPrompt(request.prompt),
    outputHash: hashOutput(result.text),
    usage,
    cumulativeInputTokens: session.served.inputTokens.toString(),
    cumulativeOutputTokens: session.served.outputTokens.toString(),
  };
}

function stopReasonOf(reason: EngineStopReason): StopReason {
  switch (reason) {
    case "eos":
    case "stop":
      return "stop";
    case "maxTokens":
    case "contextFull":
      return "length";
    case "aborted":
      return "abort";
  }
}

/** The engine's refusals as the wire names them; anything unexpected says nothing of itself. */
function wireError(err: unknown, session: ProviderSession): ProtocolError {
  if (err instanceof ProtocolError) return err;
  if (err instanceof EngineBusyError) return new ProviderBusyError(err.message);
  if (err instanceof InvalidRequestError) return new InvalidMessageError(err.message);
  if (err instanceof EngineSessionNotFoundError) return new SessionNotFoundError(`Session ${session.sessionId} was closed.`);
  return new InternalError("The provider failed to serve the turn.", { cause: err });
}
