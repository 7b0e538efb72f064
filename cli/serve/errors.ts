import { SoulmeshError } from "../../sdk/errors.js";

/** OpenAI's error `type`s the gateway answers with. */
export type OpenAiErrorType = "invalid_request_error" | "authentication_error" | "insufficient_quota" | "rate_limit_error" | "server_error";

/**
 * A request the gateway answers with an error in OpenAI's shape (`{ error: { message, type, code, param } }`).
 * Nothing was sent to the agent, or it was and nothing was recorded or paid.
 */
export class OpenAiRequestError extends SoulmeshError {
  override readonly name = "OpenAiRequestError";
  constructor(
    readonly status: number,
    readonly type: OpenAiErrorType,
    readonly code: string,
    message: string,
    readonly param: string | null = null,
    options?: ErrorOptions,
  ) {
    super(message, options);
  }
}

/** The gateway's port could not be listened on (in use, or not allowed). Nothing was started. */
export class GatewayListenError extends SoulmeshError {
  override readonly name = "GatewayListenError";
  constructor(
    readonly host: string,
    readonly port: number,
    cause: unknown,
  ) {
    const code = (cause as { code?: unknown } | null)?.code;
    super(
      `Cannot listen on ${host}:${port}${code === "EADDRINUSE" ? " (the port is in use)" : code === "EACCES" ? " (not allowed)" : ""}: ` +
        "pick another port with --port, or --port 0 for a free one.",
      { cause },
    );
  }
}

/** Options of the gateway that cannot work; nothing was started. */
export class InvalidGatewayOptionsError extends SoulmeshError {
  override readonly name = "InvalidGatewayOptionsError";
  constructor(readonly problems: string[]) {
    super(`Invalid gateway options: ${problems.join("; ")}.`);
  }
}

/** The provider failed mid-reply and the turn restarted elsewhere, after part of the reply was already streamed. */
export class ReplyRestartedError extends SoulmeshError {
  override readonly name = "ReplyRestartedError";
  constructor(readonly provider: string) {
    super(
      `Provider ${provider} failed in the middle of the reply, after part of it was streamed: the turn was cancelled ` +
        "(nothing recorded; the part delivered paid) rather than stream a second, different reply after the first. Send the message again.",
    );
  }
}

/** The client went away before its reply was complete; its turn was cancelled (nothing recorded; the part delivered paid). */
export class ClientDisconnectedError extends SoulmeshError {
  override readonly name = "ClientDisconnectedError";
  constructor() {
    super("The client disconnected before the reply was complete: the turn was cancelled: nothing recorded, and only the part delivered paid.");
  }
}

/** The gateway shut down while the request waited or streamed; its turn was cancelled (nothing recorded; the part delivered paid). */
export class GatewayClosedError extends SoulmeshError {
  override readonly name = "GatewayClosedError";
  constructor() {
    super("The gateway is shutting down: the turn was cancelled: nothing recorded, and only the part delivered paid. Send it again once `soulmesh serve` runs again.");
  }
}
