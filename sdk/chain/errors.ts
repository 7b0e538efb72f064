import { SoulmeshError } from "../errors.js";

/** No deployment file where one was expected. */
export class DeploymentNotFoundError extends SoulmeshError {
  override readonly name = "DeploymentNotFoundError";
  constructor(readonly path: string) {
    super(
      `No Soulmesh deployment at ${path}. Start a local network with \`soulmesh devnet\` ` +
        `(or \`npm start\`), or pass --deployment FILE (or --home/SOULMESH_HOME).`,
    );
  }
}

/** A deployment file that is not valid JSON or not a deployment. */
export class InvalidDeploymentError extends SoulmeshError {
  override readonly name = "InvalidDeploymentError";
  constructor(
    readonly path: string,
    readonly problems: string[],
  ) {
    super(
      `The deployment at ${path} is not valid: ${problems.join("; ")}. ` +
        `Delete it and run \`soulmesh devnet\` again, or restore it from the deployer's copy.`,
    );
  }
}

/** The RPC endpoint serves another chain than the deployment names. */
export class ChainMismatchError extends SoulmeshError {
  override readonly name = "ChainMismatchError";
  constructor(
    readonly expected: bigint,
    readonly actual: bigint,
    readonly rpcUrl: string,
  ) {
    super(
      `The node at ${rpcUrl} serves chain ${actual}, but the deployment is for chain ${expected}. ` +
        `Use the RPC URL of the chain the contracts were deployed to (--rpc or SOULMESH_RPC_URL), ` +
        `or redeploy with \`soulmesh devnet\`.`,
    );
  }
}

/** The RPC endpoint cannot be reached. */
export class RpcUnreachableError extends SoulmeshError {
  override readonly name = "RpcUnreachableError";
  constructor(
    readonly rpcUrl: string,
    cause?: unknown,
  ) {
    super(
      `Cannot reach the chain at ${rpcUrl}. Is the devnet running? Start it with \`soulmesh devnet\`, ` +
        `or pass the right endpoint with --rpc or SOULMESH_RPC_URL.`,
      { cause },
    );
  }
}

/** Voucher fields out of range: negative, too large for their Solidity type, or not an address. */
export class InvalidVoucherError extends SoulmeshError {
  override readonly name = "InvalidVoucherError";
  constructor(readonly problems: string[]) {
    super(`Invalid voucher: ${problems.join("; ")}.`);
  }
}

/**
 * A contract call reverted with one of the contracts' custom errors (`Escrow__…`, `Agent__…`, …), decoded.
 * `reason` is the custom error's name and `args` its arguments.
 */
export class ContractRevertError extends SoulmeshError {
  override readonly name = "ContractRevertError";
  constructor(
    readonly reason: string,
    readonly args: readonly unknown[],
    readonly hint: string | undefined,
    cause?: unknown,
  ) {
    super(
      `The contract rejected the call: ${reason}(${args.map(String).join(", ")})${hint ? `. ${hint}` : ""}`,
      { cause },
    );
  }
}

/** A deployment step failed. */
export class DeployError extends SoulmeshError {
  override readonly name = "DeployError";
  constructor(
    readonly step: string,
    cause: unknown,
  ) {
    super(
      `Deploying ${step} failed: ${cause instanceof Error ? cause.message : String(cause)}. ` +
        `Check that the deployer account has gas funds and that the RPC URL is right, then deploy again.`,
      { cause },
    );
  }
}
