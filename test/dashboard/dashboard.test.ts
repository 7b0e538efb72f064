/**
 * The creator dashboard end to end: the built page in Debian's Chromium, served by the dashboard server over
 * a real devnet (EDR over HTTP) and a real Helia node, seeded with usage. Every figure is checked against
 * the contracts read directly (test/dashboard/expected.ts), not against the report code the page uses.
 * Screenshots: test-results/dashboard/<test>.png.
 */
import { createHash } from "node:crypto";
import { existsSync } from "node:fs";
import { cp, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { formatUnits, getAddress, parseUnits, toBeHex } from "ethers";
import type { Browser, Page } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startDevnet } from "../../cli/devnet/devnet.js";
import type { Devnet } from "../../cli/devnet/devnet.js";
import { startDashboardServer } from "../../cli/dashboard/server.js";
import { formatUnitsFixed } from "../../sdk/chain/units.js";
import { readPersona } from "../../sdk/memory/persona/publish.js";
import { createHeliaBlockStore } from "../../sdk/vault/block-store.js";
import type { HeliaBlockStore } from "../../sdk/vault/block-store.js";
import { removeTinyFixtures, tinyFixtures } from "../fixtures/gguf/llama.js";
import type { TinyFixtures } from "../fixtures/gguf/llama.js";
import { CHROMIUM_MISSING, checkAmountText, checkCountText, hasChromium, launchChromium, unitsOf, withPage } from "./browser.js";
import { expectedReport } from "./expected.js";
import type { ExpectedReport } from "./expected.js";
import { cardJson, seedUsage, USD } from "./seed.js";
import type { Seeded } from "./seed.js";

const distDir = fileURLToPath(new URL("../../dashboard/dist", import.meta.url));
const chromiumPresent = hasChromium();
if (!chromiumPresent) console.warn(CHROMIUM_MISSING);

/** The token's decimals (tUSD). */
const DECIMALS = 6;

let home: string;
let devnet: Devnet;
let store: HeliaBlockStore;
let fx: TinyFixtures;
let seeded: Seeded;
let server: { url: string; port: number; close(): Promise<void> };
let browser: Browser;
let creator: string;

/** Every JSON-RPC call in a /rpc request body (single or batch). */
function rpcCalls(body: string | null): { method: string; params: unknown[] }[] {
  if (body === null) return [];
  try {
    const parsed = JSON.parse(body) as unknown;
    return (Array.isArray(parsed) ? parsed : [parsed]) as { method: string; params: unknown[] }[];
  } catch {
    return [];
  }
}

/** Records the JSON-RPC methods the page sends to /rpc. */
function recordRpc(page: Page): { method: string; params: unknown[] }[] {
  const calls: { method: string; params: unknown[] }[] = [];
  page.on("request", (req) => {
    if (req.method() === "POST" && new URL(req.url()).pathname === "/rpc") calls.push(...rpcCalls(req.postData()));
  });
  return calls;
}

/** Waits for the report to be ready (at `minBlock` or later); throws the page's error when it shows one. */
async function waitReady(page: Page, minBlock = 0): Promise<number> {
  const handle = await page.waitForFunction(
    (min) => {
      const status = document.querySelector('[data-testid="report-status"]');
      const state = status?.getAttribute("data-state");
      if (state === "error") return "error";
      const block = Number(document.querySelector('[data-testid="report-block"]')?.getAttribute("data-block") ?? NaN);
      return state === "ready" && block >= min ? "ready" : false;
    },
    minBlock,
    { polling: 50 },
  );
  if ((await handle.jsonValue()) === "error") {
    const banner = page.getByTestId("error");
    throw new Error(`The report failed: ${await banner.getAttribute("data-error-name")}: ${await banner.textContent()}`);
  }
  return Number(await page.getByTestId("report-block").getAttribute("data-block"));
}

/** Opens the page and connects with the dev account `account` ("creator" by default). */
async function connectAsCreator(page: Page, account: string = creator): Promise<number> {
  await page.goto(server.url);
  await page.getByTestId("dev-account-select").selectOption(account);
  await page.getByTestId("dev-account-connect").click();
  await expectText(page.getByTestId("connected-address"), account);
  return waitReady(page);
}

async function expectText(locator: ReturnType<Page["getByTestId"]>, text: string): Promise<void> {
  await locator.filter({ hasText: text }).waitFor();
  expect((await locator.textContent())?.trim()).toContain(text);
}

/** Waits for tx-status to settle on a transaction; returns its hash. Throws when it failed. */
async function waitTx(page: Page, previousHash?: string | null): Promise<string> {
  await page.waitForFunction(
    (prev) => {
      const s = document.querySelector('[data-testid="tx-status"]');
      const state = s?.getAttribute("data-state");
      return (state === "confirmed" || state === "failed") && s?.getAttribute("data-tx-hash") !== prev ? true : false;
    },
    previousHash ?? null,
    { polling: 50 },
  );
  const status = page.getByTestId("tx-status");
  if ((await status.getAttribute("data-state")) === "failed") throw new Error(`The transaction failed: ${await status.textContent()}`);
  const hash = await status.getAttribute("data-tx-hash");
  expect(hash).toMatch(/^0x[0-9a-f]{64}$/i);
  return hash!;
}

/** Waits for the persona's scheduled-royalty element to show `value`. */
async function waitScheduled(page: Page, personaId: bigint, value: bigint): Promise<void> {
  await page
    .locator(`[data-testid="persona"][data-persona-id="${personaId}"] [data-testid="persona-royalty-scheduled"][data-units="${value}"]`)
    .waitFor();
}

/** Every data-units on the page by test id (with the persona it belongs to), to compare two renderings. */
async function allFigures(page: Page): Promise<string[]> {
  return page.evaluate(() =>
    Array.from(document.querySelectorAll("[data-units]")).map((n) => {
      const persona = n.closest('[data-testid="persona"]')?.getAttribute("data-persona-id") ?? "-";
      const extra = ["data-day", "data-provider", "data-input-tokens", "data-output-tokens", "data-effective-at"]
        .map((a) => n.getAttribute(a) ?? "")
        .join("/");
      return `${persona}:${n.getAttribute("data-testid")}:${extra}=${n.getAttribute("data-units")}`;
    }),
  );
}

async function checkAmount(locator: ReturnType<Page["getByTestId"]>, want: bigint, what: string): Promise<void> {
  expect(await unitsOf(locator), what).toBe(want);
  checkAmountText((await locator.textContent()) ?? "", want, DECIMALS, what);
}

async function checkCount(locator: ReturnType<Page["getByTestId"]>, want: bigint | number, what: string): Promise<void> {
  expect(await unitsOf(locator), what).toBe(BigInt(want));
  checkCountText((await locator.textContent()) ?? "", want, what);
}

/** Checks every figure the page shows, connected as `account`, against `want`. */
async function checkFigures(page: Page, want: ExpectedReport, account: string = creator): Promise<void> {
  await checkAmount(page.getByTestId("earnings-pending"), want.pending, "pending earnings");
  await checkAmount(page.getByTestId("earnings-withdrawn"), want.withdrawn, "withdrawn earnings");
  await checkAmount(page.getByTestId("total-revenue"), want.revenue, "total revenue");
  await checkCount(page.getByTestId("total-input-tokens"), want.inputTokens, "total input tokens");
  await checkCount(page.getByTestId("total-output-tokens"), want.outputTokens, "total output tokens");
  await checkCount(page.getByTestId("total-agents-adopted"), want.agentsAdopted, "agents adopted");

  const shown = await page.getByTestId("persona").evaluateAll((ns) => ns.map((n) => n.getAttribute("data-persona-id")));
  expect(shown.map((id) => BigInt(id!)).sort((a, b) => (a < b ? -1 : 1))).toEqual([...want.personas.keys()]);
  for (const [id, p] of want.personas) {
    const card = page.locator(`[data-testid="persona"][data-persona-id="${id}"]`);
    const at = (testId: string) => card.getByTestId(testId);
    const label = (what: string) => `persona ${id} ${what}`;
    await checkCount(at("persona-agents-adopted"), p.agentsAdopted, label("agents adopted"));
    await checkAmount(at("persona-adoption-price"), p.adoptionPrice, label("adoption price"));
    await checkAmount(at("persona-adoption-revenue"), p.adoptionRevenue, label("adoption revenue"));
    await checkCount(at("persona-input-tokens"), p.inputTokens, label("input tokens"));
    await checkCount(at("persona-output-tokens"), p.outputTokens, label("output tokens"));
    await checkAmount(at("persona-revenue"), p.revenue, label("revenue"));
    await checkAmount(at("persona-royalty-now"), p.royaltyNow, label("royalty now"));
    const scheduled = at("persona-royalty-scheduled");
    if (p.scheduled === undefined) {
      expect(await scheduled.count(), label("has no scheduled royalty")).toBe(0);
    } else {
      await checkAmount(scheduled, p.scheduled.value, label("scheduled royalty"));
      expect(Number(await scheduled.getAttribute("data-effective-at")), label("effectiveAt")).toBe(p.scheduled.effectiveAt);
      // "in 1 h 0 min"-style relative time next to the local date-time.
      expect(await scheduled.textContent(), label("scheduled text")).toMatch(/\bin \d+ ?(d|h|min)\b/);
    }
    // Only the holder is told nothing about the holder, and only the holder may change the royalty.
    if (getAddress(p.holder) === getAddress(account)) {
      expect(await at("persona-holder").count(), label("has no holder notice")).toBe(0);
      expect(await at("royalty-input").count(), label("has a royalty form")).toBe(1);
    } else {
      expect(await at("persona-holder").count(), label("has a holder notice")).toBe(1);
      expect(await at("persona-holder").textContent(), label("names its holder")).toContain(getAddress(p.holder));
      expect(await at("royalty-input").count(), label("has no royalty form")).toBe(0);
    }

    const days = await at("persona-revenue-day").evaluateAll((ns) =>
      ns.map((n) => [n.getAttribute("data-day"), n.getAttribute("data-units"), (n as HTMLElement).innerText] as const),
    );
    expect(new Map(days.map(([d, u]) => [d, BigInt(u!)])), label("revenue by day")).toEqual(p.byDay);
    for (const [day, units, text] of days) checkAmountText(text, BigInt(units!), DECIMALS, label(`revenue on ${day}`));

    const providers = await at("persona-top-provider").evaluateAll((ns) =>
      ns.map((n) => ({
        provider: n.getAttribute("data-provider") ?? "",
        units: n.getAttribute("data-units") ?? "",
        input: n.getAttribute("data-input-tokens") ?? "",
        output: n.getAttribute("data-output-tokens") ?? "",
        text: (n as HTMLElement).innerText,
      })),
    );
    expect(
      new Map(providers.map((r) => [getAddress(r.provider), { amount: BigInt(r.units), inputTokens: BigInt(r.input), outputTokens: BigInt(r.output) }])),
      label("top providers"),
    ).toEqual(p.byProvider);
    const amounts = providers.map((r) => BigInt(r.units));
    expect(amounts, label("top providers, highest first")).toEqual([...amounts].sort((a, b) => (a > b ? -1 : a < b ? 1 : 0)));
    for (const r of providers) checkAmountText(r.text, BigInt(r.units), DECIMALS, label(`provider ${r.provider}`));
  }
}

/** Whether a canvas inside `selector` has a non-zero size and at least one painted pixel. */
async function chartPainted(page: Page, personaId: bigint): Promise<boolean> {
  return page.evaluate((id) => {
    const chart = document.querySelector(`[data-testid="persona"][data-persona-id="${id}"] [data-testid="persona-chart"]`);
    const canvas = chart?.querySelector("canvas");
    if (!canvas || canvas.width === 0 || canvas.height === 0) return false;
    const data = canvas.getContext("2d")!.getImageData(0, 0, canvas.width, canvas.height).data;
    for (let i = 3; i < data.length; i += 4) if (data[i] !== 0) return true;
    return false;
  }, personaId.toString());
}

describe.skipIf(!chromiumPresent && !process.env.CI)(chromiumPresent ? "creator dashboard (browser)" : `creator dashboard: ${CHROMIUM_MISSING}`, () => {
  beforeAll(async () => {
    if (!chromiumPresent) throw new Error(CHROMIUM_MISSING);
    if (!existsSync(join(distDir, "index.html"))) {
      throw new Error(`The dashboard is not built (${distDir}/index.html is missing): run npm run build:dashboard first.`);
    }
    home = await mkdtemp(join(tmpdir(), "soulmesh-dashboard-"));
    // A copy: a rebuild of dashboard/dist while the tests run (vite empties it first) must not pull the page away.
    const assetsDir = join(home, "dist");
    await cp(distDir, assetsDir, { recursive: true });
    const browserStarting = launchChromium();
    browserStarting.catch(() => {});
    devnet = await startDevnet({ port: 0, home });
    store = createHeliaBlockStore({ dir: join(home, "ipfs") });
    await store.start();
    fx = await tinyFixtures();
    seeded = await seedUsage({
      rpcUrl: devnet.rpc.url,
      deployment: devnet.deployment,
      store,
      adapterPath: fx.adapters[0]!.path,
      baseModelHash: fx.base.sha256,
    });
    creator = seeded.accounts.creator.address;
    server = await startDashboardServer({ rpcUrl: devnet.rpc.url, deployment: devnet.deployment, assetsDir, store, port: 0 });
    browser = await browserStarting;
  }, 60_000);

  afterAll(async () => {
    await browser?.close();
    await server?.close();
    seeded?.provider.destroy();
    await store?.stop();
    await devnet?.stop();
    await removeTinyFixtures();
    if (home) await rm(home, { recursive: true, force: true });
  });

  it("shows every figure equal to the contracts' own, to the unit, with a painted chart", () =>
    withPage(browser, "figures", async (page) => {
      const block = await connectAsCreator(page);
      const want = await expectedReport(seeded.contracts, creator, devnet.deployment.startBlock, block);
      // The seed made something to check: two days of revenue, two providers, adoptions paid, a change scheduled.
      expect(want.personas.size).toBe(2);
      expect(want.personas.get(seeded.p1)!.byDay.size).toBe(2);
      expect(want.personas.get(seeded.p1)!.byProvider.size).toBe(2);
      expect(want.personas.get(seeded.p1)!.adoptionRevenue).toBe(4n * USD);
      expect(want.personas.get(seeded.p2)!.scheduled?.value).toBe(seeded.scheduledRoyalty);
      expect(want.pending).toBeGreaterThan(0n);
      await checkFigures(page, want);
      await expectText(page.locator(`[data-testid="persona"][data-persona-id="${seeded.p1}"] [data-testid="persona-name"]`), "Ada Lighthouse");
      await expectText(page.locator(`[data-testid="persona"][data-persona-id="${seeded.p2}"] [data-testid="persona-name"]`), "Bram Gardener");
      expect(await page.locator('[data-testid="persona"][data-persona-id="3"]').count()).toBe(0);
      await page.waitForFunction(() => document.querySelectorAll('[data-testid="persona-chart"] canvas').length >= 2);
      expect(await chartPainted(page, seeded.p1)).toBe(true);
      expect(await chartPainted(page, seeded.p2)).toBe(true);
    }));

  it("withdraws the pending earnings to the creator, to the unit", () =>
    withPage(browser, "withdraw", async (page) => {
      const { token, inferenceEscrow } = seeded.contracts;
      await connectAsCreator(page);
      const pending = await unitsOf(page.getByTestId("earnings-pending"));
      const withdrawnBefore = await unitsOf(page.getByTestId("earnings-withdrawn"));
      expect(pending).toBeGreaterThan(0n);
      expect(pending).toBe(await inferenceEscrow.earningsOf(creator));
      const balanceBefore = await token.balanceOf(creator);
      await page.getByTestId("withdraw-button").click();
      const hash = await waitTx(page);
      const receipt = await seeded.provider.getTransactionReceipt(hash);
      expect(receipt?.status).toBe(1);
      expect(getAddress(receipt!.from)).toBe(getAddress(creator));
      expect(await inferenceEscrow.earningsOf(creator)).toBe(0n);
      expect((await token.balanceOf(creator)) - balanceBefore).toBe(pending);
      await waitReady(page, receipt!.blockNumber);
      await checkAmount(page.getByTestId("earnings-pending"), 0n, "pending after withdrawing");
      await checkAmount(page.getByTestId("earnings-withdrawn"), withdrawnBefore + pending, "withdrawn after withdrawing");
      expect(await page.getByTestId("withdraw-button").isDisabled()).toBe(true);
    }));

  it("publishes a persona with a card and a LoRA from the browser", () =>
    withPage(browser, "publish", async (page) => {
      const dir = await mkdtemp(join(tmpdir(), "soulmesh-dashboard-publish-"));
      try {
        const cardPath = join(dir, "dora.json");
        await writeFile(cardPath, cardJson("Dora Explorer", "Maps the unmapped."));
        const adapter = fx.adapters[1]!;
        const adapterSha256 = `0x${createHash("sha256").update(await readFile(adapter.path)).digest("hex")}`;
        const { personaRegistry } = seeded.contracts;
        await connectAsCreator(page);
        await page.getByTestId("publish-card").setInputFiles(cardPath);
        await page.getByTestId("publish-adapter").setInputFiles(adapter.path);
        await page.getByTestId("publish-base-model").fill(fx.base.sha256);
        await page.getByTestId("publish-royalty").fill("0.25");
        await page.getByTestId("publish-adoption-price").fill("1.5");
        await page.getByTestId("publish-submit").click();
        const status = page.getByTestId("publish-status");
        await page.locator('[data-testid="publish-status"][data-state="done"], [data-testid="publish-status"][data-state="failed"]').waitFor();
        expect(await status.getAttribute("data-state"), (await status.textContent()) ?? "").toBe("done");
        const id = BigInt((await status.getAttribute("data-persona-id"))!);
        const manifestCid = await status.getAttribute("data-manifest-cid");

        const record = await personaRegistry.personaOf(id);
        expect(record.manifestCid).toBe(manifestCid);
        expect(record.adoptionPrice).toBe(parseUnits("1.5", DECIMALS));
        expect(record.adapterSha256).toBe(adapterSha256);
        expect(await personaRegistry.ownerOf(id)).toBe(getAddress(creator));
        const [current, , effectiveAt] = await personaRegistry.royaltyScheduleOf(id);
        expect(current).toBe(parseUnits("0.25", DECIMALS));
        expect(effectiveAt).toBe(0n);
        const persona = await readPersona({ registry: personaRegistry, store, personaId: id });
        expect(persona.card.name).toBe("Dora Explorer");
        expect(persona.adapterSha256).toBe(adapterSha256);
        expect(persona.baseModelHash).toBe(fx.base.sha256.toLowerCase());

        const shown = page.locator(`[data-testid="persona"][data-persona-id="${id}"]`);
        await shown.waitFor();
        await expectText(shown.getByTestId("persona-name"), "Dora Explorer");
        await checkAmount(shown.getByTestId("persona-royalty-now"), 250_000n, "new persona's royalty");
        await checkAmount(shown.getByTestId("persona-adoption-price"), 1_500_000n, "new persona's adoption price");
      } finally {
        await rm(dir, { recursive: true, force: true });
      }
    }));

  it("schedules a royalty change and shows when it takes effect, as the chain says", () =>
    withPage(browser, "royalty", async (page) => {
      const { personaRegistry } = seeded.contracts;
      await connectAsCreator(page);
      const card = page.locator(`[data-testid="persona"][data-persona-id="${seeded.p1}"]`);
      await card.getByTestId("royalty-input").fill("0.35");
      const effect = card.getByTestId("royalty-effect");
      await effect.filter({ hasText: /takes effect about/i }).waitFor();
      await card.getByTestId("royalty-submit").click();
      const hash = await waitTx(page);
      const receipt = await seeded.provider.getTransactionReceipt(hash);
      const event = receipt!.logs.map((l) => personaRegistry.interface.parseLog(l)).find((e) => e?.name === "RoyaltyScheduled");
      const [, next, effectiveAt] = await personaRegistry.royaltyScheduleOf(seeded.p1);
      expect(next).toBe(350_000n);
      expect(event?.args.effectiveAt).toBe(effectiveAt);
      await page.locator(`[data-testid="persona"][data-persona-id="${seeded.p1}"] [data-testid="royalty-effect"][data-effective-at]`).waitFor();
      expect(Number(await effect.getAttribute("data-effective-at"))).toBe(Number(effectiveAt));
      await waitScheduled(page, seeded.p1, 350_000n);
      const scheduled = card.getByTestId("persona-royalty-scheduled");
      await checkAmount(scheduled, 350_000n, "scheduled royalty");
      expect(Number(await scheduled.getAttribute("data-effective-at"))).toBe(Number(effectiveAt));
    }));

  it("signs with a browser wallet (EIP-1193) when one is connected", () =>
    withPage(
      browser,
      "browser-wallet",
      async (page) => {
        const { personaRegistry } = seeded.contracts;
        await page.goto(server.url);
        await page.getByTestId("wallet-connect").click();
        await expectText(page.getByTestId("connected-address"), creator);
        await waitReady(page);
        const card = page.locator(`[data-testid="persona"][data-persona-id="${seeded.p2}"]`);
        await card.getByTestId("royalty-input").fill("0.09");
        await card.getByTestId("royalty-submit").click();
        const hash = await waitTx(page);
        const seen = await page.evaluate(() => (window as unknown as { __walletCalls: string[] }).__walletCalls);
        expect(seen).toContain("eth_requestAccounts");
        expect(seen).toContain("eth_sendTransaction");
        const receipt = await seeded.provider.getTransactionReceipt(hash);
        expect(getAddress(receipt!.from)).toBe(getAddress(creator));
        const [, next] = await personaRegistry.royaltyScheduleOf(seeded.p2);
        expect(next).toBe(90_000n);
        await waitScheduled(page, seeded.p2, 90_000n);
      },
      {
        initScript: walletScript(creator, devnet.deployment.chainId),
      },
    ));

  it("refuses a bad card, a non-LoRA adapter, a bad royalty and one above the registry's cap with clear errors, sending nothing", () =>
    withPage(
      browser,
      "bad-inputs",
      async (page) => {
        const { personaRegistry } = seeded.contracts;
        const dir = await mkdtemp(join(tmpdir(), "soulmesh-dashboard-bad-"));
        try {
          const total = await personaRegistry.totalPersonas();
          const calls = recordRpc(page);
          const sent = () => calls.filter((c) => c.method === "eth_sendTransaction" || c.method === "eth_sendRawTransaction");

          const notCard = join(dir, "not-a-card.json");
          await writeFile(notCard, JSON.stringify({ hello: "world" }));
          await connectAsCreator(page);
          await page.getByTestId("publish-card").setInputFiles(notCard);
          await page.getByTestId("publish-base-model").fill(fx.base.sha256);
          await page.getByTestId("publish-royalty").fill("0.1");
          await page.getByTestId("publish-adoption-price").fill("0");
          await page.getByTestId("publish-submit").click();
          const banner = page.locator('[data-testid="error"]:visible');
          await banner.and(page.locator('[data-error-name="NotACharacterCardError"]')).waitFor();
          expect(await banner.textContent()).toMatch(/character card/i);
          await page.locator('[data-testid="publish-status"][data-state="failed"]').waitFor();

          const goodCard = join(dir, "eve.json");
          await writeFile(goodCard, cardJson("Eve Never", "Never published."));
          await connectAsCreator(page);
          await page.getByTestId("publish-card").setInputFiles(goodCard);
          // A GGUF, but a base model, not a LoRA adapter.
          await page.getByTestId("publish-adapter").setInputFiles(fx.base.path);
          await page.getByTestId("publish-base-model").fill(fx.base.sha256);
          await page.getByTestId("publish-royalty").fill("0.1");
          await page.getByTestId("publish-adoption-price").fill("0");
          await page.getByTestId("publish-submit").click();
          await banner.and(page.locator('[data-error-name="NotALoraAdapterError"]')).waitFor();
          expect(await banner.textContent()).toMatch(/LoRA/);

          await connectAsCreator(page);
          const before = await personaRegistry.royaltyScheduleOf(seeded.p1);
          const card = page.locator(`[data-testid="persona"][data-persona-id="${seeded.p1}"]`);
          await card.getByTestId("royalty-input").fill("abc");
          await card.getByTestId("royalty-submit").click();
          // The message may be the banner or the royalty line itself; either must name the problem.
          await page
            .locator('[data-testid="error"]:visible, [data-testid="royalty-effect"]')
            .filter({ hasText: /abc|not a (decimal|number|valid)|invalid/i })
            .first()
            .waitFor();

          // A fresh page: no message of the case before may stand in for this one's.
          await connectAsCreator(page);
          await page.getByTestId("publish-card").setInputFiles(goodCard);
          await page.getByTestId("publish-base-model").fill(fx.base.sha256);
          await page.getByTestId("publish-royalty").fill("abc");
          await page.getByTestId("publish-adoption-price").fill("0");
          await page.getByTestId("publish-submit").click();
          await page
            .locator('[data-testid="error"]:visible, [data-testid="publish-status"]')
            .filter({ hasText: /abc|not a (decimal|number|valid)|invalid/i })
            .first()
            .waitFor();

          // A royalty above the registry's cap is refused on the page, before any upload or transaction, saying
          // what the cap is (attack 11: the cap is what keeps a royalty from outgrowing what vouchers carry).
          const max = await personaRegistry.maxRoyaltyPerMillion();
          const maxText = formatUnitsFixed(max, DECIMALS);
          const aboveMax = formatUnits(max + 1n, DECIMALS);
          const uploads: string[] = [];
          page.on("request", (req) => {
            const path = new URL(req.url()).pathname;
            if (req.method() === "POST" && path.startsWith("/api/")) uploads.push(path);
          });
          await connectAsCreator(page);
          await page.getByTestId("publish-card").setInputFiles(goodCard);
          await page.getByTestId("publish-adapter").setInputFiles(fx.adapters[0]!.path);
          await page.getByTestId("publish-base-model").fill(fx.base.sha256);
          await page.getByTestId("publish-royalty").fill(aboveMax);
          await page.getByTestId("publish-adoption-price").fill("0");
          await page.getByTestId("publish-submit").click();
          await banner.and(page.locator('[data-error-name="RoyaltyAboveMaxError"]')).waitFor();
          expect(await banner.textContent()).toContain(`${maxText} tUSD`);
          await page.locator('[data-testid="publish-status"][data-state="failed"]').waitFor();
          expect(await page.getByTestId("publish-royalty").getAttribute("data-max-units")).toBe(max.toString());

          await connectAsCreator(page);
          await card.getByTestId("royalty-input").fill(aboveMax);
          await card.getByTestId("royalty-submit").click();
          await banner.and(page.locator('[data-error-name="RoyaltyAboveMaxError"]')).waitFor();
          expect(await banner.textContent()).toContain(`${maxText} tUSD`);
          expect(uploads).toEqual([]);

          expect(sent()).toEqual([]);
          expect(await personaRegistry.totalPersonas()).toBe(total);
          expect(await personaRegistry.royaltyScheduleOf(seeded.p1)).toEqual(before);
        } finally {
          await rm(dir, { recursive: true, force: true });
        }
      },
      { allowConsole: /status of 400/ },
    ));

  it("reads only blocks it has not seen after a reload, and shows the same figures", () =>
    withPage(browser, "cache", async (page) => {
      const first = await connectAsCreator(page);
      const figures = await allFigures(page);
      expect(figures.length).toBeGreaterThan(10);
      // A new, empty block: the page must read logs again, and only from after what it has seen, whether its
      // poll sees the block before the reload or the reloaded page does.
      const calls = recordRpc(page);
      await seeded.provider.send("evm_mine", []);
      await page.reload();
      if (!(await page.getByTestId("connected-address").isVisible())) {
        await page.getByTestId("dev-account-select").selectOption(creator);
        await page.getByTestId("dev-account-connect").click();
      }
      const second = await waitReady(page, first + 1);
      const getLogs = calls.filter((c) => c.method === "eth_getLogs");
      expect(getLogs.length).toBeGreaterThan(0);
      for (const call of getLogs) {
        const filter = call.params[0] as { fromBlock?: string };
        expect(Number(filter.fromBlock), JSON.stringify(filter)).toBeGreaterThan(first);
      }
      expect(second).toBeGreaterThan(first);
      expect(await allFigures(page)).toEqual(figures);
      // The cache lives in IndexedDB (localStorage's ~5 MB would not hold a busy creator's logs), nothing in localStorage.
      const kept = await page.evaluate(async () => {
        const db = await new Promise<IDBDatabase>((resolve, reject) => {
          const open = indexedDB.open("soulmesh-dashboard");
          open.onsuccess = () => resolve(open.result);
          open.onerror = () => reject(open.error);
        });
        const keys = await new Promise<IDBValidKey[]>((resolve, reject) => {
          const req = db.transaction("logs").objectStore("logs").getAllKeys();
          req.onsuccess = () => resolve(req.result);
          req.onerror = () => reject(req.error);
        });
        db.close();
        const local = Object.keys(localStorage).filter((k) => k.startsWith("soulmesh:logs:"));
        return { indexedDb: keys.map(String), local };
      });
      expect(kept.local).toEqual([]);
      expect(kept.indexedDb.length).toBeGreaterThan(0);
      expect(kept.indexedDb.every((k) => k.startsWith(`soulmesh:logs:${devnet.deployment.chainId}:${devnet.deployment.deployedAt}:`))).toBe(true);
    }));

  // Last: it moves p1 to creator-2 for good.
  it("after the creator transfers a persona, counts each settlement's royalty for whoever held it then", async () => {
    const { personaRegistry, inferenceEscrow } = seeded.contracts;
    const { creator2, user, provider2 } = seeded.accounts;
    const next = creator2.address;
    const start = devnet.deployment.startBlock;
    const beforeTransfer = await expectedReport(seeded.contracts, creator, start, await seeded.provider.getBlockNumber());
    const p1Before = beforeTransfer.personas.get(seeded.p1)!;
    expect(p1Before.revenue).toBeGreaterThan(0n);

    const transfer = await (await seeded.as(seeded.accounts.creator).personaRegistry.transferFrom(creator, next, seeded.p1)).wait();
    expect(transfer?.status).toBe(1);
    expect(await personaRegistry.ownerOf(seeded.p1)).toBe(getAddress(next));
    const [creatorPending, nextPending] = await Promise.all([inferenceEscrow.earningsOf(creator), inferenceEscrow.earningsOf(next)]);
    // Two days after the seed's last settlements: the new ones have a day of their own, and creator-2's p3 a
    // day without revenue between its days (its chart keeps that day on the axis, with no bar).
    await seeded.provider.send("evm_increaseTime", [86_400]);
    await seeded.provider.send("evm_mine", []);
    const receipt = await seeded.settle(user, seeded.agents.a1, 1, 12_345n, 6_789n);
    const settled = receipt.logs.map((l) => inferenceEscrow.interface.parseLog(l)).find((e) => e?.name === "VoucherSettled");
    const royalty = settled!.args.royaltyAmount as bigint;
    expect(royalty).toBeGreaterThan(0n);
    expect(await inferenceEscrow.earningsOf(creator)).toBe(creatorPending);
    expect((await inferenceEscrow.earningsOf(next)) - nextPending).toBe(royalty);
    await seeded.settle(seeded.accounts.user2, seeded.agents.a3, 0, 4_000n, 1_000n);

    await withPage(browser, "transfer-creator", async (page) => {
      const block = await connectAsCreator(page);
      expect(block).toBeGreaterThanOrEqual(receipt.blockNumber);
      const want = await expectedReport(seeded.contracts, creator, start, block);
      const p1 = want.personas.get(seeded.p1)!;
      expect(p1.holder).toBe(getAddress(next));
      // What the creator earned on p1 stays as it was before the transfer: nothing after it is theirs.
      expect(p1.revenue).toBe(p1Before.revenue);
      expect([p1.inputTokens, p1.outputTokens]).toEqual([p1Before.inputTokens, p1Before.outputTokens]);
      expect(p1.byDay).toEqual(p1Before.byDay);
      expect(p1.byProvider).toEqual(p1Before.byProvider);
      await checkFigures(page, want);
      const holder = page.locator(`[data-testid="persona"][data-persona-id="${seeded.p1}"] [data-testid="persona-holder"]`);
      expect(await holder.textContent()).toContain(getAddress(next));
    });

    await withPage(browser, "transfer-creator-2", async (page) => {
      const block = await connectAsCreator(page, next);
      const want = await expectedReport(seeded.contracts, next, start, block);
      expect([...want.personas.keys()]).toEqual([seeded.p1, seeded.p3]);
      const p1 = want.personas.get(seeded.p1)!;
      // Only the settlement after the transfer is creator-2's, on one day, from one provider.
      expect(p1.revenue).toBe(royalty);
      expect([p1.inputTokens, p1.outputTokens]).toEqual([12_345n, 6_789n]);
      expect(p1.byDay.size).toBe(1);
      expect([...p1.byProvider.keys()]).toEqual([getAddress(provider2.address)]);
      expect(p1.adoptionRevenue).toBe(0n);
      expect(want.personas.get(seeded.p3)!.byDay.size).toBe(3);
      expect(want.pending).toBe(await inferenceEscrow.earningsOf(next, { blockTag: block }));
      await checkFigures(page, want, next);
      await page.waitForFunction(
        (id) => document.querySelector(`[data-testid="persona"][data-persona-id="${id}"] [data-testid="persona-chart"] canvas`) !== null,
        seeded.p1.toString(),
      );
      expect(await chartPainted(page, seeded.p1)).toBe(true);
    });
  });
});

/**
 * A page script installing a minimal EIP-1193 wallet for `account` that forwards everything else to the
 * dashboard's own /rpc (the devnet signs for its dev accounts), recording the methods in window.__walletCalls.
 */
function walletScript(account: string, chainId: number): string {
  const install = ({ account, chainId }: { account: string; chainId: string }): void => {
    const calls: string[] = [];
    let id = 0;
    const w = window as unknown as { __walletCalls: string[]; ethereum: unknown };
    w.__walletCalls = calls;
    w.ethereum = {
      async request({ method, params }: { method: string; params?: unknown[] }): Promise<unknown> {
        calls.push(method);
        if (method === "eth_requestAccounts" || method === "eth_accounts") return [account];
        if (method === "eth_chainId") return chainId;
        const res = await fetch("/rpc", {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify({ jsonrpc: "2.0", id: ++id, method, params: params ?? [] }),
        });
        const body = (await res.json()) as { result?: unknown; error?: { code: number; message: string; data?: unknown } };
        if (body.error) throw Object.assign(new Error(body.error.message), body.error);
        return body.result;
      },
      on(): void {},
      removeListener(): void {},
    };
  };
  return `(${install.toString()})(${JSON.stringify({ account: getAddress(account), chainId: toBeHex(chainId) })});`;
}
