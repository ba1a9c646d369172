// The Socket.IO Admin UI page, served by roomcast (examples/workspace_chat.py's admin
// option), in Debian's Chromium (headless, driven by playwright-core), for
// tests/browser/test_admin_ui.py.
//
// Usage: node admin_ui_browser.mjs URL USERNAME PASSWORD SCREENSHOT_DIR
//
// Two npm socket.io-client clients join rooms ("alpha" and "beta"). The page opens at
// URL/admin/, tries the server on its own (the page presets the UI's server URL), is
// refused for want of a login, and shows its connection form with the error; the script
// logs in through the form. Then the UI's Sockets page must list both clients' socket
// ids and its Rooms page both rooms, and a third client that connects meanwhile must
// appear live. Every request the page makes must go to URL's origin (no CDN).
// Prints JSON lines {"event": NAME, ...}; the last is "done" (exit 0), or "error" (exit 1).
import { chromium } from "playwright-core";
import { io } from "socket.io-client";
import { join } from "node:path";

const WATCHDOG_MS = 50000;
const STEP_MS = 15000;
const CHROMIUM_ARGS = [
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

const [url, username, password, screenshots] = process.argv.slice(2);
const report = (event, fields = {}) =>
  process.stdout.write(JSON.stringify({ event, ...fields }) + "\n");
const finish = (code) => process.stdout.write("", () => process.exit(code));

let browser = null;
const clients = [];
const watchdog = setTimeout(() => {
  report("error", { message: `watchdog: no finish within ${WATCHDOG_MS} ms` });
  finish(3);
}, WATCHDOG_MS);

async function client(room) {
  const socket = io(url, { forceNew: true, reconnection: false });
  clients.push(socket);
  await new Promise((resolve, reject) => {
    socket.once("connect", resolve);
    socket.once("connect_error", reject);
  });
  await socket.emitWithAck("join_workspace", room);
  return socket;
}

async function main() {
  const ann = await client("alpha");
  const bob = await client("beta");
  report("clients", { ann: ann.id, bob: bob.id });

  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: CHROMIUM_ARGS,
  });
  const page = await (await browser.newContext()).newPage();
  page.setDefaultTimeout(STEP_MS);
  const problems = [];
  const origin = new URL(url).origin;
  page.on("pageerror", (err) => problems.push(`page error: ${err.message}`));
  page.on("request", (request) => {
    if (new URL(request.url()).origin !== origin) {
      problems.push(`a request left the server: ${request.url()}`);
    }
  });
  let loggedIn = false;
  const beforeLogin = [];
  page.on("response", (response) => {
    if (response.status() < 400) return;
    const what = `${response.status()} for ${response.request().method()} ${response.url()}`;
    // The refused first try: the UI closes that connection in the middle of its upgrade
    // to WebSocket, and its polling requests then racing the close may find the session
    // gone ("Session ID unknown"), as with any server. Reported, not a failure.
    if (!loggedIn && new URL(response.url()).pathname === "/socket.io/") {
      beforeLogin.push(what);
    } else {
      problems.push(what);
    }
  });

  await page.goto(url + "/admin/");
  // No session yet: the server refuses, and the UI asks for a login.
  await page.getByText(/invalid credentials/i).waitFor();
  const serverUrl = await page.getByLabel("Server URL").inputValue();
  await page.getByLabel("Username").fill(username);
  await page.getByLabel("Password").fill(password);
  await page.getByRole("button", { name: "Connect" }).click();
  await page.getByLabel("Username").waitFor({ state: "hidden" });
  loggedIn = true;
  report("logged_in", { serverUrl, beforeLogin });

  await page.goto(url + "/admin/#/sockets/");
  for (const socket of [ann, bob]) {
    await page.getByRole("cell", { name: socket.id, exact: true }).waitFor();
  }
  const cat = await client("alpha"); // connects while the UI watches: a live update
  await page.getByRole("cell", { name: cat.id, exact: true }).waitFor();
  await page.screenshot({ path: join(screenshots, "sockets.png"), fullPage: true });
  report("sockets", { cat: cat.id });

  await page.goto(url + "/admin/#/rooms/");
  for (const room of ["alpha", "beta"]) {
    await page.getByRole("cell", { name: room, exact: true }).waitFor();
  }
  await page.screenshot({ path: join(screenshots, "rooms.png"), fullPage: true });
  report("rooms", { problems });
  if (problems.length > 0) {
    throw new Error(problems.join("; "));
  }
}

main()
  .then(async () => {
    await browser.close();
    for (const socket of clients) socket.disconnect();
    clearTimeout(watchdog);
    report("done");
    finish(0);
  })
  .catch(async (err) => {
    report("error", { message: String(err && err.stack ? err.stack : err) });
    if (browser) await browser.close().catch(() => {});
    finish(1);
  });
