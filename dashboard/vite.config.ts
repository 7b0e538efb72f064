import { fileURLToPath } from "node:url";
import { defineConfig } from "vite";

const root = fileURLToPath(new URL(".", import.meta.url));
/** A running `soulmesh dashboard` to proxy /rpc and /api to while developing with `vite` (e.g. http://127.0.0.1:8600). */
const api = process.env.SOULMESH_DASHBOARD_API;

// The built page is served from any path by `soulmesh dashboard`, offline: relative asset URLs, nothing fetched from elsewhere.
export default defineConfig({
  root,
  base: "./",
  build: {
    outDir: "dist",
    emptyOutDir: true,
    target: "es2022",
    chunkSizeWarningLimit: 1024,
  },
  server: api
    ? {
        proxy: {
          "/rpc": { target: api, changeOrigin: true },
          "/api": { target: api, changeOrigin: true },
        },
      }
    : {},
});
