// Browser test: the demo dashboard in headless Chromium against a real node — the index
// links both pages, the server-time ticker runs, the stats chart draws on its canvas, and
// the page loads nothing from outside the node. Leaves target/browser-artifacts/dashboard.png.

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync, statSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { ARTIFACTS, cleanup, launchBrowser, newPage, startHerald, waitFor } from "./harness.mjs";

let node;
let browser;

before(async () => {
  node = await startHerald({
    env: { HERALD_DEMO__ENABLED: "true", HERALD_DEMO__INTERVAL_MS: "250", HERALD_NODE_ID: "dash-node" },
  });
  browser = await launchBrowser();
}, { timeout: 60_000 });

after(cleanup, { timeout: 30_000 });

test("the index page links the dashboard and the chat", { timeout: 20_000 }, async () => {
  const page = await newPage(browser, node.http);
  await page.goto(`${node.http}/demo/`);
  const links = await page.$$eval("a", (as) => as.map((a) => a.getAttribute("href")));
  assert.ok(links.includes("dashboard.html"), `links: ${links}`);
  assert.ok(links.includes("chat.html"), `links: ${links}`);
  assert.deepEqual(page.problems, []);
  await page.close();
});

test("dashboard: the time ticker runs and the stats chart draws", { timeout: 30_000 }, async () => {
  const page = await newPage(browser, node.http);
  await page.setViewportSize({ width: 1000, height: 800 });
  await page.goto(`${node.http}/demo/dashboard.html`);
  await page.waitForFunction(() => document.body.dataset.state === "connected", null, { timeout: 10_000 });

  // #time changes at least twice (three distinct values), and the node is named.
  const seen = new Set();
  await waitFor(async () => {
    const t = await page.textContent("#time");
    if (t && t !== "–") seen.add(t);
    return seen.size >= 3;
  }, { timeoutMs: 10_000, intervalMs: 50, what: "#time to change twice" });
  for (const t of seen) assert.ok(!Number.isNaN(Date.parse(t)), `#time is a date: ${t}`);
  assert.equal(await page.textContent("#node"), "dash-node");

  // The chart got samples and its first series' line (#2f6fde) is on the canvas.
  await page.waitForFunction(() => window.__demo.points >= 6 && window.__demo.ticks >= 3, null, { timeout: 10_000 });
  const pixels = await page.evaluate(() => {
    const c = document.getElementById("chart");
    const { data } = c.getContext("2d").getImageData(0, 0, c.width, c.height);
    let line = 0;
    let nonBackground = 0;
    for (let i = 0; i < data.length; i += 4) {
      const [r, g, b] = [data[i], data[i + 1], data[i + 2]];
      if (r !== 255 || g !== 255 || b !== 255) nonBackground += 1;
      if (Math.abs(r - 0x2f) < 24 && Math.abs(g - 0x6f) < 24 && Math.abs(b - 0xde) < 24) line += 1;
    }
    return { line, nonBackground, total: data.length / 4 };
  });
  assert.ok(pixels.nonBackground > 500, `canvas drew something: ${JSON.stringify(pixels)}`);
  assert.ok(pixels.line > 50, `the connections line is drawn: ${JSON.stringify(pixels)}`);
  // One connection (this page) at least: the figure shown is a number >= 1.
  assert.ok(Number(await page.textContent("#connections")) >= 1);

  mkdirSync(ARTIFACTS, { recursive: true });
  const file = join(ARTIFACTS, "dashboard.png");
  await page.screenshot({ path: file, fullPage: true });
  const png = readFileSync(file);
  assert.equal(png.subarray(1, 4).toString(), "PNG");
  assert.ok(statSync(file).size > 10_000, `screenshot is ${statSync(file).size} bytes`);

  assert.deepEqual(page.foreign, [], "requests outside the node");
  assert.deepEqual(page.problems, []);
  await page.close();
});
