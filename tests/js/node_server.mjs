// A real Node `socket.io` 4.8 server: the peer for tests/engine/test_client.py.
//
// Usage: node node_server.mjs [--json-port=N] [--tls-cert=PEM --tls-key=PEM]
//
// Starts these servers on 127.0.0.1, each on a port the OS picks (port 0):
//   json      the default JSON parser, default heartbeat (pingInterval 25000 ms); on port N
//             with --json-port=N (a test restarts the server on the same port)
//   msgpack   the parser from `socket.io-msgpack-parser`
//   fastping  the JSON parser with pingInterval 200 ms / pingTimeout 200 ms
//   recovery  the JSON parser with connectionStateRecovery (maxDisconnectionDuration 2 min)
//   tls       (with --tls-cert and --tls-key) the JSON parser on an HTTPS server
// and prints one JSON line with their ports: {"json": 40001, "msgpack": 40002, ...}.
//
// Exits when its stdin closes (the test process went away) or on SIGTERM / SIGINT.
//
// Namespaces "/" and "/admin" both run the handlers below. "/admin" has an auth middleware:
// it accepts only `auth.token === "s3cret"` and otherwise refuses the CONNECT with
// CONNECT_ERROR {"message": "not authorized", "data": {"reason": "bad token"}}.
//
// Handlers (the client's last argument may be an ack callback):
//   whoami()                 ack({sid, eio, namespace, auth, header, query}): the Socket.IO sid,
//                            the Engine.IO session id, the handshake auth payload, the
//                            X-Roomcast-Test request header and the `extra` query parameter
//   echo(...args)            ack(...args); without an ack, emits "echo" back with the args
//   emit-back(name, ...args) emits `name` with `args` to this socket (binary included)
//   call-client(name, ...args)
//                            emits `name` with `args` to this socket and an ack of its own,
//                            waits (2 s at most) for the client's answer and acks the
//                            caller with {"answer": [...]} or {"error": "..."}
//   kick()                   disconnects this socket from the namespace, server side
//                            (the client sees DISCONNECT: "io server disconnect")
//   drop()                   closes the whole Engine.IO connection (socket.conn.close()):
//                            the client sees its transport close and should reconnect
//   count()                  ack(number of sockets connected to this namespace)
//   hold()                   never acks (for a call that is pending when the connection drops)
//   join(room)               joins `room`, then acks
//   to-room(room, ...args)   emits "m" with `args` to every socket in `room` (a broadcast:
//                            on the recovery server it carries an offset), then acks
//   recovered()              ack(socket.recovered)
//   transport()              ack(the Engine.IO transport's name: "polling" or "websocket")
//   disconnect-reason(sid)   waits (2 s at most) until the socket `sid` of this server has
//                            disconnected and acks its reason ("client namespace disconnect",
//                            "transport close", ...), or null
import { readFileSync } from "node:fs";
import { createServer } from "node:http";
import { createServer as createHttpsServer } from "node:https";
import { Server } from "socket.io";
import msgpackParser from "socket.io-msgpack-parser";

const ADMIN_TOKEN = "s3cret";

// Per server: sid -> disconnect reason, and sid -> callbacks waiting for it.
function disconnectBook() {
  return { reasons: new Map(), waiters: new Map() };
}

function recordDisconnect(book, sid, reason) {
  book.reasons.set(sid, reason);
  for (const resolve of book.waiters.get(sid) || []) resolve(reason);
  book.waiters.delete(sid);
}

function disconnectReason(book, sid) {
  if (book.reasons.has(sid)) return Promise.resolve(book.reasons.get(sid));
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve(null), 2000);
    const list = book.waiters.get(sid) || [];
    list.push((reason) => {
      clearTimeout(timer);
      resolve(reason);
    });
    book.waiters.set(sid, list);
  });
}

function popAck(args) {
  if (args.length > 0 && typeof args[args.length - 1] === "function") {
    return args.pop();
  }
  return null;
}

function attachHandlers(nsp, book) {
  nsp.on("connection", (socket) => {
    socket.on("disconnect", (reason) => recordDisconnect(book, socket.id, reason));

    socket.on("whoami", (...args) => {
      const ack = popAck(args);
      const info = {
        sid: socket.id,
        eio: socket.conn.id,
        namespace: nsp.name,
        auth: socket.handshake.auth,
        header: socket.handshake.headers["x-roomcast-test"] ?? null,
        query: socket.handshake.query.extra ?? null,
      };
      if (ack) ack(info);
      else socket.emit("whoami", info);
    });

    socket.on("echo", (...args) => {
      const ack = popAck(args);
      if (ack) ack(...args);
      else socket.emit("echo", ...args);
    });

    socket.on("emit-back", (...args) => {
      const ack = popAck(args);
      const [name, ...rest] = args;
      socket.emit(name, ...rest);
      if (ack) ack();
    });

    socket.on("call-client", (...args) => {
      const ack = popAck(args);
      const [name, ...rest] = args;
      socket.timeout(2000).emit(name, ...rest, (err, ...answer) => {
        if (!ack) return;
        if (err) ack({ error: String(err.message || err) });
        else ack({ answer });
      });
    });

    socket.on("kick", () => {
      socket.disconnect();
    });

    socket.on("drop", () => {
      socket.conn.close();
    });

    socket.on("count", (...args) => {
      const ack = popAck(args);
      if (ack) ack(nsp.sockets.size);
    });

    socket.on("hold", () => {});

    socket.on("join", (...args) => {
      const ack = popAck(args);
      socket.join(args[0]);
      if (ack) ack();
    });

    socket.on("to-room", (...args) => {
      const ack = popAck(args);
      const [room, ...rest] = args;
      nsp.to(room).emit("m", ...rest);
      if (ack) ack();
    });

    socket.on("transport", (...args) => {
      const ack = popAck(args);
      if (ack) ack(socket.conn.transport.name);
    });

    socket.on("recovered", (...args) => {
      const ack = popAck(args);
      if (ack) ack(socket.recovered);
    });

    socket.on("disconnect-reason", async (...args) => {
      const ack = popAck(args);
      const reason = await disconnectReason(book, args[0]);
      if (ack) ack(reason);
    });
  });
}

function setUp(io) {
  const book = disconnectBook();
  attachHandlers(io.of("/"), book);
  const admin = io.of("/admin");
  admin.use((socket, next) => {
    const auth = socket.handshake.auth || {};
    if (auth.token === ADMIN_TOKEN) {
      next();
      return;
    }
    const err = new Error("not authorized");
    err.data = { reason: "bad token" };
    next(err);
  });
  attachHandlers(admin, book);
}

function listen(options, { port = 0, httpServer = createServer() } = {}) {
  return new Promise((resolve, reject) => {
    const io = new Server(httpServer, { serveClient: false, ...options });
    setUp(io);
    httpServer.once("error", reject);
    httpServer.listen(port, "127.0.0.1", () => resolve({ io, port: httpServer.address().port }));
  });
}

const args = Object.fromEntries(
  process.argv.slice(2).map((arg) => {
    const [key, value] = arg.replace(/^--/, "").split("=");
    return [key, value];
  }),
);

const servers = {
  json: await listen({}, { port: Number(args["json-port"] ?? 0) }),
  msgpack: await listen({ parser: msgpackParser }),
  fastping: await listen({ pingInterval: 200, pingTimeout: 200 }),
  recovery: await listen({
    connectionStateRecovery: { maxDisconnectionDuration: 120000, skipMiddlewares: true },
  }),
};
if (args["tls-cert"] && args["tls-key"]) {
  const httpServer = createHttpsServer({
    cert: readFileSync(args["tls-cert"]),
    key: readFileSync(args["tls-key"]),
  });
  servers.tls = await listen({}, { httpServer });
}

const ports = Object.fromEntries(Object.entries(servers).map(([k, v]) => [k, v.port]));
process.stdout.write(JSON.stringify(ports) + "\n");

function shutdown() {
  process.exit(0);
}

process.on("SIGTERM", shutdown);
process.on("SIGINT", shutdown);
process.stdin.on("end", shutdown);
process.stdin.on("close", shutdown);
process.stdin.on("error", shutdown);
process.stdin.resume();
