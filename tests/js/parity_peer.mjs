// A real Node `socket.io-client` 4.8 peer for the production-integration tests:
// TLS (tests/interop/test_tls.py), metrics (tests/engine/test_metrics.py) and the handler
// API (tests/interop/test_handler_api.py).
//
// Usage: node parity_peer.mjs SCENARIO URL [ARGS...]
//   tls URL CA_PEM TRANSPORT   TRANSPORT: polling | websocket | upgrade (polling, then
//                              the upgrade). The client trusts only CA_PEM (the `ca`
//                              option replaces Node's list of trusted CAs).
//   untrusted URL TRANSPORT    Same server, no CA given: the connection must fail.
//   metrics URL COUNT          COUNT clients join room "r" and echo once each; "ready",
//                              then they wait for the server's "bye".
//   handlers URL               The handler-API scenario (see the test).
//
// Output: JSON lines {"event": NAME, ...}; exit 0 after {"event": "done"}, 1 after
// {"event": "error"}, 3 if the scenario runs longer than WATCHDOG_MS.
import { readFileSync } from "node:fs";
import { io } from "socket.io-client";

const WATCHDOG_MS = 8000;
const [scenario, url, ...rest] = process.argv.slice(2);

function report(event, fields = {}) {
  process.stdout.write(JSON.stringify({ event, ...fields }) + "\n");
}

function finish(code) {
  process.stdout.write("", () => process.exit(code));
}

function connected(socket) {
  if (socket.connected) return Promise.resolve();
  return new Promise((resolve, reject) => {
    socket.once("connect", resolve);
    socket.once("connect_error", reject);
  });
}

function next(socket, event) {
  return new Promise((resolve) => socket.once(event, (...args) => resolve(args)));
}

function request(socket, event, ...args) {
  return new Promise((resolve) => socket.emit(event, ...args, (...reply) => resolve(reply)));
}

function check(condition, message) {
  if (!condition) throw new Error(message);
}

const TRANSPORTS = {
  polling: { transports: ["polling"] },
  websocket: { transports: ["websocket"] },
  upgrade: { transports: ["polling", "websocket"] },
};

async function tls([caPath, transport]) {
  const socket = io(url, {
    ...TRANSPORTS[transport],
    reconnection: false,
    ca: readFileSync(caPath),
  });
  await connected(socket);
  if (transport === "upgrade" && socket.io.engine.transport.name !== "websocket") {
    await new Promise((resolve) => socket.io.engine.once("upgrade", resolve));
  }
  const [echoed] = await request(socket, "echo", "über TLS");
  const shouted = next(socket, "shouted");
  await request(socket, "shout", "to everyone");
  const [heard] = await shouted;
  report("result", { transport: socket.io.engine.transport.name, echoed, heard });
  socket.disconnect();
}

async function untrusted([transport]) {
  const socket = io(url, { ...TRANSPORTS[transport], reconnection: false });
  try {
    await connected(socket);
    report("result", { connected: true });
  } catch (err) {
    report("result", { connected: false, message: String(err && err.message) });
  } finally {
    socket.disconnect();
  }
}

async function metrics([count]) {
  const sockets = [];
  for (let i = 0; i < Number(count); i++) {
    const socket = io(url, { transports: ["websocket"], reconnection: false });
    sockets.push(socket);
  }
  await Promise.all(sockets.map(connected));
  const byes = sockets.map((socket) => next(socket, "bye"));
  for (const socket of sockets) {
    await request(socket, "join", "r");
    await request(socket, "echo", "x".repeat(100));
  }
  report("ready", { ids: sockets.map((socket) => socket.id) });
  await Promise.all(byes);
  for (const socket of sockets) socket.disconnect();
}

async function handlers() {
  const socket = io(url, { transports: ["websocket"], reconnection: false });
  const outgoing = [];
  socket.onAny((event, ...args) => outgoing.push([event, ...args]));
  await connected(socket);
  // Refused by the per-packet middleware: no handler, and no ack ever (as in Node). The
  // next event's ack proves it: events are handled in order on one connection.
  let refusedAck = false;
  socket.emit("forbidden", 1, () => {
    refusedAck = true;
  });
  const [allowed] = await request(socket, "echo", "fine");
  check(!refusedAck, "a refused event was acknowledged");
  // The handler of "echo" is then removed (off); the same event is unhandled.
  await request(socket, "remove_echo");
  let unhandledAck = null;
  socket.emit("echo", "again", (...reply) => {
    unhandledAck = reply;
  });
  const [afterOff] = await request(socket, "ping_me");
  const [seen] = await request(socket, "report");
  report("result", {
    allowed,
    refusedAck,
    unhandledAck,
    afterOff,
    seen,
    outgoing,
  });
  socket.disconnect();
}

const SCENARIOS = { tls, untrusted, metrics, handlers };

setTimeout(() => {
  report("error", { message: `watchdog: ${scenario} took over ${WATCHDOG_MS} ms` });
  process.exit(3);
}, WATCHDOG_MS).unref();

try {
  await SCENARIOS[scenario](rest);
  report("done");
  finish(0);
} catch (err) {
  report("error", { message: String((err && err.stack) || err) });
  finish(1);
}
