// Harness of the browser tests: free loopback ports, the real `herald` binary and
// `redis-server` as child processes, headless Debian Chromium driven by playwright-core,
// HS256 tokens minted with node:crypto, and a bounded `waitFor`. Not a test file itself.
//
// The binary is $HERALD_BIN (resolved against the current directory) or
// ../../../../target/debug/herald relative to this file. Every process and browser a test
// starts is registered and ended by `cleanup()`, which each test file calls in `after`.

import { spawn } from "node:child_process";
import { createHmac } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { constants, tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const HERE = fileURLToPath(new URL(".", import.meta.url));
export const REPO = resolve(HERE, "../../../..");
export const HERALD_BIN = process.env.HERALD_BIN
  ? resolve(process.env.HERALD_BIN)
  : resolve(REPO, "target/debug/herald");
export const CHROMIUM = process.env.CHROMIUM_BIN || "/usr/bin/chromium";
export const ARTIFACTS = resolve(REPO, "target/browser-artifacts");

const START_TIMEOUT_MS = 15_000;
/** Everything to end in cleanup(): functions returning promises, run last-in first-out. */
const cleanups = [];

/** A TCP port free on 127.0.0.1 right now (the OS picks it). */
export function freePort() {
  return new Promise((res, rej) => {
    const srv = createServer();
    srv.once("error", rej);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => res(port));
    });
  });
}

/** Polls `check` (sync or async) every `intervalMs` until it returns a truthy value or `timeoutMs` passes. */
export async function waitFor(check, { timeoutMs = 10_000, intervalMs = 50, what = "condition" } = {}) {
  const deadline = Date.now() + timeoutMs;
  let last;
  while (Date.now() < deadline) {
    try {
      last = await check();
      if (last) return last;
    } catch (e) {
      last = e;
    }
    await sleep(intervalMs);
  }
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${what} (last: ${last instanceof Error ? last.message : JSON.stringify(last)})`);
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Every child spawned, so none outlives this process, even one ended by a signal. */
const children = new Set();
const killChildren = () => {
  for (const child of children) child.kill("SIGKILL");
};
process.on("exit", killChildren);
for (const signal of ["SIGINT", "SIGTERM", "SIGHUP", "SIGPIPE"]) {
  process.once(signal, () => {
    killChildren();
    process.exit(128 + (constants.signals[signal] ?? 0));
  });
}

/** Spawns a child with its stderr/stdout kept (last 16 KiB) for error messages. */
function spawnKept(cmd, args, env) {
  const child = spawn(cmd, args, { env, stdio: ["ignore", "pipe", "pipe"] });
  let output = "";
  const keep = (chunk) => (output = (output + chunk).slice(-16_384));
  child.stdout.on("data", keep);
  child.stderr.on("data", keep);
  child.output = () => output;
  children.add(child);
  child.once("exit", () => children.delete(child));
  return child;
}

function exited(child) {
  return child.exitCode !== null || child.signalCode !== null;
}

/** SIGTERM (or `signal`), then SIGKILL after 3 s; resolves once the process is gone. */
export async function stopProcess(child, signal = "SIGTERM") {
  if (!child || exited(child)) return;
  const gone = new Promise((r) => child.once("exit", r));
  child.kill(signal);
  const timer = setTimeout(() => child.kill("SIGKILL"), 3_000);
  await gone;
  clearTimeout(timer);
}

/** A redis-server on a free loopback port, without persistence. Returns {port, url, child}. */
export async function startRedis() {
  const port = await freePort();
  const child = spawnKept("redis-server", ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], process.env);
  cleanups.push(() => stopProcess(child));
  await waitFor(() => {
    if (exited(child)) throw new Error(`redis-server exited: ${child.output()}`);
    return /Ready to accept connections/.test(child.output());
  }, { timeoutMs: START_TIMEOUT_MS, what: `redis-server on ${port}` });
  return { port, url: `redis://127.0.0.1:${port}/`, child };
}

/**
 * A herald node on 127.0.0.1:`port` (free when not given) with its admin listener on
 * `adminPort`, configured by `env` (HERALD_* from the caller's environment are dropped).
 * Resolves once the admin /healthz answers 200. Returns
 * {port, adminPort, http, ws, admin, child, stop(), kill(), env}.
 */
export async function startHerald({ env = {}, port, adminPort } = {}) {
  port ??= await freePort();
  adminPort ??= await freePort();
  const base = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("HERALD_")));
  const fullEnv = { ...base, HERALD_LOG__LEVEL: "warn", ...env };
  const args = ["--listen", `127.0.0.1:${port}`, "--admin-listen", `127.0.0.1:${adminPort}`];
  const child = spawnKept(HERALD_BIN, args, fullEnv);
  const spawnError = new Promise((_, rej) => child.once("error", (e) => rej(new Error(`cannot run ${HERALD_BIN}: ${e.message} (build it: cargo build -p herald-gateway --bin herald)`))));
  spawnError.catch(() => {});
  cleanups.push(() => stopProcess(child));
  const admin = `http://127.0.0.1:${adminPort}`;
  await Promise.race([
    spawnError,
    waitFor(async () => {
      if (exited(child)) throw new Error(`herald exited (${child.exitCode ?? child.signalCode}): ${child.output()}`);
      const r = await fetch(`${admin}/healthz`);
      return r.status === 200;
    }, { timeoutMs: START_TIMEOUT_MS, intervalMs: 100, what: `herald on ${port} (/healthz)` }),
  ]);
  return {
    port,
    adminPort,
    env,
    child,
    http: `http://127.0.0.1:${port}`,
    ws: `ws://127.0.0.1:${port}`,
    admin,
    stop: () => stopProcess(child),
    kill: () => stopProcess(child, "SIGKILL"),
  };
}

/** Publishes `data` on `topic` through a node's admin HTTP API; resolves to the JSON answer. */
export async function adminPublish(node, topic, data) {
  const r = await fetch(`${node.admin}/api/publish`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ topic, data }),
    signal: AbortSignal.timeout(10_000),
  });
  const body = await r.json();
  if (r.status !== 200) throw new Error(`publish on ${topic}: HTTP ${r.status} ${JSON.stringify(body)}`);
  return body;
}

/**
 * Headless Chromium (/usr/bin/chromium; never a downloaded browser) with a fresh profile.
 * Returns the persistent BrowserContext; cleanup() closes it and removes the profile.
 */
export async function launchBrowser() {
  const profile = mkdtempSync(join(tmpdir(), "herald-chromium-"));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    timeout: 30_000,
    args: [
      "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
    ],
  });
  cleanups.push(async () => {
    await Promise.race([context.close().catch(() => {}), sleep(5_000)]);
    rmSync(profile, { recursive: true, force: true });
  });
  return context;
}

/**
 * A new page that fails loudly: page errors, console errors and HTTP errors are collected
 * in `page.problems`, and any request leaving `origin` (a CDN, an external fetch) is recorded
 * in `page.foreign`.
 */
export async function newPage(context, origin) {
  const page = await context.newPage();
  page.setDefaultTimeout(10_000);
  page.problems = [];
  page.foreign = [];
  page.on("pageerror", (e) => page.problems.push(`pageerror: ${e.message}`));
  page.on("console", (m) => {
    if (m.type() === "error") page.problems.push(`console: ${m.text()}`);
  });
  page.on("response", (r) => {
    if (r.status() >= 400) page.problems.push(`HTTP ${r.status()} ${r.url()}`);
  });
  page.on("request", (req) => {
    const url = req.url();
    if (!url.startsWith(origin) && !url.startsWith(origin.replace(/^http/, "ws")) && !url.startsWith("data:") && !url.startsWith("about:")) {
      page.foreign.push(url);
    }
  });
  return page;
}

/** An HS256 JWT signed with `secret` (base64url header.claims.signature, as RFC 7519). */
export function mintToken(secret, claims) {
  const b64 = (obj) => Buffer.from(JSON.stringify(obj)).toString("base64url");
  const body = `${b64({ alg: "HS256", typ: "JWT" })}.${b64(claims)}`;
  const sig = createHmac("sha256", secret).update(body).digest("base64url");
  return `${body}.${sig}`;
}

/** Ends everything this file started, newest first; never throws. */
export async function cleanup() {
  while (cleanups.length) {
    const fn = cleanups.pop();
    try {
      await fn();
    } catch {
      /* keep cleaning */
    }
  }
}
