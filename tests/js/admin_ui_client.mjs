// npm's socket.io-client acting as the Socket.IO Admin UI (connecting to /admin as the
// UI's App.vue does: default transports, credentials, auth {username, password}), next to
// two ordinary clients. Prints one JSON line per step; the last one is {"event": "done"}.
// Usage: node admin_ui_client.mjs URL USERNAME PASSWORD
import { io } from "socket.io-client";

const [url, username, password] = process.argv.slice(2);
const out = (value) => process.stdout.write(JSON.stringify(value) + "\n");
const STEP_TIMEOUT = 10_000;

// Every event of a socket, kept so that a wait never misses one that came before it.
function recorder(socket) {
  const seen = [];
  let wake = () => {};
  socket.onAny((event, ...args) => {
    seen.push({ event, args });
    wake();
  });
  return {
    seen,
    async next(event, matches = () => true) {
      const deadline = Date.now() + STEP_TIMEOUT;
      for (;;) {
        const index = seen.findIndex((item) => item.event === event && matches(item.args));
        if (index >= 0) {
          return seen.splice(index, 1)[0].args;
        }
        if (Date.now() > deadline) {
          throw new Error(`no ${event} within ${STEP_TIMEOUT} ms; seen: ${JSON.stringify(seen)}`);
        }
        await new Promise((resolve) => {
          wake = resolve;
          setTimeout(resolve, 100);
        });
      }
    },
  };
}

function connect(path, options) {
  const socket = io(url + path, { forceNew: true, reconnection: false, ...options });
  return new Promise((resolve, reject) => {
    socket.once("connect", () => resolve(socket));
    socket.once("connect_error", (err) => reject(err));
  });
}

function adminOptions(auth) {
  // What the UI passes to io() (ui/src/App.vue, tryConnect).
  return { withCredentials: true, transports: ["polling", "websocket"], path: "/socket.io", auth };
}

async function main() {
  // A wrong password: the UI shows its login form again for exactly this message.
  try {
    await connect("/admin", adminOptions({ username, password: "wrong" }));
    out({ event: "error", message: "a wrong password was let in" });
    process.exit(1);
  } catch (err) {
    out({ event: "refused", message: err.message });
  }

  const pending = io(url + "/admin", {
    forceNew: true,
    reconnection: false,
    ...adminOptions({ username, password }),
  });
  const admin = recorder(pending);
  await new Promise((resolve, reject) => {
    pending.once("connect", resolve);
    pending.once("connect_error", reject);
  });
  const [session] = await admin.next("session");
  const [config] = await admin.next("config");
  const [allSockets] = await admin.next("all_sockets");
  const [firstStats] = await admin.next("server_stats");
  out({ event: "greeting", adminId: pending.id, session, config, allSockets, firstStats });

  const ann = await connect("/", {});
  const bob = await connect("/", {});
  const annEvents = recorder(ann);
  const bobEvents = recorder(bob);
  await ann.emitWithAck("join", "lobby");
  await bob.emitWithAck("join", "lobby");
  const [annShown] = await admin.next("socket_connected", ([s]) => s.id === ann.id);
  const [bobShown] = await admin.next("socket_connected", ([s]) => s.id === bob.id);
  const joined = [];
  for (const who of [ann.id, bob.id]) {
    joined.push(await admin.next("room_joined", ([, room, id]) => room === "lobby" && id === who));
  }
  ann.emit("chat", "lobby", "hello");
  const received = await admin.next(
    "event_received",
    ([, id, args]) => id === ann.id && args[0] === "chat",
  );
  await bobEvents.next("chat");
  const sent = await admin.next("event_sent", ([, id]) => id === bob.id);
  out({ event: "feed", ann: ann.id, bob: bob.id, annShown, bobShown, joined, received, sent });

  // The UI's actions, with a socket's id as the room filter (its socket page does so).
  pending.emit("join", "/", "vip", ann.id);
  const vip = await admin.next("room_joined", ([, room]) => room === "vip");
  pending.emit("emit", "/", "vip", "notice", { n: 1 });
  const [notice] = await annEvents.next("notice");
  const bobId = bob.id; // (socket.id is cleared on disconnect)
  const bobGone = new Promise((resolve) => bob.once("disconnect", resolve));
  pending.emit("_disconnect", "/", false, bobId);
  const bobReason = await bobGone;
  const disconnected = await admin.next("socket_disconnected", ([, id]) => id === bobId);
  out({ event: "actions", vip, notice, bobReason, disconnected });

  // The periodic stats (every 2 s) carry the counts of Engine.IO connections.
  const [stats] = await admin.next("server_stats", ([s]) => s.aggregatedEvents.length > 0);
  out({ event: "stats", stats, transport: pending.io.engine.transport.name });

  // A page reload: the UI connects with the session id it was given, not the password.
  const again = io(url + "/admin", {
    forceNew: true,
    reconnection: false,
    ...adminOptions({ sessionId: session }),
  });
  const againEvents = recorder(again);
  await new Promise((resolve, reject) => {
    again.once("connect", resolve);
    again.once("connect_error", reject);
  });
  const [againConfig] = await againEvents.next("config");
  out({
    event: "session",
    config: againConfig,
    newSession: againEvents.seen.some((item) => item.event === "session"),
  });

  for (const socket of [again, pending, ann]) {
    socket.disconnect();
  }
  out({ event: "done" });
  process.exit(0);
}

main().catch((err) => {
  out({ event: "error", message: String(err && err.stack ? err.stack : err) });
  process.exit(1);
});
