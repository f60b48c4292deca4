// Browser test: a node restarted under an open chat page. Two nodes share a real
// redis-server (relay.kind = redis, history for demo.chat in Redis). The page on node A is
// subscribed; A is killed; node B publishes N messages; A starts again on the same port;
// the page reconnects, resubscribes with `since` and shows every message once, in order.

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import net from "node:net";
import { adminPublish, cleanup, freePort, launchBrowser, newPage, startHerald, startRedis, waitFor } from "./harness.mjs";

const N = 8;
let redis;
let browser;

before(async () => {
  redis = await startRedis();
  browser = await launchBrowser();
}, { timeout: 60_000 });

after(cleanup, { timeout: 30_000 });

function clusterEnv(nodeId, redisUrl = redis.url) {
  return {
    HERALD_NODE_ID: nodeId,
    HERALD_DEMO__ENABLED: "true",
    HERALD_RELAY__KIND: "redis",
    HERALD_REDIS__URL: redisUrl,
    HERALD_HISTORY: JSON.stringify([{ topics: "demo.chat", size: 200, ttl_ms: 3_600_000 }]),
  };
}

const lines = (page) =>
  page.$$eval("#messages li", (lis) => lis.map((li) => ({ text: li.textContent, offset: Number(li.dataset.offset) })));

// The page's reconnect backoff (full jitter, capped at 20 s) decides when it comes back: the
// catch-up window allows for a capped delay plus the node's start on a loaded machine.
test("a page whose node restarts catches up on every message, once, in order", { timeout: 90_000 }, async () => {
  let nodeA = await startHerald({ env: clusterEnv("node-a") });
  const nodeB = await startHerald({ env: clusterEnv("node-b") });

  const page = await newPage(browser, nodeA.http);
  const states = [];
  await page.exposeFunction("__recordState", (s) => states.push(s));
  await page.goto(`${nodeA.http}/demo/chat.html`);
  await page.waitForFunction(() => document.body.dataset.state === "connected" && window.__demo.subscribed, null, { timeout: 10_000 });
  await page.evaluate(() => {
    new MutationObserver(() => window.__recordState(document.body.dataset.state)).observe(document.body, { attributes: true, attributeFilter: ["data-state"] });
  });

  // One message before the restart, from B: the page has seen offset 1 through the relay.
  await adminPublish(nodeB, "demo.chat", { name: "b", text: "before" });
  await waitFor(async () => (await lines(page)).length === 1, { what: "the first message" });

  await nodeA.kill();
  await page.waitForFunction(() => document.body.dataset.state !== "connected", null, { timeout: 10_000 });

  const sent = [];
  for (let i = 1; i <= N; i++) {
    const answer = await adminPublish(nodeB, "demo.chat", { name: "b", text: `while down ${i}` });
    assert.equal(answer.relayed, true, JSON.stringify(answer));
    sent.push(`bwhile down ${i}`);
  }

  nodeA = await startHerald({ env: clusterEnv("node-a"), port: nodeA.port, adminPort: nodeA.adminPort });
  await waitFor(async () => (await lines(page)).length >= N + 1, { timeoutMs: 45_000, intervalMs: 100, what: `${N + 1} messages after the restart` });
  // And one live message after the catch-up, from A itself.
  await adminPublish(nodeA, "demo.chat", { name: "a", text: "after" });
  await waitFor(async () => (await lines(page)).length >= N + 2, { what: "the live message after the restart" });
  await new Promise((r) => setTimeout(r, 500)); // room for a duplicate to show up

  const got = await lines(page);
  assert.deepEqual(got.map((l) => l.text), ["bbefore", ...sent, "aafter"]);
  assert.deepEqual(got.map((l) => l.offset), Array.from({ length: N + 2 }, (_, i) => i + 1));
  assert.ok(states.includes("reconnecting"), `states seen: ${states}`);
  assert.equal(await page.evaluate(() => document.body.dataset.state), "connected");
  assert.equal(await page.textContent("#error"), "", "no error or lost notice on the page");
  assert.deepEqual(page.foreign, [], "requests outside the node");
  await page.close();
});

/** A TCP forwarder to `target` on `port` that can stop listening (and cut what it carries)
 * and listen again: a Redis the node cannot reach for a while. */
function gate(port, target) {
  const sockets = new Set();
  let server = null;
  const open = () =>
    new Promise((resolve) => {
      server = net.createServer((client) => {
        const upstream = net.connect(target.port, "127.0.0.1");
        for (const s of [client, upstream]) {
          sockets.add(s);
          s.on("close", () => sockets.delete(s));
          s.on("error", () => {});
        }
        client.pipe(upstream);
        upstream.pipe(client);
      });
      server.listen(port, "127.0.0.1", resolve);
    });
  const close = () =>
    new Promise((resolve) => {
      for (const s of sockets) s.destroy();
      server.close(() => resolve());
    });
  return { open, close, url: `redis://127.0.0.1:${port}/` };
}

test("a page that reconnects while its node cannot read history yet recovers once the node can", { timeout: 90_000 }, async () => {
  const g = gate(await freePort(), { port: Number(new URL(redis.url).port) });
  await g.open();
  let nodeA = await startHerald({ env: clusterEnv("node-a2", g.url) });
  const nodeB = await startHerald({ env: clusterEnv("node-b2") });
  const page = await newPage(browser, nodeA.http);
  await page.goto(`${nodeA.http}/demo/chat.html`);
  await page.waitForFunction(() => document.body.dataset.state === "connected" && window.__demo.subscribed, null, { timeout: 10_000 });
  const before = (await lines(page)).length;
  await adminPublish(nodeB, "demo.chat", { name: "b", text: "first" });
  await waitFor(async () => (await lines(page)).length === before + 1, { what: "the first message" });

  // Node A goes, and comes back unable to reach Redis: the page reconnects and its
  // resubscribe (with since) cannot be replayed yet.
  await nodeA.kill();
  await g.close();
  const sent = [];
  for (let i = 1; i <= N; i++) {
    await adminPublish(nodeB, "demo.chat", { name: "b", text: `gap ${i}` });
    sent.push(`bgap ${i}`);
  }
  nodeA = await startHerald({ env: clusterEnv("node-a2", g.url), port: nodeA.port, adminPort: nodeA.adminPort });
  await page.waitForFunction(() => document.body.dataset.state === "connected", null, { timeout: 45_000 });
  await waitFor(async () => (await page.textContent("#error")).includes("relay"), { timeoutMs: 20_000, what: "the page told the relay is down" });
  // Redis reachable again: the client asks again, the node replays, nothing is missing.
  await g.open();
  await waitFor(async () => (await lines(page)).length >= before + 1 + N, { timeoutMs: 30_000, intervalMs: 100, what: "the replay after the relay came back" });
  await new Promise((r) => setTimeout(r, 500)); // room for a duplicate to show up
  const got = (await lines(page)).slice(before);
  assert.deepEqual(got.map((l) => l.text), ["bfirst", ...sent]);
  const offsets = got.map((l) => l.offset);
  assert.deepEqual(offsets, offsets.map((_, i) => offsets[0] + i), "consecutive offsets, once each");
  await page.close();
  await g.close();
});
