// Debian's Chromium, headless, driven by playwright-core against the workspace chat page,
// for tests/browser/test_demo_page.py.
//
// Usage: node polling_browser_chat.mjs URL [SCREENSHOT_DIR]
//   URL             the roomcast server running examples/workspace_chat.py's app
//   SCREENSHOT_DIR  if given, each page's final screenshot is written there
//
// Three pages, each in its own browser context (no shared storage): ann and bob join
// workspace "alpha", cat joins "beta". ann and bob see each other's messages, cat sees
// none; each page lists who is online in its workspace (by the name it joined with). Then cat
// switches to "alpha": it gets alpha's history (ann's and bob's messages, above the new
// ones), not beta's, and everyone in alpha sees cat online. The page's socket.io-client
// uses its default transports (polling, then the upgrade to WebSocket). Prints JSON lines {"event": NAME, ...}; after "checkpoint" it
// waits for one line on stdin (the test checks the server meanwhile), then closes the
// browser and prints "done". Exit 0 after "done", 1 after "error", 3 on the watchdog.
import { chromium } from "playwright-core";
import { createInterface } from "node:readline";
import { join } from "node:path";

const WATCHDOG_MS = 40000;
const STEP_MS = 10000;
const QUIET_MS = 500;
// As the machine notes prescribe for Chromium here; launch() also gives the browser a
// fresh temporary --user-data-dir of its own.
const CHROMIUM_ARGS = [
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

const [url, screenshots] = process.argv.slice(2);
if (!url) {
  process.stderr.write("usage: node polling_browser_chat.mjs URL [SCREENSHOT_DIR]\n");
  process.exit(2);
}

function report(event, fields = {}) {
  process.stdout.write(JSON.stringify({ event, ...fields }) + "\n");
}

function finish(code) {
  process.stdout.write("", () => process.exit(code));
}

function check(condition, message) {
  if (!condition) throw new Error(message);
}

let browser = null;
const watchdog = setTimeout(() => {
  report("error", { message: `watchdog: no finish within ${WATCHDOG_MS} ms` });
  if (browser) browser.close().finally(() => finish(3));
  else finish(3);
}, WATCHDOG_MS);

async function openPage(name, workspace) {
  const context = await browser.newContext();
  const page = await context.newPage();
  page.setDefaultTimeout(STEP_MS);
  const problems = [];
  page.on("pageerror", (err) => problems.push(`${name}: page error: ${err.message}`));
  page.on("console", (msg) => {
    if (msg.type() === "error") problems.push(`${name}: console error: ${msg.text()}`);
  });
  const response = await page.goto(url + "/");
  check(response && response.ok(), `${name}: GET / answered ${response && response.status()}`);
  await page.locator("#status[data-state=connected]").waitFor();
  await page.fill("#name", name);
  await page.fill("#workspace", workspace);
  await page.click("#join");
  await page.locator("#current").filter({ hasText: workspace }).waitFor();
  await page.locator("#text:enabled").waitFor();
  return { name, workspace, page, problems };
}

async function say(member, text) {
  await member.page.fill("#text", text);
  await member.page.click("#send");
  // The box clears once the server acknowledged the message.
  await member.page.waitForFunction(() => document.getElementById("text").value === "");
}

async function sees(member, text) {
  await member.page.locator("#messages .message .text", { hasText: text }).first().waitFor();
}

async function texts(member) {
  return member.page.locator("#messages .message .text").allTextContents();
}

async function online(member, names) {
  // The list follows presence_join / presence_leave (each answered by who_is_here).
  await member.page.waitForFunction(
    (expected) =>
      JSON.stringify([...document.querySelectorAll("#people li")].map((li) => li.dataset.name)) ===
      JSON.stringify(expected),
    names,
  );
}

async function engineState(member) {
  return member.page.evaluate(() => ({
    sid: window.chat.socket.id,
    transport: window.chat.socket.io.engine.transport.name,
    shown: document.getElementById("transport").textContent,
  }));
}

async function main() {
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: CHROMIUM_ARGS,
  });
  report("launched", { version: browser.version() });
  const ann = await openPage("ann", "alpha");
  const bob = await openPage("bob", "alpha");
  const cat = await openPage("cat", "beta");
  const members = [ann, bob, cat];

  // Default transports: every page ends up upgraded to WebSocket.
  for (const member of members) {
    await member.page.waitForFunction(
      () => window.chat.socket.io.engine.transport.name === "websocket",
    );
  }

  await online(ann, ["ann", "bob"]);
  await online(bob, ["ann", "bob"]);
  await online(cat, ["cat"]);

  await say(ann, "hello from ann");
  await sees(bob, "hello from ann");
  await sees(ann, "hello from ann");
  await say(bob, "hi ann, bob here <b>not bold</b>");
  await sees(ann, "hi ann, bob here <b>not bold</b>");
  await say(cat, "cat talking to herself");
  await sees(cat, "cat talking to herself");

  await new Promise((resolve) => setTimeout(resolve, QUIET_MS));
  const seen = {};
  for (const member of members) seen[member.name] = await texts(member);
  const expectedAlpha = ["hello from ann", "hi ann, bob here <b>not bold</b>"];
  check(JSON.stringify(seen.ann) === JSON.stringify(expectedAlpha), `ann saw ${seen.ann}`);
  check(JSON.stringify(seen.bob) === JSON.stringify(expectedAlpha), `bob saw ${seen.bob}`);
  check(JSON.stringify(seen.cat) === JSON.stringify(["cat talking to herself"]), `cat saw ${seen.cat}`);
  // Text is shown as text: the markup in bob's message made no element.
  check((await ann.page.locator("#messages b").count()) === 0, "message text became markup");

  // cat switches to "alpha": a fresh connection, so beta's messages stay behind.
  const oldSid = (await engineState(cat)).sid;
  await cat.page.fill("#workspace", "alpha");
  await cat.page.click("#join");
  await cat.page.locator("#current").filter({ hasText: "alpha" }).waitFor();
  await cat.page.locator("#text:enabled").waitFor();
  await cat.page.waitForFunction(
    (old) => window.chat.socket.id !== old &&
      window.chat.socket.io.engine.transport.name === "websocket",
    oldSid,
  );
  for (const member of members) await online(member, ["ann", "bob", "cat"]);
  // alpha's history came with the join (shown as history), beta's did not.
  check(
    JSON.stringify(await texts(cat)) === JSON.stringify(expectedAlpha),
    `cat's history of alpha: ${await texts(cat)}`,
  );
  check((await cat.page.locator("#messages .message.history").count()) === 2, "history marked");
  await say(ann, "welcome to alpha, cat");
  await sees(cat, "welcome to alpha, cat");
  await sees(bob, "welcome to alpha, cat");
  check(
    JSON.stringify(await texts(cat)) === JSON.stringify([...expectedAlpha, "welcome to alpha, cat"]),
    `cat after switching saw ${await texts(cat)}`,
  );

  const pages = {};
  for (const member of members) pages[member.name] = await engineState(member);
  const problems = members.flatMap((member) => member.problems);
  check(problems.length === 0, problems.join("\n"));
  if (screenshots) {
    for (const member of members) {
      await member.page.screenshot({ path: join(screenshots, `${member.name}.png`) });
    }
  }
  report("checkpoint", { pages, seen });

  await new Promise((resolve) => {
    const lines = createInterface({ input: process.stdin });
    lines.once("line", () => {
      lines.close();
      resolve();
    });
  });
  await browser.close();
  browser = null;
  report("done");
}

main().then(
  () => {
    clearTimeout(watchdog);
    finish(0);
  },
  async (err) => {
    report("error", { message: String(err && err.stack ? err.stack : err) });
    if (browser) await browser.close().catch(() => {});
    finish(1);
  },
);
