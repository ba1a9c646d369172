// Drives many npm `socket.io-client` clients for tests/adapters/test_cluster_processes.py.
//
// Usage: node cluster_driver.mjs   (commands on stdin, one JSON object per line)
//   {"cmd": "connect", "id": "c1", "url": "http://127.0.0.1:PORT", "answers": {"poll": [1]},
//    "auth": {"name": "ann"}}   ("auth", optional: the CONNECT auth)
//       -> {"event": "connected", "id", "sid"}
//       "answers" maps an event name to the arguments this client acks it with; an event
//       with an ack and no entry is left unanswered (and reported as "asked").
//   {"cmd": "emit", "id": "c1", "tag": "t1", "name": "join", "args": ["room"]}
//       -> {"event": "ack", "tag": "t1", "args": [...]}   (or {"event": "ack_timeout", "tag"})
//   {"cmd": "close", "id": "c1"} -> {"event": "closed", "id"}
//   {"cmd": "drop", "id": "c1"}       closes the client's transport (the client keeps its
//       session: with connection state recovery on, "reconnect" may recover it)
//   {"cmd": "reconnect", "id": "c1"}  -> {"event": "connected", "id", "sid", "recovered"}
//   {"cmd": "exit"}
// Every event a client receives is printed: {"event": "recv", "id", "name", "args"};
// and {"event": "disconnected", "id", "reason"} when it is disconnected.
// Transports: WebSocket only; no automatic reconnection.
import readline from "node:readline";
import { io } from "socket.io-client";

const ACK_TIMEOUT_MS = 8000;
const clients = new Map();

function out(value) {
  process.stdout.write(JSON.stringify(value) + "\n");
}

function connect(cmd) {
  const options = { transports: ["websocket"], reconnection: false, forceNew: true };
  if (cmd.auth) options.auth = cmd.auth;
  const socket = io(cmd.url, options);
  const answers = cmd.answers ?? {};
  clients.set(cmd.id, socket);
  socket.on("connect", () =>
    out({ event: "connected", id: cmd.id, sid: socket.id, recovered: socket.recovered }),
  );
  socket.on("disconnect", (reason) => out({ event: "disconnected", id: cmd.id, reason }));
  socket.on("connect_error", (err) => out({ event: "connect_error", id: cmd.id, message: err.message }));
  socket.onAny((name, ...args) => {
    if (args.length > 0 && typeof args[args.length - 1] === "function") {
      const ack = args.pop();
      if (name in answers) ack(...answers[name]);
      out({ event: "asked", id: cmd.id, name, args });
      return;
    }
    out({ event: "recv", id: cmd.id, name, args });
  });
}

function emit(cmd) {
  const socket = clients.get(cmd.id);
  socket.timeout(cmd.timeout ?? ACK_TIMEOUT_MS).emit(cmd.name, ...(cmd.args ?? []), (err, ...args) => {
    if (err) out({ event: "ack_timeout", tag: cmd.tag });
    else out({ event: "ack", tag: cmd.tag, args });
  });
}

const input = readline.createInterface({ input: process.stdin });
input.on("line", (line) => {
  if (!line.trim()) return;
  const cmd = JSON.parse(line);
  switch (cmd.cmd) {
    case "connect":
      return connect(cmd);
    case "emit":
      return emit(cmd);
    case "close":
      clients.get(cmd.id)?.close();
      return out({ event: "closed", id: cmd.id });
    case "drop":
      return clients.get(cmd.id)?.io.engine.close();
    case "reconnect":
      return clients.get(cmd.id)?.connect();
    case "exit":
      for (const socket of clients.values()) socket.close();
      return process.stdout.write("", () => process.exit(0));
    default:
      out({ event: "error", message: `unknown command ${cmd.cmd}` });
  }
});
input.on("close", () => {
  for (const socket of clients.values()) socket.close();
  process.exit(0);
});
