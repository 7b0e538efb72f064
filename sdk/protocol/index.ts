export * from "./ids.js";
export * from "./limits.js";
export * from "./errors.js";
export * from "./messages.js";
export * from "./signing.js";
export * from "./codec.js";
export * from "./stream.js";
