// The bench contract (docs/bench-contract.md) on Node socket.io 4.8: the reference peer.
// One process, 127.0.0.1:$PORT, WebSocket transport, exits on SIGTERM.
import { createServer } from "node:http";
import { Server } from "socket.io";

const port = Number(process.env.PORT ?? 5000);
const pingInterval = Number(process.env.PING_INTERVAL_MS ?? 25000);
const pingTimeout = Number(process.env.PING_TIMEOUT_MS ?? 20000);

const httpServer = createServer();
const io = new Server(httpServer, {
  pingInterval,
  pingTimeout,
  perMessageDeflate: false,
  httpCompression: false,
  serveClient: false,
  cors: undefined,
});

io.on("connection", (socket) => {
  socket.on("join", (room, ack) => {
    socket.join(room);
    if (typeof ack === "function") ack(room);
  });
  socket.on("publish", (msg, ack) => {
    io.to(msg.room).emit("message", msg.payload);
    if (typeof ack === "function") ack();
  });
  socket.on("echo", (value, ack) => {
    if (typeof ack === "function") ack(value);
  });
});

httpServer.listen(port, "127.0.0.1", () => {
  console.log(`node socket.io ${process.versions.node} serving on 127.0.0.1:${port}`);
});

process.on("SIGTERM", () => process.exit(0));
process.on("SIGINT", () => process.exit(0));
