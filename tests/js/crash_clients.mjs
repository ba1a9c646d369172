// Many npm `socket.io-client` sessions of the workspace chat (examples/workspace_chat.py) for
// tests/engine/test_crash_recovery.py: they join workspaces, one member of each workspace
// publishes, and all of them reconnect on their own (the client's defaults: polling, then
// the upgrade) when the server dies, so that the test can check what came back.
//
// Usage: node crash_clients.mjs URL CLIENTS ROOMS INTERVAL_MS
// Client i joins workspace "w<i % ROOMS>"; client r < ROOMS publishes to "w<r>".
// Commands on stdin, one JSON object a line:
//   {"cmd": "publish"}       publishers start sending "dispatch_message" every INTERVAL_MS
//   {"cmd": "drop", "n": N}  the first N clients that do not publish close their transport
//                            (they keep their session: the next connection may recover it)
//   {"cmd": "join_quiet"}    every client joins workspace "quiet" too, where nobody publishes
//                            -> {"event": "joined_quiet"} once all joins were acknowledged
//   {"cmd": "stop"}          publishers stop (and, after "join_quiet", client 0 sends one
//                            message to "quiet"); once every acknowledged message reached every
//                            member (or 10 s passed) prints the report
// Prints JSON lines: {"event": "ready", "sids": [...]} when every client joined;
// {"event": "dropped", "count"}; {"event": "reconnected", "id", "sid", "recovered"} for each
// later connection; {"event": "report", "clients": [...], "acked": {room: [seq, ...]}}.
import readline from "node:readline";
import { io } from "socket.io-client";

const [url, clientCount, roomCount, intervalMs] = [
  process.argv[2],
  Number(process.argv[3]),
  Number(process.argv[4]),
  Number(process.argv[5]),
];
const ACK_TIMEOUT_MS = 4000;
const out = (value) => process.stdout.write(JSON.stringify(value) + "\n");

const clients = [];
const acked = {}; // room -> seqs acknowledged to its publisher
let publishing = null;
let pending = 0; // publishes not answered yet (acknowledged, refused or timed out)
let joined = 0;
let quiet = false;

for (let i = 0; i < clientCount; i++) {
  const room = `w${i % roomCount}`;
  const socket = io(url, { forceNew: true, reconnectionDelay: 100, reconnectionDelayMax: 500 });
  const client = { id: i, room, socket, sids: [], recovered: [], received: [], errors: [] };
  clients.push(client);
  socket.on("connect", () => {
    client.sids.push(socket.id);
    client.recovered.push(socket.recovered);
    if (client.sids.length === 1) {
      socket.emitWithAck("join_workspace", room).then((answer) => {
        if (!answer.ok) client.errors.push(`join: ${JSON.stringify(answer)}`);
        joined += 1;
        if (joined === clientCount) out({ event: "ready", sids: clients.map((c) => c.sids[0]) });
      });
    } else {
      out({ event: "reconnected", id: i, sid: socket.id, recovered: socket.recovered });
    }
  });
  // (connect_error is expected while the server is down: the client tries again.)
  socket.on("receive_message", (message) => client.received.push(message.text));
}

function publish() {
  const seqs = new Map();
  publishing = setInterval(() => {
    for (let r = 0; r < roomCount; r++) {
      const room = `w${r}`;
      const seq = (seqs.get(room) ?? 0) + 1;
      seqs.set(room, seq);
      pending += 1;
      clients[r].socket
        .timeout(ACK_TIMEOUT_MS)
        .emit("dispatch_message", { workspaceId: room, textMarker: `${room}:${seq}` }, (err, answer) => {
          pending -= 1;
          if (!err && answer.ok) (acked[room] ??= []).push(seq);
        });
    }
  }, intervalMs);
}

function allDelivered() {
  const rooms = (c) => (quiet ? [c.room, "quiet"] : [c.room]);
  return clients.every((c) =>
    rooms(c).every((room) => (acked[room] ?? []).every((seq) => c.received.includes(`${room}:${seq}`))),
  );
}

async function joinQuiet() {
  quiet = true;
  const answers = await Promise.all(clients.map((c) => c.socket.emitWithAck("join_workspace", "quiet")));
  for (const [i, answer] of answers.entries()) {
    if (!answer.ok) clients[i].errors.push(`join quiet: ${JSON.stringify(answer)}`);
  }
  out({ event: "joined_quiet" });
}

async function stop() {
  clearInterval(publishing);
  const deadline = Date.now() + ACK_TIMEOUT_MS + 5000;
  // Let every publish be answered (or time out: then it may have reached some members
  // only, and the test sees it), then every acknowledged one arrive everywhere.
  while (pending > 0 && Date.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  if (quiet) {
    const answer = await clients[0].socket
      .timeout(ACK_TIMEOUT_MS)
      .emitWithAck("dispatch_message", { workspaceId: "quiet", textMarker: "quiet:1" });
    if (answer.ok) acked.quiet = [1];
    else clients[0].errors.push(`quiet: ${JSON.stringify(answer)}`);
  }
  while (!allDelivered() && Date.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  out({
    event: "report",
    acked,
    clients: clients.map((c) => ({
      id: c.id,
      room: c.room,
      sids: c.sids,
      recovered: c.recovered,
      received: c.received,
      errors: c.errors,
    })),
  });
  for (const c of clients) c.socket.close();
  process.stdout.write("", () => process.exit(0));
}

const input = readline.createInterface({ input: process.stdin });
input.on("line", (line) => {
  if (!line.trim()) return;
  const { cmd, n } = JSON.parse(line);
  if (cmd === "publish") publish();
  else if (cmd === "drop") {
    const victims = clients.slice(roomCount, roomCount + n);
    for (const c of victims) c.socket.io.engine.close();
    out({ event: "dropped", count: victims.length });
  } else if (cmd === "join_quiet") joinQuiet();
  else if (cmd === "stop") stop();
});
input.on("close", () => process.exit(0));
