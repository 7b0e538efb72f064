/**
 * Browser plumbing for the dashboard's tests: Debian's Chromium through playwright-core, one context per
 * test with its page errors collected, a full-page screenshot per test, and readers for the page's
 * data-testid contract (amounts as raw integers in data-units).
 */
import { existsSync } from "node:fs";
import { mkdir } from "node:fs/promises";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { formatUnits } from "ethers";
import { chromium } from "playwright-core";
import type { Browser, BrowserContext, Locator, Page } from "playwright-core";

/** The Chromium the tests drive: $SOULMESH_CHROMIUM, else Debian's. */
export const CHROMIUM = process.env.SOULMESH_CHROMIUM ?? "/usr/bin/chromium";

/** Why the suite cannot run when Chromium is missing, and what to do. */
export const CHROMIUM_MISSING =
  `Chromium was not found at ${CHROMIUM}. Install Debian's with \`apt-get install chromium\` ` +
  "(or point SOULMESH_CHROMIUM at a Chromium binary) to run the dashboard's browser tests.";

const repoRoot = fileURLToPath(new URL("../..", import.meta.url));

/** Where the screenshots go, kept as test artifacts. */
export const SCREENSHOT_DIR = join(repoRoot, "test-results", "dashboard");

/** Whether the Chromium binary exists. */
export function hasChromium(): boolean {
  return existsSync(CHROMIUM);
}

/**
 * Launches headless Chromium with everything that would reach the internet turned off.
 *
 * @example
 * const browser = await launchChromium()
 */
export function launchChromium(): Promise<Browser> {
  return chromium.launch({
    executablePath: CHROMIUM,
    args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"],
  });
}

/** What went wrong in a page while a test ran. */
export interface PageProblems {
  /** Uncaught exceptions in the page. */
  pageErrors: string[];
  /** console.error messages. */
  consoleErrors: string[];
  /** Requests that failed at the network level (not HTTP error statuses). */
  failedRequests: string[];
}

/** Options of {@link withPage}. */
export interface WithPageOptions {
  /** console.error messages expected in this test (e.g. the browser's log of a 400 response). */
  allowConsole?: RegExp;
  /** JavaScript run in the page before any of its own (e.g. an injected wallet). */
  initScript?: string;
}

/**
 * Runs `body` on a fresh page in its own context, saves a full-page screenshot as
 * test-results/dashboard/<name>.png whatever happens, and fails on any page error.
 *
 * @example
 * it("shows figures", () => withPage(browser, "figures", async (page) => { await page.goto(url) }))
 */
export async function withPage(
  browser: Browser,
  name: string,
  body: (page: Page, context: BrowserContext) => Promise<void>,
  options: WithPageOptions = {},
): Promise<void> {
  const context = await browser.newContext({ locale: "en-US", timezoneId: "UTC", viewport: { width: 1280, height: 900 } });
  context.setDefaultTimeout(20_000);
  const problems: PageProblems = { pageErrors: [], consoleErrors: [], failedRequests: [] };
  if (options.initScript !== undefined) await context.addInitScript(options.initScript);
  const page = await context.newPage();
  page.on("pageerror", (err) => problems.pageErrors.push(String(err.stack ?? err)));
  page.on("console", (msg) => {
    const text = `${msg.text()} (${msg.location().url})`;
    // Chromium asks for /favicon.ico on its own; the server's 404 for it is no error of the page.
    if (msg.type() !== "error" || /\/favicon\.ico\)$/.test(text)) return;
    if (!(options.allowConsole?.test(text) ?? false)) problems.consoleErrors.push(text);
  });
  page.on("requestfailed", (req) => problems.failedRequests.push(`${req.method()} ${req.url()}: ${req.failure()?.errorText}`));
  try {
    await body(page, context);
  } finally {
    const path = join(SCREENSHOT_DIR, `${name}.png`);
    await mkdir(dirname(path), { recursive: true });
    await page.screenshot({ path, fullPage: true }).catch(() => {});
    await context.close();
  }
  const all = [...problems.pageErrors, ...problems.consoleErrors, ...problems.failedRequests];
  if (all.length > 0) throw new Error(`The page reported problems:\n${all.join("\n")}`);
}

/** The raw integer of an element's data-units. */
export async function unitsOf(locator: Locator): Promise<bigint> {
  const units = await locator.getAttribute("data-units");
  if (units === null || !/^-?\d+$/.test(units)) throw new Error(`data-units of ${locator} is ${JSON.stringify(units)}, not an integer`);
  return BigInt(units);
}

/** The numbers written in a text, as written. */
function numbersIn(text: string): string[] {
  return text.match(/\d[\d,]*(?:\.\d+)?/g) ?? [];
}

/** Throws unless `text` shows `units` token units exactly as formatUnits does. */
export function checkAmountText(text: string, units: bigint, decimals: number, what: string): void {
  const want = formatUnits(units, decimals);
  // formatUnits gives "2.0" for whole amounts; a page that writes "2" is exact too, but not "2.00…1" rounded.
  const accepted = new Set([want, want.replace(/\.0$/, "")]);
  if (!numbersIn(text).some((n) => accepted.has(n.replace(/,/g, "")))) {
    throw new Error(`${what} reads "${text}", which does not show ${want} (${units} units)`);
  }
}

/** Throws unless `text` shows the count `value` with en-US thousands separators. */
export function checkCountText(text: string, value: bigint | number, what: string): void {
  const want = BigInt(value).toLocaleString("en-US");
  if (!numbersIn(text).includes(want)) throw new Error(`${what} reads "${text}", which does not show ${want}`);
}
