// Reading Prometheus text exposition in tests (not a test file itself).

/** Samples by `name{label="v",…}` (labels sorted) → value; a sample without labels is keyed by its name. */
export type Samples = Map<string, number>;

/**
 * Parses the text format (version 0.0.4): every sample line, comments skipped. Throws on a line it cannot
 * read, so that a malformed exposition fails the test.
 *
 * @example
 * const samples = parseExposition(await (await fetch(url)).text())
 * samples.get('soulmesh_turns_total{stop_reason="length"}')
 */
export function parseExposition(text: string): Samples {
  const samples: Samples = new Map();
  for (const line of text.split("\n")) {
    if (line === "" || line.startsWith("#")) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)( \d+)?$/.exec(line);
    if (!m) throw new Error(`not a Prometheus sample line: ${line}`);
    const labels = m[3] === undefined || m[3] === "" ? [] : [...m[3].matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)].map((x) => `${x[1]}="${x[2]}"`);
    labels.sort();
    const key = labels.length === 0 ? m[1]! : `${m[1]}{${labels.join(",")}}`;
    const value = m[4] === "+Inf" ? Infinity : m[4] === "-Inf" ? -Infinity : Number(m[4]);
    // prom-client writes NaN as "Nan"; Prometheus parses floats case-insensitively.
    if (Number.isNaN(value) && m[4]!.toLowerCase() !== "nan") throw new Error(`bad value in: ${line}`);
    samples.set(key, value);
  }
  return samples;
}

/** A sample's value, failing loudly when it is absent. */
export function sample(samples: Samples, key: string): number {
  const value = samples.get(key);
  if (value === undefined) {
    const near = [...samples.keys()].filter((k) => k.startsWith(key.split("{")[0]!)).join("\n  ");
    throw new Error(`no sample ${key}; samples of that name:\n  ${near}`);
  }
  return value;
}
