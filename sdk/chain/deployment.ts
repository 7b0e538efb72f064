import { mkdir, readFile, rename, writeFile } from "node:fs/promises";
import { homedir } from "node:os";
import { dirname, join } from "node:path";
import { getAddress, isAddress } from "ethers";
import { z } from "zod";
import { DeploymentNotFoundError, InvalidDeploymentError } from "./errors.js";

const address = z.string().refine((s) => isAddress(s), "not an address").transform((s) => getAddress(s));
const uint = z.string().regex(/^\d+$/, "not an unsigned integer");

/**
 * The deployment file's schema: where Soulmesh's contracts live on a chain, and with which parameters.
 * Format 2 is the escrow with lanes and vouchers that carry royalty and fee; a format 1 file names contracts
 * this code cannot talk to, and is refused.
 */
export const deploymentSchema = z.object({
  format: z.literal("soulmesh-deployment/2"),
  chainId: z.number().int().positive(),
  rpcUrl: z.string().url(),
  deployedAt: z.string(),
  /** The block before the first deployment transaction: log queries start here. */
  startBlock: z.number().int().nonnegative(),
  contracts: z.object({
    token: address,
    providerRegistry: address,
    personaRegistry: address,
    agentRegistry: address,
    inferenceEscrow: address,
  }),
  token: z.object({ name: z.string(), symbol: z.string(), decimals: z.number().int().min(0).max(36) }),
  parameters: z.object({
    maxVoucherLifetime: z.number().int().positive(),
    withdrawalDelay: z.number().int().positive(),
    royaltyDelay: z.number().int().positive(),
    unbondingDelay: z.number().int().nonnegative(),
    minStake: uint,
    maxRoyaltyPerMillion: uint,
    protocolFeeBps: z.number().int().min(0).max(1000),
    treasury: address,
    owner: address,
  }),
  /** Only on a local devnet: its funded accounts, whose keys are public test keys. */
  devAccounts: z
    .array(z.object({ address, privateKey: z.string().regex(/^0x[0-9a-fA-F]{64}$/), label: z.string() }))
    .optional(),
  /** Only on a local devnet: the process serving the chain. */
  pid: z.number().int().positive().optional(),
});

/** Where Soulmesh's contracts live on a chain, and with which parameters. */
export type Deployment = z.infer<typeof deploymentSchema>;

/**
 * Soulmesh's data folder: `$SOULMESH_HOME`, else `~/.soulmesh`.
 *
 * @example
 * soulmeshHome() // "/home/ada/.soulmesh"
 */
export function soulmeshHome(env: NodeJS.ProcessEnv = process.env): string {
  return env.SOULMESH_HOME && env.SOULMESH_HOME.length > 0 ? env.SOULMESH_HOME : join(homedir(), ".soulmesh");
}

/**
 * The path of the local devnet's deployment file in `home`.
 *
 * @example
 * devnetDeploymentPath("/tmp/sm") // "/tmp/sm/devnet.json"
 */
export function devnetDeploymentPath(home: string = soulmeshHome()): string {
  return join(home, "devnet.json");
}

/**
 * Validates a parsed deployment document.
 *
 * @example
 * const deployment = parseDeployment(JSON.parse(text), "devnet.json")
 * @throws InvalidDeploymentError listing every problem found.
 */
export function parseDeployment(value: unknown, source = "<input>"): Deployment {
  const result = deploymentSchema.safeParse(value);
  if (!result.success) {
    throw new InvalidDeploymentError(
      source,
      result.error.issues.map((i) => `${i.path.join(".") || "(root)"}: ${i.message}`),
    );
  }
  return result.data;
}

/**
 * Reads and validates a deployment file.
 *
 * @example
 * const deployment = await readDeployment(devnetDeploymentPath())
 * @throws DeploymentNotFoundError when the file does not exist; InvalidDeploymentError when it is not one.
 */
export async function readDeployment(path: string, options: { signal?: AbortSignal } = {}): Promise<Deployment> {
  let text: string;
  try {
    text = await readFile(path, { encoding: "utf8", signal: options.signal });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") throw new DeploymentNotFoundError(path);
    throw err;
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    throw new InvalidDeploymentError(path, [`not JSON (${(err as Error).message})`]);
  }
  return parseDeployment(json, path);
}

/**
 * Writes a deployment file atomically (a reader never sees half a file), creating its folder.
 *
 * @example
 * await writeDeployment(devnetDeploymentPath(home), deployment)
 */
export async function writeDeployment(path: string, deployment: Deployment): Promise<void> {
  const valid = parseDeployment(deployment, path);
  await mkdir(dirname(path), { recursive: true });
  const tmp = `${path}.${process.pid}.tmp`;
  await writeFile(tmp, `${JSON.stringify(valid, null, 2)}\n`, { mode: 0o600 });
  await rename(tmp, path);
}
