// Browser test: two chat pages in headless Chromium on one node; each sees every message,
// its own included, exactly once and in the order they were sent.

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { cleanup, launchBrowser, newPage, startHerald, waitFor } from "./harness.mjs";

let node;
let browser;

before(async () => {
  node = await startHerald({ env: { HERALD_DEMO__ENABLED: "true" } });
  browser = await launchBrowser();
}, { timeout: 60_000 });

after(cleanup, { timeout: 30_000 });

/** The chat lines shown on `page`: [{who, text, offset}]. */
function lines(page) {
  return page.$$eval("#messages li", (lis) =>
    lis.map((li) => ({ who: li.querySelector("b").textContent, text: li.textContent.slice(li.querySelector("b").textContent.length), offset: li.dataset.offset })),
  );
}

async function openChat(name) {
  const page = await newPage(browser, node.http);
  await page.goto(`${node.http}/demo/chat.html`);
  await page.waitForFunction(() => document.body.dataset.state === "connected" && window.__demo.subscribed, null, { timeout: 10_000 });
  await page.fill("#name", name);
  return page;
}

async function say(page, text) {
  await page.fill("#text", text);
  await page.click("#send");
}

test("two chat pages each see both messages once, in order", { timeout: 30_000 }, async () => {
  const ann = await openChat("ann");
  const bob = await openChat("bob");

  const expected = [
    { who: "ann", text: "hello from ann" },
    { who: "bob", text: "hi ann, bob here" },
    { who: "ann", text: "bye" },
  ];
  for (const [i, m] of expected.entries()) {
    await say(m.who === "ann" ? ann : bob, m.text);
    // The next message is sent only once this one reached both pages: a defined order.
    for (const page of [ann, bob]) {
      await waitFor(async () => (await lines(page)).length >= i + 1, { timeoutMs: 10_000, what: `message ${i + 1} on a page` });
    }
  }
  await new Promise((r) => setTimeout(r, 500)); // room for a duplicate to show up

  for (const page of [ann, bob]) {
    const got = await lines(page);
    assert.deepEqual(got.map(({ who, text }) => ({ who, text })), expected);
    // demo.chat keeps history: offsets are shown and strictly increase by one.
    const offsets = got.map((l) => Number(l.offset));
    for (let i = 1; i < offsets.length; i++) assert.equal(offsets[i], offsets[i - 1] + 1, `offsets ${offsets}`);
    assert.equal(await page.inputValue("#text"), "", "the text box is cleared after sending");
    assert.deepEqual(page.foreign, [], "requests outside the node");
    assert.deepEqual(page.problems, []);
  }
  await ann.close();
  await bob.close();
});

test("a page may not publish on the reserved system topics", { timeout: 20_000 }, async () => {
  const page = await openChat("eve");
  const codes = await page.evaluate(async () => {
    const { Herald } = await import("/client/herald.js");
    const client = new Herald(location.origin, { reconnect: false });
    const code = (p) => p.then(() => "ok", (e) => e.code);
    const out = [await code(client.publish("herald.time", { x: 1 })), await code(client.publish("herald.stats", { x: 1 }))];
    client.close();
    return out;
  });
  assert.deepEqual(codes, ["forbidden", "forbidden"]);
  await page.close();
});
