/**
 * The base of every error Soulmesh throws on purpose. Each failure has its own subclass whose `name` is
 * stable (code may switch on it, across processes and the wire), and whose message says what to do next.
 *
 * @example
 * try { await readDeployment(path) } catch (err) {
 *   if (err instanceof SoulmeshError && err.name === "DeploymentNotFoundError") console.error(err.message)
 * }
 */
export abstract class SoulmeshError extends Error {
  abstract override readonly name: string;

  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
  }
}
