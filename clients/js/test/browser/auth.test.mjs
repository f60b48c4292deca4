// Browser test: permissions and token refresh through herald.js in headless Chromium.
// A publish the node forbids rejects with code "forbidden" (an anonymous connection outside
// auth.anonymous_publish, and the reserved herald.time topic); a short-lived HS256 token is
// renewed through getToken() (exposed from Node) when the node sends token_expired, and the
// subscription keeps receiving, without a reconnect, messages published after the first
// token expired.

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { adminPublish, cleanup, launchBrowser, mintToken, newPage, sleep, startHerald, waitFor } from "./harness.mjs";

const SECRET = "browser-test-secret-0123456789-abcdefghij";
const TOKEN_LIFE_S = 4;
let node;
let browser;

before(async () => {
  node = await startHerald({
    env: {
      HERALD_DEMO__ENABLED: "true",
      HERALD_AUTH__JWT_HS256_SECRET: SECRET,
      HERALD_AUTH__JWT_LEEWAY_MS: "0",
      HERALD_AUTH__EXPIRY_NOTICE_MS: "2000",
      HERALD_AUTH__EXPIRY_GRACE_MS: "1000",
      HERALD_AUTH__ANONYMOUS_SUBSCRIBE: "open.>,herald.time",
      HERALD_AUTH__ANONYMOUS_PUBLISH: "open.>",
      HERALD_AUTH__AUTHENTICATED_SUBSCRIBE: "feed.>",
    },
  });
  browser = await launchBrowser();
}, { timeout: 60_000 });

after(cleanup, { timeout: 30_000 });

/** A page on the node's origin with herald.js imported as window.H. */
async function clientPage() {
  const page = await newPage(browser, node.http);
  await page.goto(`${node.http}/demo/`);
  await page.evaluate(async () => {
    window.H = await import("/client/herald.js");
  });
  return page;
}

test("a forbidden publish rejects with code forbidden", { timeout: 20_000 }, async () => {
  const page = await clientPage();
  const result = await page.evaluate(async () => {
    const client = new window.H.Herald(location.origin, { reconnect: false });
    const code = (p) => p.then(() => "ok", (e) => `${e.name}:${e.code}`);
    const out = {
      allowed: await code(client.publish("open.chat", { n: 1 })),
      locked: await code(client.publish("locked.chat", { n: 2 })),
      system: await code(client.publish("herald.time", { n: 3 })),
      state: client.state,
    };
    client.close();
    return out;
  });
  assert.deepEqual(result, { allowed: "ok", locked: "HeraldError:forbidden", system: "HeraldError:forbidden", state: "connected" });
  assert.deepEqual(page.problems, []);
  await page.close();
});

test("an expiring token is renewed through getToken and the subscription goes on", { timeout: 40_000 }, async () => {
  const page = await clientPage();
  const issued = [];
  await page.exposeFunction("nodeGetToken", () => {
    const exp = Math.floor(Date.now() / 1000) + TOKEN_LIFE_S;
    issued.push(exp);
    return mintToken(SECRET, { sub: "alice", exp });
  });
  await page.evaluate(async () => {
    const log = (window.__log = { messages: [], events: [], errors: [] });
    const client = (window.__client = new window.H.Herald(location.origin, { getToken: () => window.nodeGetToken() }));
    for (const e of ["connected", "disconnected", "reconnecting"]) client.on(e, () => log.events.push(e));
    client.on("error", (err) => log.errors.push(`${err.code}: ${err.message}`));
    const sub = client.subscribe("feed.ticks", (data) => log.messages.push(data.n));
    await sub.ready;
  });
  const firstExpiryMs = issued[0] * 1000;

  // Publish a numbered message every 250 ms until two token lifetimes past the first expiry.
  const published = [];
  for (let n = 1; Date.now() < firstExpiryMs + 2 * TOKEN_LIFE_S * 1000 && n < 200; n++) {
    await adminPublish(node, "feed.ticks", { n });
    published.push({ n, at: Date.now() });
    await sleep(250);
  }
  const lastN = published[published.length - 1].n;
  await waitFor(() => page.evaluate((last) => window.__log.messages.includes(last), lastN), { what: "the last message" });
  const log = await page.evaluate(() => {
    window.__client.close();
    return window.__log;
  });

  assert.ok(issued.length >= 2, `getToken called ${issued.length} times`);
  const late = published.filter((p) => p.at > firstExpiryMs + 1000).map((p) => p.n);
  assert.ok(late.length >= 4, `messages published after the first token's expiry + grace: ${late.length}`);
  // Everything arrived, once, in order; the connection was never dropped.
  assert.deepEqual(log.messages, published.map((p) => p.n));
  assert.deepEqual(log.events, ["connected", "disconnected"], `events (the last from close()): ${log.events}`);
  assert.deepEqual(log.errors.filter((e) => !e.startsWith("token_expired")), [], `errors: ${log.errors}`);
  await page.close();
});
