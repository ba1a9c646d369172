// Node `socket.io-client` 4.8 over HTTP long-polling, for tests/interop/test_polling_peers.py.
//
// Usage: node polling_client.mjs URL MODE
//   URL   the roomcast server (tests/interop/test_polling_peers.py's app), e.g. http://127.0.0.1:40001
//   MODE  "default": the client's default transports (polling first, then the upgrade to
//         WebSocket); "polling": transports: ["polling"] (never upgrades)
//
// Three clients: a and b join workspace "alpha", c joins "beta". The script prints JSON
// lines {"event": NAME, ...}. After {"event": "checkpoint"} it waits for one line on stdin
// (the test inspects the server meanwhile), then disconnects everyone and prints
// {"event": "done"}. Exit 0 after "done", 1 after {"event": "error"}, 3 on the watchdog.
import { io } from "socket.io-client";
import { createInterface } from "node:readline";

const WATCHDOG_MS = 15000;
const QUIET_MS = 300;

const [url, mode] = process.argv.slice(2);
if (!url || !["default", "polling"].includes(mode)) {
  process.stderr.write("usage: node polling_client.mjs URL default|polling\n");
  process.exit(2);
}
const options = {
  reconnection: false,
  forceNew: true,
  ...(mode === "polling" ? { transports: ["polling"] } : {}),
};

function report(event, fields = {}) {
  process.stdout.write(JSON.stringify({ event, ...fields }) + "\n");
}

function finish(code) {
  process.stdout.write("", () => process.exit(code));
}

function check(condition, message) {
  if (!condition) throw new Error(message);
}

const watchdog = setTimeout(() => {
  report("error", { message: `watchdog: no finish within ${WATCHDOG_MS} ms` });
  finish(3);
}, WATCHDOG_MS);

function connect(name) {
  const socket = io(url, options);
  const client = { name, socket, messages: [], firstTransport: null };
  socket.on("receive_message", (message) => client.messages.push(message));
  // The transport the Engine.IO session opened on (an upgrade may finish before the
  // Socket.IO connect does).
  socket.io.once("open", () => {
    client.firstTransport = socket.io.engine.transport.name;
  });
  return new Promise((resolve, reject) => {
    socket.once("connect", () => resolve(client));
    socket.once("connect_error", (err) => reject(new Error(`${name}: ${err.message}`)));
  });
}

function upgraded(client) {
  const engine = client.socket.io.engine;
  if (engine.transport.name === "websocket") return Promise.resolve();
  return new Promise((resolve, reject) => {
    engine.once("upgrade", () => resolve());
    engine.once("upgradeError", (err) => reject(new Error(`upgrade failed: ${err.message}`)));
  });
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function until(predicate, what, ms = 3000) {
  const end = Date.now() + ms;
  while (!predicate()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

// emitWithAck resolves with the first ack argument only: this resolves with all of them.
function callAll(client, event, ...args) {
  return new Promise((resolve, reject) => {
    client.socket.timeout(3000).emit(event, ...args, (err, ...answer) => {
      if (err) reject(new Error(`${event}: ${err.message}`));
      else resolve(answer);
    });
  });
}

function patterned(length) {
  const data = Buffer.alloc(length);
  for (let i = 0; i < length; i++) data[i] = i % 251;
  return data;
}

async function main() {
  const [a, b, c] = await Promise.all([connect("a"), connect("b"), connect("c")]);
  const clients = [a, b, c];
  for (const client of clients) {
    report("connected", {
      name: client.name,
      sid: client.socket.id,
      firstTransport: client.firstTransport,
    });
  }
  if (mode === "default") {
    await Promise.all(clients.map(upgraded));
  }

  for (const [client, workspace] of [[a, "alpha"], [b, "alpha"], [c, "beta"]]) {
    const ack = await client.socket.timeout(3000).emitWithAck("join_workspace", workspace);
    check(ack.ok === true && ack.workspaceId === workspace, `join: ${JSON.stringify(ack)}`);
  }

  // One message: both members of alpha get it (the sender too), beta gets nothing.
  const sent = await a.socket
    .timeout(3000)
    .emitWithAck("dispatch_message", { workspaceId: "alpha", textMarker: "hello from a" });
  check(sent.ok === true && sent.delivered === 2, `dispatch: ${JSON.stringify(sent)}`);
  await until(() => a.messages.length === 1 && b.messages.length === 1, "hello from a");
  check(b.messages[0].text === "hello from a", JSON.stringify(b.messages));
  check(b.messages[0].sender === a.socket.id, "sender is a's socket id");

  // A burst without waiting for acks: delivered whole and in order (batched payloads).
  const burst = Array.from({ length: 30 }, (_, i) => `burst ${i} ${"x".repeat(i * 100)}`);
  for (const text of burst) {
    b.socket.emit("dispatch_message", { workspaceId: "alpha", textMarker: text });
  }
  await until(() => a.messages.length === 31 && b.messages.length === 31, "the burst");
  check(
    JSON.stringify(a.messages.slice(1).map((m) => m.text)) === JSON.stringify(burst),
    "burst order on a",
  );

  // Binary and large payloads both ways (over polling: base64 "b" packets).
  const blob = patterned(70000);
  const echoed = await callAll(a, "echo", { blob, parts: [Buffer.from([0, 255]), "text"] }, "é ☃ 𝄞");
  check(Buffer.compare(Buffer.from(echoed[0].blob), blob) === 0, "blob echoed");
  check(Buffer.from(echoed[0].parts[0]).equals(Buffer.from([0, 255])), "nested binary");
  check(echoed[0].parts[1] === "text" && echoed[1] === "é ☃ 𝄞", "text beside binary");
  const bigText = "y".repeat(200000);
  const bigEcho = await callAll(c, "echo", bigText);
  check(bigEcho[0] === bigText, "200 kB of text echoed");

  // Nothing ever reached beta.
  await sleep(QUIET_MS);
  check(c.messages.length === 0, `beta got ${JSON.stringify(c.messages)}`);

  report("checkpoint", {
    transports: Object.fromEntries(
      clients.map((client) => [client.socket.id, client.socket.io.engine.transport.name]),
    ),
    received: clients.map((client) => client.messages.length),
  });
  await new Promise((resolve) => {
    const lines = createInterface({ input: process.stdin });
    lines.once("line", () => {
      lines.close();
      resolve();
    });
  });
  for (const client of clients) client.socket.disconnect();
  report("done");
}

main().then(
  () => {
    clearTimeout(watchdog);
    finish(0);
  },
  (err) => {
    report("error", { message: String(err && err.stack ? err.stack : err) });
    finish(1);
  },
);
