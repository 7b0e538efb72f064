import type { KeyValueStorage } from "../../sdk/chain/creator-report.js";

const DATABASE = "soulmesh-dashboard";
const STORE = "logs";

/** Where the log cache persists: read synchronously from memory, written behind to IndexedDB. */
export interface LogStorage extends KeyValueStorage {
  /** "indexeddb", or "localstorage" where IndexedDB cannot be opened (a private window, say). */
  readonly kind: "indexeddb" | "localstorage";
  /** Resolves once every setItem so far is on disk (a reload then finds it). */
  flushed(): Promise<void>;
}

/** Options of {@link openLogStorage}. */
export interface LogStorageOptions {
  /** Keys of this deployment start with it; other keys under `family` belong to dead deployments and are dropped. */
  prefix: string;
  /** The prefix of every log-cache key, whatever the deployment. */
  family: string;
}

function request<T>(req: IDBRequest<T>): Promise<T> {
  return new Promise((resolve, reject) => {
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error ?? new Error("IndexedDB request failed"));
  });
}

function done(tx: IDBTransaction): Promise<void> {
  return new Promise((resolve, reject) => {
    tx.oncomplete = () => resolve();
    tx.onerror = tx.onabort = () => reject(tx.error ?? new Error("IndexedDB transaction failed"));
  });
}

async function openDatabase(): Promise<IDBDatabase> {
  const open = indexedDB.open(DATABASE, 1);
  open.onupgradeneeded = () => open.result.createObjectStore(STORE);
  return request(open);
}

/**
 * The log cache's storage: IndexedDB, whose quota grows with the disk, because localStorage's ~5 MB holds
 * only about 10,000 settlements (bench/dashboard-report). Entries are loaded into memory once, so the
 * cache's synchronous reads stay synchronous; writes go to IndexedDB in one transaction per burst.
 * Falls back to localStorage where IndexedDB cannot be opened.
 *
 * @example
 * const storage = await openLogStorage({ family: "soulmesh:logs:", prefix: "soulmesh:logs:31337:2026-11-23T…:" })
 * const cache = createLogCache({ storage, prefix: "" })
 */
export async function openLogStorage(options: LogStorageOptions): Promise<LogStorage> {
  let db: IDBDatabase;
  const memory = new Map<string, string>();
  try {
    db = await openDatabase();
    const tx = db.transaction(STORE, "readwrite");
    const store = tx.objectStore(STORE);
    const [keys, values] = await Promise.all([request(store.getAllKeys()), request(store.getAll())]);
    keys.forEach((key, i) => {
      const k = String(key);
      if (!k.startsWith(options.prefix)) store.delete(key);
      else if (typeof values[i] === "string") memory.set(k, values[i] as string);
    });
    await done(tx);
  } catch {
    dropLocalStorage((key) => key.startsWith(options.family) && !key.startsWith(options.prefix));
    return localStorageFallback();
  }
  // Earlier versions kept the cache in localStorage, within its small quota: free that space.
  dropLocalStorage((key) => key.startsWith(options.family));

  const dirty = new Map<string, string>();
  let writing: Promise<void> = Promise.resolve();
  let scheduled = false;
  const write = (): void => {
    scheduled = false;
    const batch = [...dirty];
    dirty.clear();
    writing = writing.then(async () => {
      try {
        const tx = db.transaction(STORE, "readwrite");
        for (const [k, v] of batch) tx.objectStore(STORE).put(v, k);
        await done(tx);
      } catch {
        // Quota or a closed database: the memory copy still serves this visit; the next one reads afresh.
      }
    });
  };
  return {
    kind: "indexeddb",
    getItem: (key) => memory.get(key) ?? null,
    setItem(key, value) {
      memory.set(key, value);
      dirty.set(key, value);
      if (!scheduled) {
        scheduled = true;
        queueMicrotask(write);
      }
    },
    async flushed() {
      // A write scheduled but not yet started is part of "so far".
      await Promise.resolve();
      await writing;
    },
  };
}

function dropLocalStorage(drop: (key: string) => boolean): void {
  try {
    const keys: string[] = [];
    for (let i = 0; i < localStorage.length; i++) {
      const key = localStorage.key(i);
      if (key !== null && drop(key)) keys.push(key);
    }
    for (const key of keys) localStorage.removeItem(key);
  } catch {
    // No localStorage at all: nothing to free.
  }
}

function localStorageFallback(): LogStorage {
  return {
    kind: "localstorage",
    getItem: (key) => {
      try {
        return localStorage.getItem(key);
      } catch {
        return null;
      }
    },
    setItem: (key, value) => localStorage.setItem(key, value),
    flushed: async () => {},
  };
}
