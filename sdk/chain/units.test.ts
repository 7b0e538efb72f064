import { describe, expect, it } from "vitest";
import { formatUnits } from "ethers";
import { formatUnitsFixed } from "./units.js";

describe("formatUnitsFixed", () => {
  it("keeps every digit and drops only trailing zeros", () => {
    expect(formatUnitsFixed(0n, 6)).toBe("0");
    expect(formatUnitsFixed(2_000_000n, 6)).toBe("2");
    expect(formatUnitsFixed(1_500_000n, 6)).toBe("1.5");
    expect(formatUnitsFixed(1n, 6)).toBe("0.000001");
    expect(formatUnitsFixed(-1_234_567n, 6)).toBe("-1.234567");
    expect(formatUnitsFixed(42n, 0)).toBe("42");
    expect(formatUnitsFixed(10n ** 30n + 1n, 18)).toBe("1000000000000.000000000000000001");
  });

  it("agrees with ethers' formatUnits but for its trailing '.0'", () => {
    for (const units of [0n, 1n, 999_999n, 1_000_000n, 123_456_789_012n, (1n << 96n) - 1n]) {
      expect(formatUnitsFixed(units, 6)).toBe(formatUnits(units, 6).replace(/\.0$/, ""));
    }
  });
});
