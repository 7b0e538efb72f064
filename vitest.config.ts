import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts", "sdk/**/*.test.ts", "node/**/*.test.ts", "cli/**/*.test.ts"],
    testTimeout: 120_000,
    hookTimeout: 120_000,
    // Two cores: keep test files from fighting over them.
    maxWorkers: 2,
    reporters: process.env.CI ? ["default"] : ["default"],
  },
});
