import { SoulmeshError } from "../errors.js";

/**
 * The base of every error that may cross the wire. Its `name` is the wire `code`; `retryable` tells the
 * other side whether the same request may succeed later (or elsewhere) unchanged.
 *
 * @example
 * if (err instanceof ProtocolError && err.retryable) return retryWithAnotherProvider()
 */
export abstract class ProtocolError extends SoulmeshError {
  /** Whether the same request may succeed if sent again later or to another provider. */
  readonly retryable: boolean = false;
}

/** A frame declares a length above the limit; refused before its body is read or allocated. */
export class FrameTooLargeError extends ProtocolError {
  override readonly name = "FrameTooLargeError";
}

/** Bytes that are not a frame: bad varint, empty or truncated frame, body not UTF-8 or not JSON. */
export class MalformedFrameError extends ProtocolError {
  override readonly name = "MalformedFrameError";
}

/** A well-formed frame whose JSON is not the message expected; `issues` lists what is wrong, briefly. */
export class InvalidMessageError extends ProtocolError {
  override readonly name = "InvalidMessageError";
  constructor(
    message: string,
    readonly issues: string[] = [],
    options?: ErrorOptions,
  ) {
    super(message, options);
  }
}

/** A valid message that the protocol does not allow at this point (e.g. a chunk before a request). */
export class UnexpectedMessageError extends ProtocolError {
  override readonly name = "UnexpectedMessageError";
}

/** A signature (session request, receipt, voucher) that does not recover to the party it must. */
export class InvalidSignatureError extends ProtocolError {
  override readonly name = "InvalidSignatureError";
}

/** The payer's escrow balance does not cover the spending cap (or the next turn). */
export class InsufficientEscrowError extends ProtocolError {
  override readonly name = "InsufficientEscrowError";
}

/** The persona (or agent) is not registered on chain, or not usable with this provider's models. */
export class PersonaUnavailableError extends ProtocolError {
  override readonly name = "PersonaUnavailableError";
}

/** The session id names no open session on this provider. */
export class SessionNotFoundError extends ProtocolError {
  override readonly name = "SessionNotFoundError";
}

/** The session (or the request) expired. */
export class SessionExpiredError extends ProtocolError {
  override readonly name = "SessionExpiredError";
}

/** The provider serves the next turn only once the last one is paid for by a voucher. */
export class PaymentRequiredError extends ProtocolError {
  override readonly name = "PaymentRequiredError";
}

/**
 * A turn (or a close) names a session that a newer session of the same channel (payer, provider, agent) has
 * replaced: its vouchers could no longer settle once the newer one's do, so the provider serves no turn on it.
 * The client opens a new session and sends the turn there.
 */
export class SessionSupersededError extends ProtocolError {
  override readonly name = "SessionSupersededError";
}

/** A session.close from a libp2p peer other than the one that opened the session: nothing changes. */
export class NotSessionOpenerError extends ProtocolError {
  override readonly name = "NotSessionOpenerError";
}

/**
 * A session open numbered at or below the highest session number the provider has seen or settled on the
 * channel: answered as SessionRejected with this code and `latestSession`.
 */
export class SessionNumberTooLowError extends ProtocolError {
  override readonly name = "SessionNumberTooLowError";
  override readonly retryable = true;
  constructor(
    message: string,
    /** The highest number the provider knows on the channel. */
    readonly latestSession: bigint = 0n,
  ) {
    super(message);
  }
}

/** The provider's queue is full; another provider, or the same one later, may serve the request. */
export class ProviderBusyError extends ProtocolError {
  override readonly name = "ProviderBusyError";
  override readonly retryable = true;
}

/** The request took too long on the provider. */
export class ProtocolTimeoutError extends ProtocolError {
  override readonly name = "ProtocolTimeoutError";
  override readonly retryable = true;
}

/** An unexpected failure on the other side; deliberately says nothing more (no stack, no message). */
export class InternalError extends ProtocolError {
  override readonly name = "InternalError";
  override readonly retryable = true;
}

/** An error code this version does not know (a newer peer); `code` and `retryable` are the peer's. */
export class UnknownRemoteError extends ProtocolError {
  override readonly name = "UnknownRemoteError";
  override readonly retryable: boolean;
  constructor(
    readonly code: string,
    message: string,
    retryable: boolean,
  ) {
    super(message);
    this.retryable = retryable;
  }
}

/**
 * A request could not be carried to the peer or back: the dial failed, or the stream was reset before a
 * complete answer came. Errors the peer answered with are rebuilt by errorFromWire instead. Local only:
 * never sent on the wire.
 */
export class ProtocolStreamError extends SoulmeshError {
  override readonly name = "ProtocolStreamError";
}

/** Constructors of the errors that travel under their own code, keyed by that code. */
export const WIRE_ERRORS = {
  FrameTooLargeError,
  MalformedFrameError,
  InvalidMessageError,
  UnexpectedMessageError,
  InvalidSignatureError,
  InsufficientEscrowError,
  PersonaUnavailableError,
  SessionNotFoundError,
  SessionExpiredError,
  SessionSupersededError,
  NotSessionOpenerError,
  SessionNumberTooLowError,
  PaymentRequiredError,
  ProviderBusyError,
  ProtocolTimeoutError,
  InternalError,
} as const satisfies Record<string, new (message: string) => ProtocolError>;

/** A code in {@link WIRE_ERRORS}. */
export type WireErrorCode = keyof typeof WIRE_ERRORS;
