#!/usr/bin/env node
// `npm test`: compiles the contracts, builds the dashboard, type-checks, runs the Solidity tests (Hardhat) and the TypeScript
// tests (vitest), then prints one closing line, "Soulmesh: N passed, N failed", counting both suites.
// Extra arguments go to vitest (e.g. `npm test -- test/chain`).
import { spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const bin = (name) => join("node_modules", ".bin", name);

/** Runs a command, streaming its output, and resolves with its exit code and everything it printed. */
function run(cmd, args) {
  return new Promise((resolve) => {
    process.stderr.write(`\n> ${cmd} ${args.join(" ")}\n`);
    const child = spawn(cmd, args, { stdio: ["ignore", "pipe", "pipe"] });
    let output = "";
    child.stdout.on("data", (d) => {
      output += d;
      process.stdout.write(d);
    });
    child.stderr.on("data", (d) => {
      output += d;
      process.stderr.write(d);
    });
    child.on("close", (code) => resolve({ code: code ?? 1, output }));
  });
}

const extra = process.argv.slice(2);
const counts = { passed: 0, failed: 0, skipped: 0 };
let ok = true;

const build = await run(bin("hardhat"), ["build", "--quiet"]);
if (build.code !== 0) {
  console.log("Soulmesh: 0 passed, 1 failed (contracts did not compile)");
  process.exit(1);
}
// The dashboard's browser tests drive the built page: build it from the sources under test.
const dashboard = await run(bin("vite"), ["build", "--config", "dashboard/vite.config.ts", "--logLevel", "warn"]);
if (dashboard.code !== 0) {
  console.log("Soulmesh: 0 passed, 1 failed (the dashboard did not build)");
  process.exit(1);
}
const typecheck = await run(bin("tsc"), ["--noEmit", "-p", "tsconfig.json"]);
if (typecheck.code !== 0) {
  console.log("Soulmesh: 0 passed, 1 failed (type errors)");
  process.exit(1);
}

if (extra.length === 0) {
  const sol = await run(bin("hardhat"), ["test", "solidity", "--no-compile"]);
  const passing = Number(/(\d+) passing/.exec(sol.output)?.[1] ?? 0);
  const failing = Number(/(\d+) failing/.exec(sol.output)?.[1] ?? 0);
  counts.passed += passing;
  counts.failed += failing + (sol.code !== 0 && failing === 0 ? 1 : 0);
  ok &&= sol.code === 0;
}

const dir = mkdtempSync(join(tmpdir(), "soulmesh-vitest-"));
const report = join(dir, "vitest.json");
const ts = await run(bin("vitest"), [
  "run",
  "--reporter=default",
  "--reporter=json",
  `--outputFile.json=${report}`,
  ...extra,
]);
try {
  const r = JSON.parse(readFileSync(report, "utf8"));
  counts.passed += r.numPassedTests;
  counts.failed += r.numFailedTests;
  counts.skipped += r.numPendingTests + (r.numTodoTests ?? 0);
  if (ts.code !== 0 && r.numFailedTests === 0) counts.failed += 1;
} catch {
  counts.failed += 1;
}
rmSync(dir, { recursive: true, force: true });
ok &&= ts.code === 0;

console.log(`\nSoulmesh: ${counts.passed} passed, ${counts.failed} failed, ${counts.skipped} skipped`);
process.exit(ok && counts.failed === 0 ? 0 : 1);
