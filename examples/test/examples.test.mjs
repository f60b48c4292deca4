// Runs every example in examples/ against a real herald node on free loopback ports and
// checks that each exits 0 having received its own message back: Node with herald.js, Node
// with plain ws, Python (websockets), Rust (herald-client), curl (admin API and history)
// and the page (browser.html in Debian's headless Chromium, served from another origin so
// its cross-origin import of /client/herald.js is exercised too).
//
// Environment (the Makefile's `examples` target sets them): HERALD_BIN, EXAMPLES_PYTHON
// (a python with `websockets`), EXAMPLES_RUST_BIN (the built herald-example).
import { spawn } from "node:child_process";
import { readFile } from "node:fs/promises";
import { createServer } from "node:http";
import { resolve } from "node:path";
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { REPO, cleanup, freePort, launchBrowser, newPage, startHerald } from "../../clients/js/test/browser/harness.mjs";

const EXAMPLES = fileURLToPath(new URL("..", import.meta.url));
const TARGET = process.env.CARGO_TARGET_DIR ? resolve(process.env.CARGO_TARGET_DIR) : resolve(REPO, "target");
const PYTHON = process.env.EXAMPLES_PYTHON || resolve(TARGET, "examples-venv/bin/python");
const RUST_BIN = process.env.EXAMPLES_RUST_BIN ? resolve(process.env.EXAMPLES_RUST_BIN) : resolve(TARGET, "debug/herald-example");
const RUN_TIMEOUT_MS = 20_000;

let node;
before(async () => {
  // History on the examples' topics, for curl.sh (it reads its message back from history).
  node = await startHerald({ env: { HERALD_HISTORY: JSON.stringify([{ topics: "examples.>", size: 100, ttl_ms: 600_000 }]) } });
});
after(cleanup);

/** Runs `cmd args` in examples/ with `env`; resolves {code, out} once it exits (killed after 20 s). */
function run(cmd, args, env) {
  return new Promise((res, rej) => {
    const child = spawn(cmd, args, { cwd: EXAMPLES, env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    child.stdout.on("data", (c) => (out += c));
    child.stderr.on("data", (c) => (out += c));
    const timer = setTimeout(() => child.kill("SIGKILL"), RUN_TIMEOUT_MS);
    child.once("error", (e) => {
      clearTimeout(timer);
      rej(new Error(`cannot run ${cmd}: ${e.message}`));
    });
    child.once("exit", (code, signal) => {
      clearTimeout(timer);
      res({ code: code ?? signal, out });
    });
  });
}

async function expectOwnMessage(cmd, args, env) {
  const { code, out } = await run(cmd, args, env);
  assert.equal(code, 0, `${cmd} ${args.join(" ")} exited ${code}:\n${out}`);
  assert.match(out, /got our own message back/, out);
}

test("node-herald.mjs: herald.js in Node gets its own message back", async () => {
  await expectOwnMessage(process.execPath, ["node-herald.mjs"], { HERALD_URL: node.ws, HERALD_TOPIC: "examples.node-herald" });
});

test("node-ws.mjs: plain ws gets its own message back", async () => {
  await expectOwnMessage(process.execPath, ["node-ws.mjs"], { HERALD_URL: node.ws, HERALD_TOPIC: "examples.node-ws" });
});

test("python/subscribe_publish.py: websockets gets its own message back", async () => {
  await expectOwnMessage(PYTHON, ["python/subscribe_publish.py"], { HERALD_URL: node.ws, HERALD_TOPIC: "examples.python" });
});

test("rust (herald-example): herald-client gets its own message back", async () => {
  await expectOwnMessage(RUST_BIN, [], { HERALD_URL: node.ws, HERALD_TOPIC: "examples.rust" });
});

test("curl.sh: the admin API publishes and the message is read back from history", async () => {
  await expectOwnMessage("bash", ["curl.sh"], { HERALD_ADMIN: node.admin, HERALD_TOPIC: "examples.curl" });
});

test("curl.sh fails on a topic without history", async () => {
  const { code, out } = await run("bash", ["curl.sh"], { HERALD_ADMIN: node.admin, HERALD_TOPIC: "nohistory.curl" });
  assert.notEqual(code, 0, out);
  assert.match(out, /keeps no history/);
});

test("browser.html: a page on another origin imports herald.js from the node and gets its own message back", async () => {
  const page = await readFile(resolve(EXAMPLES, "browser.html"));
  const server = createServer((req, res) => {
    if (req.url.split("?")[0] === "/browser.html") {
      res.writeHead(200, { "content-type": "text/html; charset=utf-8" });
      res.end(page);
    } else {
      res.writeHead(404).end();
    }
  });
  const port = await freePort();
  await new Promise((r) => server.listen(port, "127.0.0.1", r));
  try {
    const origin = `http://127.0.0.1:${port}`;
    const context = await launchBrowser();
    const tab = await newPage(context, origin);
    await tab.goto(`${origin}/browser.html?node=${encodeURIComponent(node.http)}&topic=examples.browser`);
    await tab.waitForFunction(() => document.getElementById("status").textContent !== "loading", null, { timeout: 10_000 });
    const status = await tab.textContent("#status");
    const log = await tab.textContent("#log");
    assert.equal(status, "ok", `status ${status}; log:\n${log}`);
    assert.match(log, /received on examples\.browser/);
    // The only foreign requests are the node's (herald.js and the WebSocket).
    assert.ok(tab.foreign.every((u) => u.startsWith(node.http) || u.startsWith(node.ws)), tab.foreign.join(", "));
    assert.deepEqual(tab.problems, []);
  } finally {
    server.close();
  }
});
