// A real Node `socket.io-client` 4.8 peer for tests/interop/test_node_client.py.
//
// Usage: node client_scenarios.mjs URL PARSER SCENARIO
//   URL       the roomcast server, e.g. http://127.0.0.1:40001
//   PARSER    "json" (socket.io's default parser) or "msgpack" (socket.io-msgpack-parser)
//   SCENARIO  one of the functions in SCENARIOS below
//
// Every client uses transports: ["websocket"] and reconnection: false. The script prints
// what it observes as JSON lines {"event": NAME, ...}; binary values (Buffer, ArrayBuffer,
// typed arrays) are printed as {"$bin": BASE64}. It exits 0 after {"event": "done"}, 1
// after {"event": "error", "message": ...} (a failed expectation or an exception), and 3
// if the scenario runs longer than WATCHDOG_MS. The server app it talks to is
// tests/interop/app.py.
import { io } from "socket.io-client";
import msgpackParser from "socket.io-msgpack-parser";

const WATCHDOG_MS = 8000;
const TOKEN = "s3cret";
const DISCONNECT_CYCLES = 10;

const [url, parserName, scenario] = process.argv.slice(2);
if (!url || !["json", "msgpack"].includes(parserName) || !scenario) {
  process.stderr.write("usage: node client_scenarios.mjs URL json|msgpack SCENARIO\n");
  process.exit(2);
}
const base = {
  transports: ["websocket"],
  reconnection: false,
  ...(parserName === "msgpack" ? { parser: msgpackParser } : {}),
};

// -- output -----------------------------------------------------------------------------

function toJson(value) {
  if (Buffer.isBuffer(value) || ArrayBuffer.isView(value)) {
    const view = Buffer.from(value.buffer, value.byteOffset, value.byteLength);
    return { $bin: view.toString("base64") };
  }
  if (value instanceof ArrayBuffer) return { $bin: Buffer.from(value).toString("base64") };
  if (Array.isArray(value)) return value.map(toJson);
  if (value !== null && typeof value === "object") {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, toJson(v)]));
  }
  return value === undefined ? null : value;
}

function report(event, fields = {}) {
  process.stdout.write(JSON.stringify(toJson({ event, ...fields })) + "\n");
}

function finish(code) {
  // Pipes are synchronous on Linux, but wait for the write anyway before exiting.
  process.stdout.write("", () => process.exit(code));
}

// -- helpers ----------------------------------------------------------------------------

function connect(nsp = "", extra = {}) {
  return io(url + nsp, { ...base, ...extra });
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

// An emit with an ack callback that resolves with every ack argument (emitWithAck keeps
// only the first one).
function request(socket, event, ...args) {
  return new Promise((resolve) => socket.emit(event, ...args, (...reply) => resolve(reply)));
}

function engineClosed(socket) {
  // The Manager closes its Engine.IO socket once its last namespace socket is gone; wait
  // for that so the DISCONNECT packet and the close frame were really written.
  return new Promise((resolve) => {
    const engine = socket.io.engine;
    if (!engine || engine.readyState === "closed") resolve();
    else engine.once("close", (reason) => resolve(reason));
  });
}

function patterned(length) {
  const buffer = Buffer.alloc(length);
  for (let i = 0; i < length; i++) buffer[i] = i % 251;
  return buffer;
}

// -- scenarios --------------------------------------------------------------------------

const SCENARIOS = {
  // The server's connect handler sees the auth payload and emits it back as auth_echo.
  async connect_auth() {
    const auth = { token: TOKEN, user: "ada", n: 7, tags: ["a", "b"], nested: { ok: true } };
    const socket = connect("", { auth });
    const echoed = next(socket, "auth_echo");
    await connected(socket);
    report("connect", { id: socket.id });
    report("auth_echo", { args: await echoed });
    socket.disconnect();
  },

  // /private refuses a bad token with data, and accepts the right one.
  async refused() {
    const bad = connect("/private", { auth: { token: "wrong" } });
    const err = await new Promise((resolve) => bad.once("connect_error", resolve));
    report("connect_error", {
      message: err.message,
      data: err.data,
      connected: bad.connected,
      active: bad.active,
    });
    const good = connect("/private", { auth: { token: TOKEN } });
    await connected(good);
    report("connect", { id: good.id, whoami: await good.emitWithAck("whoami") });
    good.disconnect();
  },

  // "/" and "/admin" on one Manager, hence one Engine.IO connection.
  async two_namespaces() {
    const root = connect("", { auth: { who: "root" } });
    const admin = connect("/admin", { auth: { who: "admin" } });
    await Promise.all([connected(root), connected(admin)]);
    report("manager", { shared: root.io === admin.io });
    report("whoami", {
      root: { id: root.id, reply: await root.emitWithAck("whoami") },
      admin: { id: admin.id, reply: await admin.emitWithAck("whoami") },
    });
    // An event handled only in /admin: the root namespace gets no handler (no ack), the
    // admin one answers.
    report("admin_only", { reply: await admin.emitWithAck("admin_only", "x") });
    admin.disconnect();
    // The root socket keeps the shared connection open after /admin left.
    report("after_admin_left", { root: await root.emitWithAck("whoami") });
    root.disconnect();
  },

  // The seed example: a message reaches its workspace and never another.
  async room_isolation() {
    const members = { alice: "ws-1", bob: "ws-1", carol: "ws-2" };
    const sockets = {};
    const received = {};
    for (const name of Object.keys(members)) {
      const socket = connect("", { forceNew: true, auth: { name } });
      received[name] = [];
      socket.on("receive_message", (message) => received[name].push(message));
      sockets[name] = socket;
    }
    await Promise.all(Object.values(sockets).map(connected));
    const joins = {};
    for (const [name, workspace] of Object.entries(members)) {
      joins[name] = await sockets[name].emitWithAck("join_workspace", workspace);
    }
    report("joins", { joins });
    const dispatches = {
      alice: await sockets.alice.emitWithAck("dispatch_message", {
        workspaceId: "ws-1",
        textMarker: "from-alice",
      }),
      carol: await sockets.carol.emitWithAck("dispatch_message", {
        workspaceId: "ws-2",
        textMarker: "from-carol",
      }),
      // bob is not in ws-2: the example refuses.
      bob: await sockets.bob.emitWithAck("dispatch_message", {
        workspaceId: "ws-2",
        textMarker: "from-bob",
      }),
    };
    report("dispatches", { dispatches });
    // Each connection's frames arrive in order: once a barrier ack is back, everything
    // the server queued for that socket before it has arrived too.
    for (const socket of Object.values(sockets)) await socket.emitWithAck("barrier");
    const ids = Object.fromEntries(Object.entries(sockets).map(([n, s]) => [n, s.id]));
    // The seed's clients read `timestamp` with Date.parse: it must give a number.
    const parsed = Object.values(received)
      .flat()
      .map((m) => Date.parse(m.timestamp));
    report("received", { ids, received, parsed });
    for (const socket of Object.values(sockets)) socket.disconnect();
  },

  // Acks both ways: client -> handler return value, server socket.call -> client answer.
  async acks() {
    const socket = connect();
    socket.on("question", (payload, answer) => answer({ answer: payload.q + 1 }, "extra"));
    await connected(socket);
    report("echo", { reply: await request(socket, "echo", 1, "two", { three: [3] }, null, true) });
    report("add", { reply: await socket.emitWithAck("add", 2, 3) });
    report("noop", { reply: await request(socket, "noop") });
    report("timeout_add", { reply: await socket.timeout(2000).emitWithAck("add", 40, 2) });
    report("ask_me", { reply: await socket.emitWithAck("ask_me", { q: 41 }) });
    socket.disconnect();
  },

  // Buffers nested in objects, both ways, in events and in acks.
  async binary() {
    const socket = connect();
    socket.on("transform", (payload, answer) => {
      const data = Buffer.from(payload.data);
      answer({ reversed: Buffer.from(data).reverse(), length: data.length });
    });
    const pushed = next(socket, "binary_push");
    await connected(socket);
    const small = Buffer.from([0, 1, 2, 253, 254, 255]);
    const payload = {
      name: "blob",
      data: small,
      nested: { list: [Buffer.from("hi"), 5, { deep: patterned(100000) }] },
    };
    report("echo", { reply: await request(socket, "echo", payload, Buffer.from([42])) });
    report("upload", { reply: await socket.emitWithAck("upload", { file: small, size: 6 }) });
    report("push_binary", { reply: await socket.emitWithAck("push_binary") });
    const args = await pushed;
    report("binary_push", { args, isBuffer: Buffer.isBuffer(args[0].blob) });
    report("ask_binary", { reply: await socket.emitWithAck("ask_binary") });
    socket.disconnect();
  },

  // server.to(room).call(...) collects ana's and ben's answers; cy gets the event but
  // answers only after the window closed (a late answer the server must ignore).
  async broadcast_acks() {
    const names = ["ana", "ben", "cy"];
    const sockets = Object.fromEntries(
      names.map((name) => [name, connect("", { forceNew: true, auth: { name } })]),
    );
    sockets.ana.on("poll", (question, answer) => answer({ voter: "ana", question }));
    sockets.ben.on("poll", (question, answer) => answer({ voter: "ben", question }, 2));
    let late = null;
    sockets.cy.on("poll", (question, answer) => {
      late = answer;
    });
    await Promise.all(Object.values(sockets).map(connected));
    for (const socket of Object.values(sockets)) {
      await socket.emitWithAck("join_room", "voters");
    }
    const reply = await sockets.ana.emitWithAck("start_poll", "voters", "lunch?");
    await sockets.cy.emitWithAck("barrier");
    const ids = Object.fromEntries(Object.entries(sockets).map(([n, s]) => [n, s.id]));
    report("poll", { ids, reply, cyPolled: late !== null });
    if (late !== null) late({ voter: "cy", question: "too late" });
    // The server is still fine after the late answer.
    report("after_late", { reply: await sockets.cy.emitWithAck("barrier") });
    for (const socket of Object.values(sockets)) socket.disconnect();
  },

  // socket.disconnect(): the client says "io client disconnect", the server
  // "client namespace disconnect". DISCONNECT_CYCLES connections in turn, each sending one
  // last event just before it leaves: how the frames fall into TCP segments varies, and
  // every way must work.
  async client_disconnect() {
    for (let cycle = 0; cycle < DISCONNECT_CYCLES; cycle++) {
      const socket = connect("", { forceNew: true, auth: { name: "leaver", cycle } });
      await connected(socket);
      report("connect", { id: socket.id, cycle });
      await socket.emitWithAck("barrier");
      const reason = next(socket, "disconnect");
      const closed = engineClosed(socket);
      socket.emit("upload", { last: "words", cycle });
      socket.disconnect();
      report("disconnect", { reason: (await reason)[0], cycle });
      await closed;
    }
  },

  // Server-side socket.disconnect(): "io server disconnect".
  async server_disconnect() {
    const socket = connect("", { auth: { name: "kicked" } });
    await connected(socket);
    report("connect", { id: socket.id });
    const reason = next(socket, "disconnect");
    socket.emit("kick_me");
    report("disconnect", { reason: (await reason)[0], active: socket.active });
  },

  // The test shuts the server down after "connect": "transport close".
  async server_shutdown() {
    const socket = connect("", { auth: { name: "survivor" } });
    await connected(socket);
    const reason = next(socket, "disconnect");
    report("connect", { id: socket.id });
    report("disconnect", { reason: (await reason)[0] });
  },

  // The server pings every 100 ms: the connection lives on, answering each ping.
  async heartbeat() {
    const socket = connect();
    let pings = 0;
    socket.io.on("ping", () => pings++);
    await connected(socket);
    await new Promise((resolve) => setTimeout(resolve, 1000));
    const reply = await socket.emitWithAck("barrier");
    report("alive", { id: socket.id, connected: socket.connected, pings, reply });
    socket.disconnect();
  },

  // "lobby" has two members; the leaver disconnects, and the stayer gets the "left" the
  // server's disconnecting handler sent. Then the test starts killed_in_room and kills
  // it: a second "left". The stayer reports both and leaves.
  async last_moments() {
    const stay = connect("", { forceNew: true, auth: { name: "stayer" } });
    const leave = connect("", { forceNew: true, auth: { name: "leaver" } });
    await Promise.all([connected(stay), connected(leave)]);
    await stay.emitWithAck("join_room", "lobby");
    await leave.emitWithAck("join_room", "lobby");
    report("joined", { stayer: stay.id, leaver: leave.id });
    const first = next(stay, "left");
    leave.disconnect();
    report("left", { args: await first });
    // Registered before yielding to the event loop: no "left" can slip past.
    const second = next(stay, "left");
    report("left", { args: await second });
    const closed = engineClosed(stay);
    stay.disconnect();
    await closed;
  },

  // Joins "lobby", reports "connect", then waits to be killed (SIGKILL) by the test.
  async killed_in_room() {
    const socket = connect("", { auth: { name: "victim" } });
    await connected(socket);
    const rooms = await socket.emitWithAck("join_room", "lobby");
    report("connect", { id: socket.id, rooms });
    await new Promise(() => {});
  },

  // The test kills this process (SIGKILL) after "connect".
  async killed() {
    const socket = connect("", { auth: { name: "victim" } });
    await connected(socket);
    report("connect", { id: socket.id });
    await new Promise(() => {});
  },
};

const run = SCENARIOS[scenario];
if (!run) {
  report("error", { message: `unknown scenario ${scenario}` });
  finish(1);
} else {
  setTimeout(() => {
    report("error", { message: `scenario ${scenario} timed out` });
    finish(3);
  }, WATCHDOG_MS).unref();
  run().then(
    () => {
      report("done");
      finish(0);
    },
    (err) => {
      report("error", { message: String(err?.stack || err), data: err?.data ?? null });
      finish(1);
    },
  );
}
