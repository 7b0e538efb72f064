// Browser-safe: the CLI and the creator dashboard both read what their transactions emitted.
import type { Addressable, Interface, Log, LogDescription } from "ethers";

/**
 * The first of `logs` that `contract` emitted as `event` (and that `where` accepts), decoded. Logs of other
 * contracts are skipped, those with the same event signature included (an ERC-20's and an ERC-721's Transfer
 * share their topic).
 *
 * @example
 * const created = findEvent(registry, receipt.logs, "PersonaCreated")
 * const personaId = created?.args.personaId as bigint
 */
export function findEvent(
  contract: { interface: Interface; target: string | Addressable },
  logs: readonly Log[],
  event: string,
  where?: (parsed: LogDescription) => boolean,
): LogDescription | undefined {
  const address = typeof contract.target === "string" ? contract.target.toLowerCase() : undefined;
  for (const log of logs) {
    if (address !== undefined && log.address.toLowerCase() !== address) continue;
    let parsed: LogDescription | null;
    try {
      parsed = contract.interface.parseLog(log);
    } catch {
      continue;
    }
    if (parsed?.name === event && (where === undefined || where(parsed))) return parsed;
  }
  return undefined;
}
