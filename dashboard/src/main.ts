import "./style.css";
import { createLogCache } from "../../sdk/chain/creator-report.js";
import type { CreatorReport, LogCache } from "../../sdk/chain/creator-report.js";
import { loadConfig, loadPersonaInfo } from "./api.js";
import type { DashboardConfig } from "./api-types.js";
import { openChainReader } from "./chain.js";
import type { ChainReader } from "./chain.js";
import { ConnectionController, injectedWallet } from "./connection.js";
import type { Account } from "./connection.js";
import { byTestId, el } from "./dom.js";
import { ErrorBanner, TxTracker } from "./feedback.js";
import { shortAddress } from "./format.js";
import { openLogStorage } from "./log-storage.js";
import type { LogStorage } from "./log-storage.js";
import { createPublishForm } from "./publish.js";
import { ReportLoop } from "./report-loop.js";
import { ReportView } from "./report-view.js";

const LOG_PREFIX = "soulmesh:logs:";

/**
 * A log cache for this deployment only: a restarted devnet reuses the chain id and contract addresses, so
 * entries are keyed by the deployment's time too, and those of other deployments are dropped.
 */
async function deploymentCache(config: DashboardConfig): Promise<{ cache: LogCache; storage: LogStorage }> {
  const prefix = `${LOG_PREFIX}${config.chainId}:${config.deployment.deployedAt}:`;
  const storage = await openLogStorage({ family: LOG_PREFIX, prefix });
  return { cache: createLogCache({ storage, prefix }), storage };
}

/** The account picker: dev accounts on the devnet, a browser wallet, and who is connected. */
function renderConnection(root: HTMLElement, config: DashboardConfig, connection: ConnectionController, banner: ErrorBanner): () => void {
  const select = el("select", { id: "dev-account", "data-testid": "dev-account-select" });
  for (const a of config.devAccounts) select.append(el("option", { value: a.address, text: `${a.label} (${shortAddress(a.address)})` }));
  const creator = config.devAccounts.find((a) => a.label === "creator");
  if (creator) select.value = creator.address;
  const devConnect = el("button", { type: "button", "data-testid": "dev-account-connect", text: "Use dev account" });
  const walletConnect = el("button", { type: "button", "data-testid": "wallet-connect", text: "Connect browser wallet" });
  const walletHint = el("small", { class: "muted", text: "No browser wallet found." });
  const address = el("code", { "data-testid": "connected-address" });
  const mode = el("span", { class: "badge" });
  const disconnect = el("button", { type: "button", "data-testid": "disconnect", text: "Disconnect" });
  const connected = el("div", { class: "connected" }, mode, address, disconnect);
  const pickers = el(
    "div",
    { class: "pickers" },
    ...(config.devAccounts.length > 0
      ? [el("label", { for: "dev-account", class: "sr-only", text: "Dev account" }), select, devConnect]
      : []),
    walletConnect,
    ...(injectedWallet() ? [] : [walletHint]),
  );
  walletConnect.disabled = !injectedWallet();
  root.replaceChildren(pickers, connected);

  devConnect.addEventListener("click", () => {
    banner.clear();
    connection.connectDev(select.value);
  });
  walletConnect.addEventListener("click", () => {
    banner.clear();
    walletConnect.disabled = true;
    connection
      .connectWallet(true)
      .catch((err: unknown) => banner.show(err))
      .finally(() => (walletConnect.disabled = !injectedWallet()));
  });
  disconnect.addEventListener("click", () => connection.disconnect());

  const sync = (): void => {
    const account = connection.account;
    connected.hidden = account === undefined;
    if (!account) return;
    address.textContent = account.address;
    address.title = account.address;
    mode.textContent = account.mode === "dev" ? `dev: ${account.label}` : account.mode === "wallet" ? "wallet" : "read-only";
    if (account.mode === "dev") select.value = account.address;
  };
  sync();
  return sync;
}

async function boot(): Promise<void> {
  const banner = new ErrorBanner(byTestId(document, "error"));
  const status = byTestId(document, "report-status");
  const blockNode = byTestId(document, "report-block");
  const refresh = byTestId<HTMLButtonElement>(document, "refresh");
  const tracker = new TxTracker(byTestId(document, "tx-status"));
  const setStatus = (state: "idle" | "loading" | "ready" | "error", text: string): void => {
    status.dataset.state = state;
    status.textContent = text;
  };

  let config: DashboardConfig;
  let reader: ChainReader;
  let logs: { cache: LogCache; storage: LogStorage };
  try {
    setStatus("loading", "Loading the configuration…");
    config = await loadConfig(AbortSignal.timeout(15_000));
    reader = await openChainReader(config.deployment);
    logs = await deploymentCache(config);
  } catch (err) {
    setStatus("error", "Cannot reach the dashboard server or the chain.");
    banner.show(err);
    return;
  }
  setStatus("idle", "Not connected: choose an account above.");

  let chainTime = { at: Date.now() / 1000, seenAt: Date.now() / 1000 };
  const chainNow = (): number => Math.floor(chainTime.at + (Date.now() / 1000 - chainTime.seenAt));
  const names = new Map<string, string | null>();
  const loop = new ReportLoop({
    provider: reader.provider,
    contracts: reader.contracts,
    fromBlock: config.deployment.startBlock,
    cache: logs.cache,
    persisted: () => logs.storage.flushed(),
  });
  const connection = new ConnectionController(config);
  const syncConnection = renderConnection(document.getElementById("connection")!, config, connection, banner);
  let account: Account | undefined;
  let lastReport: CreatorReport | undefined;

  const view = new ReportView(document.getElementById("overview")!, document.getElementById("personas")!, {
    token: reader.token,
    royaltyDelay: reader.royaltyDelay,
    maxRoyaltyPerMillion: reader.maxRoyaltyPerMillion,
    registry: reader.contracts.personaRegistry,
    tracker,
    banner,
    chainNow,
    onScheduled: () => loop.refresh(),
    personaName(personaId, manifestCid, onLoaded) {
      const key = `${personaId}:${manifestCid}`;
      if (names.has(key)) return names.get(key) ?? undefined;
      names.set(key, null);
      loadPersonaInfo(personaId)
        .then((info) => {
          const name = info.card?.name || info.name;
          if (name) {
            names.set(key, name);
            onLoaded();
          }
        })
        .catch(() => {
          // IPFS may not have it (yet): the persona keeps its number as its name.
        });
      return undefined;
    },
    onWithdraw() {
      const signer = account?.signer;
      if (!signer || !account) return;
      banner.clear();
      view.setBusy(true);
      const escrow = reader.contracts.inferenceEscrow.connect(signer);
      const to = account.address;
      tracker
        .send("Withdraw earnings", () => escrow.withdrawEarnings(to))
        .then(() => loop.refresh())
        .catch((err: unknown) => banner.show(err))
        .finally(() => view.setBusy(false));
    },
  });
  const publish = createPublishForm(document.getElementById("publish")!, {
    config,
    token: reader.token,
    registry: reader.contracts.personaRegistry,
    maxRoyaltyPerMillion: reader.maxRoyaltyPerMillion,
    tracker,
    banner,
    onPublished: () => loop.refresh(),
  });

  loop.addEventListener("report:loading", () => {
    setStatus("loading", lastReport ? "Reading new blocks…" : "Reading the chain…");
    refresh.disabled = true;
  });
  loop.addEventListener("report:ready", (e) => {
    const { report, chainTime: at } = e.detail;
    chainTime = { at, seenAt: Date.now() / 1000 };
    lastReport = report;
    view.show(report, account);
    blockNode.dataset.block = String(report.block);
    blockNode.textContent = `at block ${report.block}`;
    setStatus("ready", `Up to date for ${shortAddress(report.creator)}`);
    refresh.disabled = false;
  });
  loop.addEventListener("report:failed", (e) => {
    setStatus("error", "Reading the chain failed.");
    banner.show(e.detail);
    refresh.disabled = false;
  });
  refresh.addEventListener("click", () => {
    banner.clear();
    loop.refresh();
  });

  connection.addEventListener("account:error", (e) => banner.show(e.detail));
  connection.addEventListener("account:changed", (e) => {
    const previous = account;
    account = e.detail;
    syncConnection();
    publish.setSigner(account?.signer);
    if (account?.address !== previous?.address) {
      lastReport = undefined;
      view.clear();
      delete blockNode.dataset.block;
      blockNode.textContent = "";
      if (!account) setStatus("idle", "Not connected: choose an account above.");
    } else if (lastReport) view.show(lastReport, account);
    loop.setCreator(account?.address);
  });

  try {
    await connection.restore();
  } catch (err) {
    banner.show(err);
  }
  loop.start();
  window.addEventListener("pagehide", () => {
    loop.stop();
    reader.close();
  });
}

void boot();
