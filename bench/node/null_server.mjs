// A "null" contract server: the bench contract (docs/bench-contract.md) on raw node:net
// with hand-rolled WebSocket framing and no Socket.IO library, written only to be fast.
// It is not a reference peer: it exists to measure the load generator's own ceiling
// (bench/run.py --servers null), i.e. how many messages per second the load generator can
// take on its one core when the server is not the limit. Heartbeats are not implemented.
import { createHash } from "node:crypto";
import net from "node:net";

const port = Number(process.env.PORT ?? 5000);
const WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
const rooms = new Map(); // name -> Set<Conn>
let nextId = 0;

function frame(str) {
  const payload = Buffer.from(str);
  const len = payload.length;
  const hdr = len < 126 ? 2 : len < 65536 ? 4 : 10;
  const out = Buffer.allocUnsafe(hdr + len);
  out[0] = 0x81;
  if (hdr === 2) out[1] = len;
  else if (hdr === 4) {
    out[1] = 126;
    out.writeUInt16BE(len, 2);
  } else {
    out[1] = 127;
    out.writeBigUInt64BE(BigInt(len), 2);
  }
  payload.copy(out, hdr);
  return out;
}

let dirty = [];
let scheduled = false;
function flushAll() {
  scheduled = false;
  const list = dirty;
  dirty = [];
  for (const c of list) {
    const out = c.out;
    c.out = null;
    if (!c.sock.destroyed) c.sock.write(out.length === 1 ? out[0] : Buffer.concat(out));
  }
}

class Conn {
  constructor(sock) {
    this.sock = sock;
    this.pending = null;
    this.upgraded = false;
    this.out = null;
    this.rooms = new Set();
    sock.setNoDelay(true);
    sock.on("data", (chunk) => this.onData(chunk));
    sock.on("error", () => {});
    sock.on("close", () => {
      for (const r of this.rooms) rooms.get(r)?.delete(this);
    });
  }

  queue(buf) {
    if (this.out === null) {
      this.out = [];
      dirty.push(this);
      if (!scheduled) {
        scheduled = true;
        setImmediate(flushAll);
      }
    }
    this.out.push(buf);
  }

  onData(chunk) {
    let buf = this.pending ? Buffer.concat([this.pending, chunk]) : chunk;
    let i = 0;
    if (!this.upgraded) {
      const end = buf.indexOf("\r\n\r\n");
      if (end < 0) {
        this.pending = buf;
        return;
      }
      const head = buf.toString("latin1", 0, end);
      const key = /sec-websocket-key:\s*(\S+)/i.exec(head)?.[1] ?? "";
      const accept = createHash("sha1").update(key + WS_GUID).digest("base64");
      this.sock.write(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
          `Sec-WebSocket-Accept: ${accept}\r\n\r\n`,
      );
      this.upgraded = true;
      this.queue(frame(`0{"sid":"n${nextId++}","upgrades":[],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}`));
      i = end + 4;
    }
    const n = buf.length;
    while (n - i >= 6) {
      const b0 = buf[i];
      let len = buf[i + 1] & 0x7f;
      let hdr = 2;
      if (len === 126) {
        len = buf.readUInt16BE(i + 2);
        hdr = 4;
      } else if (len === 127) {
        if (n - i < 14) break;
        len = Number(buf.readBigUInt64BE(i + 2));
        hdr = 10;
      }
      if (n - i < hdr + 4 + len) break;
      const maskAt = i + hdr;
      const start = maskAt + 4;
      const payload = Buffer.allocUnsafe(len);
      for (let k = 0; k < len; k++) payload[k] = buf[start + k] ^ buf[maskAt + (k & 3)];
      i = start + len;
      const op = b0 & 0x0f;
      if (op === 1) this.onText(payload.toString("utf8"));
      else if (op === 8) this.sock.end();
    }
    this.pending = i < n ? buf.subarray(i) : null;
  }

  onText(text) {
    if (text === "40") {
      this.queue(frame(`40{"sid":"s${nextId++}"}`));
      return;
    }
    if (!text.startsWith("42")) return;
    const bracket = text.indexOf("[");
    const ackId = bracket > 2 ? text.slice(2, bracket) : null;
    const [name, arg] = JSON.parse(text.slice(bracket));
    if (name === "join") {
      if (!rooms.has(arg)) rooms.set(arg, new Set());
      rooms.get(arg).add(this);
      this.rooms.add(arg);
      if (ackId !== null) this.queue(frame(`43${ackId}${JSON.stringify([arg])}`));
    } else if (name === "publish") {
      const f = frame(`42${JSON.stringify(["message", arg.payload])}`);
      for (const member of rooms.get(arg.room) ?? []) member.queue(f);
      if (ackId !== null) this.queue(frame(`43${ackId}[]`));
    } else if (name === "echo" && ackId !== null) {
      this.queue(frame(`43${ackId}${JSON.stringify([arg])}`));
    }
  }
}

net.createServer((sock) => new Conn(sock)).listen(port, "127.0.0.1", () => {
  console.log(`null contract server on 127.0.0.1:${port}`);
});
process.on("SIGTERM", () => process.exit(0));
