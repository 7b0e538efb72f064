#!/usr/bin/env node
// The `soulmesh` command. Soulmesh is written in TypeScript and runs through tsx, so that no build step
// stands between a checkout and a running network.
const [major, minor] = process.versions.node.split(".").map(Number);
if (major < 22 || (major === 22 && minor < 13)) {
  console.error(
    `soulmesh needs Node.js 22.13 or newer; this is ${process.version}. ` +
      "Install a current Node.js (https://nodejs.org or your package manager) and run it again.",
  );
  process.exit(1);
}
const { register } = await import("tsx/esm/api");
register();
await import("../main.ts");
