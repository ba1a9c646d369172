// A socket.io-client driven line by line on stdin, reporting JSON lines on stdout.
// Commands: "join ROOM", "drop" (close the transport), "reconnect", "exit".
import { createInterface } from "node:readline";
import { io } from "socket.io-client";

const url = process.argv[2];
const out = (value) => process.stdout.write(JSON.stringify(value) + "\n");
const socket = io(url, { transports: ["websocket"], reconnection: false });

socket.on("connect", () => out({ event: "connect", sid: socket.id, recovered: socket.recovered }));
socket.on("disconnect", (reason) => out({ event: "disconnect", reason }));
socket.on("connect_error", (err) => out({ event: "connect_error", message: err.message }));
socket.on("m", (...args) => out({ event: "m", args }));

const lines = createInterface({ input: process.stdin });
lines.on("line", async (line) => {
  const [command, arg] = line.trim().split(" ");
  if (command === "join") {
    await socket.emitWithAck("join", arg);
    out({ event: "joined", room: arg });
  } else if (command === "drop") {
    socket.io.engine.close();
  } else if (command === "reconnect") {
    socket.connect();
  } else if (command === "exit") {
    socket.disconnect();
    process.exit(0);
  }
});
lines.on("close", () => process.exit(0));
