// roomcast bench load generator: speaks Engine.IO v4 / Socket.IO v5 over raw WebSocket
// frames on plain TCP sockets (node:net), with the minimum of parsing needed to check
// exactly-once, in-order delivery and latency. One process, one event loop, many clients.
//
// Usage: node loadgen.mjs '<json config>'   (bench/run.py builds the config)
// stdout: JSON lines; the last one is {"event":"result",...}. stderr: progress.
//
// The wire format it relies on is docs/bench-contract.md. Client frames are masked
// with a fresh key per frame (RFC 6455 §5.3); server frames must be unmasked text frames.

import { createHash, randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import net from "node:net";
import { performance } from "node:perf_hooks";
import { createInterface } from "node:readline";

const cfg = JSON.parse(process.argv[2] ?? "{}");
const HOST = "127.0.0.1";
const PORT = cfg.port;
// Several servers acting as one (a cluster): client k connects to PORTS[k % PORTS.length].
const PORTS = Array.isArray(cfg.ports) && cfg.ports.length ? cfg.ports : [PORT];
const PAYLOAD_BYTES = cfg.payloadBytes ?? 100;
const PAD = "x".repeat(PAYLOAD_BYTES);
const WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

const nowUs = () => Math.round(performance.now() * 1000);
const log = (...args) => process.stderr.write(`[loadgen ${cfg.scenario}] ${args.join(" ")}\n`);
const emit = (obj) => process.stdout.write(`${JSON.stringify(obj)}\n`);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// ---------------------------------------------------------------------------------------
// Latency histogram: 10 µs buckets to 100 ms, then 1 ms buckets to 120 s.

class Histogram {
  constructor() {
    this.fine = new Uint32Array(10_000);
    this.coarse = new Uint32Array(120_000);
    this.count = 0;
    this.max = 0;
    this.sum = 0;
  }
  record(us) {
    if (us < 0) us = 0;
    this.count++;
    this.sum += us;
    if (us > this.max) this.max = us;
    if (us < 100_000) this.fine[(us / 10) | 0]++;
    else this.coarse[Math.min(119_999, (us / 1000) | 0)]++;
  }
  percentile(p) {
    if (this.count === 0) return null;
    const target = Math.ceil((p / 100) * this.count);
    let seen = 0;
    for (let i = 0; i < this.fine.length; i++) {
      seen += this.fine[i];
      if (seen >= target) return i * 10 + 5;
    }
    for (let i = 100; i < this.coarse.length; i++) {
      seen += this.coarse[i];
      if (seen >= target) return i * 1000 + 500;
    }
    return this.max;
  }
  summary() {
    return {
      count: this.count,
      p50_us: this.percentile(50),
      p99_us: this.percentile(99),
      max_us: this.count ? this.max : null,
      mean_us: this.count ? Math.round(this.sum / this.count) : null,
    };
  }
}

// ---------------------------------------------------------------------------------------
// Server process figures from /proc (the runner passes the server's PID).

const CLK_TCK = 100;

function serverCpuSeconds() {
  if (!cfg.serverPid) return null;
  try {
    const stat = readFileSync(`/proc/${cfg.serverPid}/stat`, "latin1");
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return (Number(fields[11]) + Number(fields[12])) / CLK_TCK; // utime + stime
  } catch {
    return null;
  }
}

function serverRssKib() {
  if (!cfg.serverPid) return null;
  try {
    const status = readFileSync(`/proc/${cfg.serverPid}/status`, "latin1");
    const m = /VmRSS:\s+(\d+) kB/.exec(status);
    return m ? Number(m[1]) : null;
  } catch {
    return null;
  }
}

// ---------------------------------------------------------------------------------------
// Frames out: masked text frames with a fresh key per frame (xorshift32, seeded randomly).

let rng = randomBytes(4).readUInt32LE(0) || 1;
function nextMask() {
  rng ^= rng << 13;
  rng ^= rng >>> 17;
  rng ^= rng << 5;
  return rng >>> 0;
}

function encodeText(str) {
  const len = Buffer.byteLength(str);
  const hdr = len < 126 ? 2 : len < 65536 ? 4 : 10;
  const out = Buffer.allocUnsafe(hdr + 4 + len);
  out[0] = 0x81;
  if (hdr === 2) out[1] = 0x80 | len;
  else if (hdr === 4) {
    out[1] = 0x80 | 126;
    out.writeUInt16BE(len, 2);
  } else {
    out[1] = 0x80 | 127;
    out.writeBigUInt64BE(BigInt(len), 2);
  }
  const mask = nextMask();
  out.writeUInt32BE(mask, hdr);
  const m0 = mask >>> 24, m1 = (mask >>> 16) & 255, m2 = (mask >>> 8) & 255, m3 = mask & 255;
  const start = hdr + 4;
  out.write(str, start, "utf8");
  let i = 0;
  for (; i + 3 < len; i += 4) {
    const o = start + i;
    out[o] ^= m0;
    out[o + 1] ^= m1;
    out[o + 2] ^= m2;
    out[o + 3] ^= m3;
  }
  const masks = [m0, m1, m2, m3];
  for (; i < len; i++) out[start + i] ^= masks[i & 3];
  return out;
}

function encodeControl(opcode, payload) {
  const len = payload.length; // < 126 for control frames
  const out = Buffer.allocUnsafe(2 + 4 + len);
  out[0] = 0x80 | opcode;
  out[1] = 0x80 | len;
  const mask = nextMask();
  out.writeUInt32BE(mask, 2);
  for (let i = 0; i < len; i++) out[6 + i] = payload[i] ^ ((mask >>> (24 - 8 * (i & 3))) & 255);
  return out;
}

const PONG_FRAME_STR = "3";

// ---------------------------------------------------------------------------------------
// Counters shared by every scenario.

const stats = {
  anomalies: 0,
  anomalyKinds: {},
  badAcks: 0,
  disconnects: 0,
  connectFailures: 0,
  protocolErrors: 0,
  unexpected: 0,
};

function anomaly(kind) {
  stats.anomalies++;
  stats.anomalyKinds[kind] = (stats.anomalyKinds[kind] ?? 0) + 1;
}

const connectHist = new Histogram();
let tearingDown = false;

// ---------------------------------------------------------------------------------------
// One client.

const MESSAGE_PREFIX = Buffer.from('42["message","');

let dirty = [];
let flushScheduled = false;
function flushAll() {
  flushScheduled = false;
  const clients = dirty;
  dirty = [];
  for (const c of clients) c.flush();
}

class Client {
  constructor(index, handlers) {
    this.index = index;
    this.h = handlers;
    this.sock = null;
    this.out = null;
    this.pending = null;
    this.httpDone = false;
    this.fragments = null;
    this.sid = null;
    this.connectStart = 0;
    this.connected = false; // Socket.IO namespace connected
    this.closed = false;
    this.closedAt = 0;
    this.silent = false;
    this.nextAck = 1;
    // pub/sub state
    this.room = -1;
    this.nextSeq = 0;
    this.received = 0;
    // heartbeat state
    this.lastPong = 0;
    this.pings = 0;
  }

  open() {
    this.connectStart = nowUs();
    const key = randomBytes(16).toString("base64");
    this.expectAccept = createHash("sha1").update(key + WS_GUID).digest("base64");
    const port = PORTS[this.index % PORTS.length];
    const sock = net.connect({ host: HOST, port });
    this.sock = sock;
    sock.setNoDelay(true);
    sock.on("connect", () => {
      sock.write(
        `GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\n` +
          `Host: ${HOST}:${port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
          `Sec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\n\r\n`,
      );
    });
    sock.on("data", (chunk) => this.onData(chunk));
    sock.on("error", (err) => {
      if (!this.connected && !this.closed) this.h.onConnectError?.(this, err);
    });
    sock.on("close", () => this.onClose("tcp close"));
    sock.on("end", () => this.onClose("tcp end"));
  }

  // Frames are queued and written once per event-loop turn (one write per client for all
  // it sends in that turn), so that the load generator spends few system calls per frame.
  send(str) {
    if (this.closed) return;
    if (this.out === null) {
      this.out = [];
      dirty.push(this);
      if (!flushScheduled) {
        flushScheduled = true;
        setImmediate(flushAll);
      }
    }
    this.out.push(encodeText(str));
  }

  flush() {
    const out = this.out;
    this.out = null;
    if (this.closed || out === null) return;
    this.sock.write(out.length === 1 ? out[0] : Buffer.concat(out));
  }

  onClose(why) {
    if (this.closed) return;
    this.closed = true;
    this.closedAt = nowUs();
    if (!this.connected) {
      this.h.onConnectError?.(this, new Error(why));
    } else {
      this.h.onClosed?.(this, why);
    }
    if (this.sock && !this.sock.destroyed) this.sock.destroy();
  }

  onData(chunk) {
    const now = nowUs();
    let buf = this.pending ? Buffer.concat([this.pending, chunk]) : chunk;
    let i = 0;
    if (!this.httpDone) {
      const end = buf.indexOf("\r\n\r\n");
      if (end < 0) {
        this.pending = buf;
        return;
      }
      const head = buf.toString("latin1", 0, end);
      if (!head.startsWith("HTTP/1.1 101") || !head.includes(this.expectAccept)) {
        stats.protocolErrors++;
        this.onClose(`bad handshake: ${head.split("\r\n")[0]}`);
        return;
      }
      this.httpDone = true;
      i = end + 4;
    }
    const n = buf.length;
    while (n - i >= 2) {
      const b0 = buf[i];
      const b1 = buf[i + 1];
      let len = b1 & 0x7f;
      let hdr = 2;
      if (b1 & 0x80) {
        stats.protocolErrors++;
        this.onClose("masked server frame");
        return;
      }
      if (len === 126) {
        if (n - i < 4) break;
        len = buf.readUInt16BE(i + 2);
        hdr = 4;
      } else if (len === 127) {
        if (n - i < 10) break;
        len = Number(buf.readBigUInt64BE(i + 2));
        hdr = 10;
      }
      if (n - i < hdr + len) break;
      const start = i + hdr;
      i = start + len;
      this.onFrame(b0, buf, start, i, now);
      if (this.closed) return;
    }
    this.pending = i < n ? buf.subarray(i) : null;
  }

  onFrame(b0, buf, start, end, now) {
    const op = b0 & 0x0f;
    const fin = (b0 & 0x80) !== 0;
    if (op === 1 && fin && this.fragments === null) {
      this.onText(buf, start, end, now);
    } else if (op === 1 || (op === 0 && this.fragments !== null)) {
      (this.fragments ??= []).push(Buffer.from(buf.subarray(start, end)));
      if (fin) {
        const whole = Buffer.concat(this.fragments);
        this.fragments = null;
        this.onText(whole, 0, whole.length, now);
      }
    } else if (op === 8) {
      this.h.onServerClose?.(this, now);
      this.onClose("websocket close");
    } else if (op === 9) {
      this.sock.write(encodeControl(10, buf.subarray(start, end)));
    } else if (op === 10) {
      // unsolicited pong: ignore
    } else {
      stats.unexpected++;
    }
  }

  onText(buf, start, end, now) {
    const c0 = buf[start];
    if (c0 === 0x34 /* '4' */) {
      const c1 = buf[start + 1];
      if (c1 === 0x32 /* '2' event */) {
        if (
          end - start > MESSAGE_PREFIX.length &&
          buf.compare(MESSAGE_PREFIX, 0, MESSAGE_PREFIX.length, start, start + MESSAGE_PREFIX.length) === 0
        ) {
          this.onMessageFast(buf, start + MESSAGE_PREFIX.length, end, now);
        } else {
          this.onEventSlow(buf.toString("utf8", start, end), now);
        }
      } else if (c1 === 0x33 /* '3' ack */) {
        let j = start + 2;
        let id = 0;
        let ch;
        while (j < end && (ch = buf[j]) >= 0x30 && ch <= 0x39) {
          id = id * 10 + (ch - 0x30);
          j++;
        }
        this.h.onAck?.(this, id, buf.toString("utf8", j, end), now);
      } else if (c1 === 0x30 /* '0' connect */) {
        this.connected = true;
        connectHist.record(now - this.connectStart);
        this.h.onConnected?.(this, now);
      } else if (c1 === 0x34 /* connect error */ || c1 === 0x31 /* disconnect */) {
        stats.protocolErrors++;
        this.onClose(`socket.io ${buf.toString("utf8", start, end)}`);
      } else {
        stats.unexpected++;
      }
    } else if (c0 === 0x32 /* '2' ping */ && end - start === 1) {
      this.h.onPing?.(this, now);
      if (!this.silent) {
        this.send(PONG_FRAME_STR);
        this.lastPong = nowUs();
        if (this.quietAfterPong) this.silent = true;
      }
    } else if (c0 === 0x30 /* '0' open */) {
      try {
        this.openInfo = JSON.parse(buf.toString("utf8", start + 1, end));
      } catch {
        stats.protocolErrors++;
      }
      this.lastPong = now; // the heartbeat clock starts at the handshake
      this.send("40");
    } else if (c0 === 0x31 /* '1' close */) {
      this.h.onServerClose?.(this, now);
      this.onClose("engine.io close");
    } else if (c0 === 0x36 /* noop */) {
      // ignore
    } else {
      stats.unexpected++;
    }
  }

  // '42["message","<t>:<seq>:<room>:xxx"]' with the prefix already matched.
  onMessageFast(buf, j, end, now) {
    let t = 0;
    let seq = 0;
    let room = 0;
    let ch;
    while (j < end && (ch = buf[j++]) !== 0x3a) t = t * 10 + (ch - 0x30);
    while (j < end && (ch = buf[j++]) !== 0x3a) seq = seq * 10 + (ch - 0x30);
    while (j < end && (ch = buf[j++]) !== 0x3a) room = room * 10 + (ch - 0x30);
    if (j >= end) {
      anomaly("unparsable message");
      return;
    }
    this.h.onMessage?.(this, t, seq, room, now);
  }

  onEventSlow(text, now) {
    let packet;
    try {
      packet = JSON.parse(text.slice(2));
    } catch {
      anomaly("unparsable event");
      return;
    }
    if (!Array.isArray(packet) || packet[0] !== "message" || typeof packet[1] !== "string") {
      anomaly("unexpected event");
      return;
    }
    const parts = packet[1].split(":");
    if (parts.length < 4) {
      anomaly("unparsable message");
      return;
    }
    this.h.onMessage?.(this, Number(parts[0]), Number(parts[1]), Number(parts[2]), now);
  }
}

// ---------------------------------------------------------------------------------------
// Connecting many clients with a bounded number of handshakes in flight.

async function connectAll(count, handlers, { concurrency = 200, readyOn = "connected", timeoutS = 120 } = {}) {
  const clients = [];
  let started = 0;
  let done = 0;
  let failed = 0;
  const t0 = nowUs();
  return await new Promise((resolve) => {
    const finish = () => {
      clearTimeout(timer);
      resolve({ clients, failed, seconds: (nowUs() - t0) / 1e6 });
    };
    const timer = setTimeout(() => {
      log(`connect timeout: ${done} ready, ${failed} failed of ${count}`);
      failed += count - done - failed;
      finish();
    }, timeoutS * 1000);
    const next = () => {
      while (started < count && started - done - failed < concurrency) {
        const c = new Client(started++, wrapped);
        clients.push(c);
        c.open();
      }
      if (done + failed === count) finish();
    };
    const wrapped = {
      ...handlers,
      onConnected(c, now) {
        handlers.onConnected?.(c, now);
        if (readyOn === "connected") {
          c.ready = true;
          done++;
          next();
        }
      },
      onReady(c) {
        c.ready = true;
        done++;
        next();
      },
      onConnectError(c, err) {
        if (c.ready) return;
        stats.connectFailures++;
        failed++;
        if (stats.connectFailures <= 5) log(`client ${c.index} failed to connect: ${err.message}`);
        next();
      },
    };
    next();
  });
}

// Per-core times from /proc/stat (jiffies): user+nice+system (processes, ours included),
// irq+softirq (interrupt work, on loopback mostly the benchmark's own network traffic) and
// steal (the hypervisor).
function coreTimes() {
  const out = {};
  try {
    for (const line of readFileSync("/proc/stat", "latin1").split("\n")) {
      const m = /^cpu(\d+) (.*)$/.exec(line);
      if (!m) continue;
      const f = m[2].trim().split(/\s+/).map(Number);
      out[m[1]] = { busy: f[0] + f[1] + f[2], irq: f[5] + f[6], steal: f[7] };
    }
  } catch {}
  return out;
}

function cpuSnapshot() {
  return { cpu: process.cpuUsage(), wall: nowUs(), server: serverCpuSeconds(), cores: coreTimes() };
}

function coresSince(before, wallS) {
  const after = coreTimes();
  const out = {};
  for (const [k, v] of Object.entries(after)) {
    const b = before[k];
    if (!b) continue;
    out[`core${k}_busy`] = (v.busy - b.busy) / CLK_TCK / wallS;
    out[`core${k}_irq`] = (v.irq - b.irq) / CLK_TCK / wallS;
    out[`core${k}_steal`] = (v.steal - b.steal) / CLK_TCK / wallS;
  }
  return out;
}

function cpuSince(snap) {
  const cpu = process.cpuUsage(snap.cpu);
  const wallS = (nowUs() - snap.wall) / 1e6;
  const server = serverCpuSeconds();
  const serverCpu = server !== null && snap.server !== null ? (server - snap.server) / wallS : null;
  const loadgenCpu = (cpu.user + cpu.system) / 1e6 / wallS;
  const cores = coresSince(snap.cores, wallS);
  return {
    wall_s: wallS,
    loadgen_user_s: cpu.user / 1e6,
    loadgen_sys_s: cpu.system / 1e6,
    loadgen_cpu: loadgenCpu,
    server_cpu: serverCpu,
    ...cores,
    // Process time on the server's core that was not the server's (other processes on
    // the machine), plus time the hypervisor took (steal).
    foreign_on_server_core:
      serverCpu !== null && cores.core0_busy !== undefined
        ? Math.max(0, cores.core0_busy - serverCpu) + cores.core0_steal
        : null,
  };
}

function finish(result) {
  tearingDown = true;
  emit({
    event: "result",
    scenario: cfg.scenario,
    ...result,
    anomalies: stats.anomalies,
    anomaly_kinds: stats.anomalyKinds,
    bad_acks: stats.badAcks,
    disconnects: stats.disconnects,
    connect_failures: stats.connectFailures,
    protocol_errors: stats.protocolErrors,
    unexpected_frames: stats.unexpected,
    connect: { ...connectHist.summary() },
    server_rss_kib: serverRssKib(),
  });
  // Exit without waiting for every socket to close (they are closed by exit).
  setImmediate(() => process.exit(0));
}

// ---------------------------------------------------------------------------------------
// Scenario: pub/sub (fan-out and many rooms). Client k is in room k % rooms; client r (the
// first member of room r) publishes to it, at most `window` messages in flight per room.

async function pubsub() {
  const R = cfg.rooms;
  const M = cfg.membersPerRoom;
  const W = cfg.window;
  const N = R * M;
  const published = new Float64Array(R); // messages published per room
  const completed = new Float64Array(R); // messages received by every member, per room
  const remaining = new Int32Array(R * W); // members still to receive, per in-flight slot
  const hist = new Histogram();
  let phase = "setup"; // setup -> warmup -> measure -> drain -> done
  let delivered = 0;
  let receivedTotal = 0;
  let publishers = [];

  const publish = (r) => {
    const seq = published[r];
    const head = `${nowUs()}:${seq}:${r}:`;
    const payload = head + PAD.slice(head.length);
    remaining[r * W + (seq % W)] = M;
    published[r] = seq + 1;
    publishers[r].send(`42["publish",{"room":"r${r}","payload":"${payload}"}]`);
  };

  const handlers = {
    onConnected(c) {
      c.room = c.index % R;
      c.send(`42${c.nextAck++}["join","r${c.room}"]`);
    },
    onAck(c, id, rest) {
      if (rest !== `["r${c.room}"]`) {
        let ok = false;
        try {
          const v = JSON.parse(rest);
          ok = Array.isArray(v) && v.length === 1 && v[0] === `r${c.room}`;
        } catch {}
        if (!ok) stats.badAcks++;
      }
      if (!c.ready) c.h.onReady(c);
    },
    onMessage(c, t, seq, room, now) {
      if (room !== c.room) {
        anomaly("wrong room");
        return;
      }
      if (seq !== c.nextSeq) {
        anomaly(seq < c.nextSeq ? "duplicate or reordered" : "gap (lost or reordered)");
        if (seq < c.nextSeq) return;
      }
      c.nextSeq = seq + 1;
      c.received++;
      receivedTotal++;
      if (phase === "measure") {
        delivered++;
        hist.record(now - t);
      }
      const slot = room * W + (seq % W);
      if (--remaining[slot] === 0) {
        // In-order delivery to every member means slots complete in publish order.
        completed[room]++;
        if (phase === "warmup" || phase === "measure") publish(room);
        else if (phase === "drain" && completed.every((v, k) => v === published[k])) drained();
      }
    },
    onClosed(c, why) {
      if (!tearingDown) {
        stats.disconnects++;
        if (stats.disconnects <= 5) log(`client ${c.index} disconnected: ${why}`);
      }
    },
  };

  let drained = () => {};
  log(`connecting ${N} clients (${R} rooms x ${M})`);
  const conn = await connectAll(N, handlers, {
    concurrency: cfg.connectConcurrency ?? 200,
    readyOn: "joined",
  });
  const clients = conn.clients;
  log(`connected in ${conn.seconds.toFixed(2)} s, ${conn.failed} failed`);
  emit({ event: "connected", seconds: conn.seconds, failed: conn.failed });
  if (conn.failed > 0) {
    finish({ failed: `${conn.failed} clients could not connect`, connect_seconds: conn.seconds });
    return;
  }
  publishers = clients.slice(0, R);
  await sleep(500);

  phase = "warmup";
  for (let r = 0; r < R; r++) for (let k = 0; k < W; k++) publish(r);
  await sleep(cfg.warmupS * 1000);
  const startPublished = published.reduce((a, b) => a + b, 0);
  phase = "measure";
  const snap = cpuSnapshot();
  await sleep(cfg.durationS * 1000);
  const cpu = cpuSince(snap);
  phase = "drain";
  const measuredPublished = published.reduce((a, b) => a + b, 0) - startPublished;
  const drainStart = nowUs();
  await new Promise((resolve) => {
    const timer = setTimeout(resolve, cfg.drainS * 1000);
    drained = () => {
      clearTimeout(timer);
      resolve();
    };
    if (completed.every((v, k) => v === published[k])) drained();
  });
  phase = "done";
  let expected = 0;
  for (let r = 0; r < R; r++) expected += published[r] * M;
  let lossByClient = 0;
  for (const c of clients) lossByClient += published[c.room] - c.received;
  finish({
    clients: N,
    rooms: R,
    members_per_room: M,
    window: W,
    measured_s: cpu.wall_s,
    delivered,
    delivered_per_s: delivered / cpu.wall_s,
    published_per_s: measuredPublished / cpu.wall_s,
    published_total: published.reduce((a, b) => a + b, 0),
    expected_total: expected,
    received_total: receivedTotal,
    loss: lossByClient,
    drain_s: (nowUs() - drainStart) / 1e6,
    latency: hist.summary(),
    cpu,
    connect_seconds: conn.seconds,
  });
}

// ---------------------------------------------------------------------------------------
// Scenario: echo with ack. Each client keeps `window` echo calls in flight.

async function echo() {
  const N = cfg.clients;
  const W = cfg.window;
  const hist = new Histogram();
  let phase = "setup";
  let acked = 0;
  let sent = 0;
  let answered = 0;
  let outstanding = 0;
  let drained = () => {};

  const call = (c) => {
    const head = `${nowUs()}:`;
    const payload = head + PAD.slice(head.length);
    const id = c.nextAck++;
    c.calls.set(id, payload);
    sent++;
    outstanding++;
    c.send(`42${id}["echo","${payload}"]`);
  };

  const handlers = {
    onConnected(c) {
      c.calls = new Map();
    },
    onAck(c, id, rest, now) {
      const payload = c.calls.get(id);
      if (payload === undefined) {
        stats.badAcks++;
        return;
      }
      c.calls.delete(id);
      outstanding--;
      answered++;
      if (rest !== `["${payload}"]`) {
        let ok = false;
        try {
          const v = JSON.parse(rest);
          ok = Array.isArray(v) && v.length === 1 && v[0] === payload;
        } catch {}
        if (!ok) stats.badAcks++;
      }
      if (phase === "measure") {
        acked++;
        let t = 0;
        for (let j = 0; j < payload.length; j++) {
          const ch = payload.charCodeAt(j);
          if (ch === 0x3a) break;
          t = t * 10 + (ch - 0x30);
        }
        hist.record(now - t);
      }
      if (phase === "warmup" || phase === "measure") call(c);
      else if (phase === "drain" && outstanding === 0) drained();
    },
    onClosed(c, why) {
      if (!tearingDown) {
        stats.disconnects++;
        if (stats.disconnects <= 5) log(`client ${c.index} disconnected: ${why}`);
      }
    },
  };

  log(`connecting ${N} clients`);
  const conn = await connectAll(N, handlers, { concurrency: cfg.connectConcurrency ?? 200 });
  emit({ event: "connected", seconds: conn.seconds, failed: conn.failed });
  if (conn.failed > 0) {
    finish({ failed: `${conn.failed} clients could not connect`, connect_seconds: conn.seconds });
    return;
  }
  await sleep(500);
  phase = "warmup";
  for (const c of conn.clients) for (let k = 0; k < W; k++) call(c);
  await sleep(cfg.warmupS * 1000);
  phase = "measure";
  const snap = cpuSnapshot();
  const sentBefore = sent;
  await sleep(cfg.durationS * 1000);
  const cpu = cpuSince(snap);
  const sentMeasured = sent - sentBefore;
  phase = "drain";
  const drainStart = nowUs();
  await new Promise((resolve) => {
    const timer = setTimeout(resolve, cfg.drainS * 1000);
    drained = () => {
      clearTimeout(timer);
      resolve();
    };
    if (outstanding === 0) drained();
  });
  phase = "done";
  finish({
    clients: N,
    window: W,
    measured_s: cpu.wall_s,
    delivered: acked,
    delivered_per_s: acked / cpu.wall_s,
    published_per_s: sentMeasured / cpu.wall_s,
    published_total: sent,
    expected_total: sent,
    received_total: answered,
    loss: outstanding,
    drain_s: (nowUs() - drainStart) / 1e6,
    latency: hist.summary(),
    cpu,
    connect_seconds: conn.seconds,
  });
}

// ---------------------------------------------------------------------------------------
// Scenario: idle connections. Connect, report, hold until "stop" on stdin (or holdS).

async function idle() {
  const N = cfg.clients;
  const handlers = {
    onClosed(c, why) {
      if (!tearingDown) {
        stats.disconnects++;
        if (stats.disconnects <= 5) log(`client ${c.index} disconnected: ${why}`);
      }
    },
  };
  const snap = cpuSnapshot();
  const conn = await connectAll(N, handlers, {
    concurrency: cfg.connectConcurrency ?? 100,
    timeoutS: cfg.connectTimeoutS ?? 180,
  });
  const cpu = cpuSince(snap);
  const ready = {
    clients: N,
    connected: conn.clients.filter((c) => c.connected && !c.closed).length,
    connect_seconds: conn.seconds,
    connects_per_s: N / conn.seconds,
    cpu,
  };
  emit({ event: "ready", ...ready, connect: connectHist.summary() });
  await new Promise((resolve) => {
    const timer = setTimeout(resolve, (cfg.holdS ?? 600) * 1000);
    const rl = createInterface({ input: process.stdin });
    rl.on("line", (line) => {
      if (line.trim() === "stop") {
        clearTimeout(timer);
        rl.close();
        resolve();
      }
    });
    rl.on("close", () => {
      clearTimeout(timer);
      resolve();
    });
  });
  const alive = conn.clients.filter((c) => c.connected && !c.closed).length;
  finish({
    ...ready,
    alive_at_end: alive,
    loss: N - alive,
    delivered: alive,
  });
}

// ---------------------------------------------------------------------------------------
// Scenario: heartbeat accuracy. `healthy` clients answer every ping; `silent` clients
// answer the first ping and then nothing: the server must drop each of them
// pingInterval + pingTimeout after that last pong. Healthy clients must not be dropped,
// and each of their pings must come pingInterval after the previous pong.

async function heartbeat() {
  const H = cfg.healthy;
  const S = cfg.silent;
  const interval = cfg.pingIntervalMs * 1000;
  const timeout = cfg.pingTimeoutMs * 1000;
  const dropErr = new Histogram(); // |drop time - (last pong + interval + timeout)|, µs
  const pingErr = new Histogram(); // |ping time - (previous pong + interval)|, µs
  const signedDrops = [];
  const afterPing = []; // drop time - (unanswered ping + timeout), µs
  let early = 0; // silent clients dropped before their deadline (by more than 50 ms)
  let healthyDropped = 0;
  let dropped = 0;

  const handlers = {
    onConnected(c) {
      // Clients 0..S-1 answer their first ping, then go silent.
      c.quietAfterPong = c.index < S;
    },
    onPing(c, now) {
      c.pings++;
      if (!c.silent) pingErr.record(Math.abs(now - c.lastPong - interval));
      else if (c.unansweredPing === undefined) c.unansweredPing = now;
    },
    onClosed(c, why) {
      if (tearingDown) return;
      if (!c.quietAfterPong) {
        healthyDropped++;
        stats.disconnects++;
        log(`healthy client ${c.index} dropped: ${why}`);
        return;
      }
      if (!c.silent) {
        early++; // dropped before it even went silent
        return;
      }
      const delta = c.closedAt - (c.lastPong + interval + timeout);
      signedDrops.push(delta);
      if (c.unansweredPing !== undefined) afterPing.push(c.closedAt - c.unansweredPing - timeout);
      dropErr.record(Math.abs(delta));
      if (delta < -50_000) early++;
      dropped++;
    },
  };
  const conn = await connectAll(H + S, handlers, { concurrency: 200 });
  if (conn.failed > 0) {
    finish({ failed: `${conn.failed} clients could not connect` });
    return;
  }
  const t0 = nowUs();
  await sleep(cfg.holdMs);
  const notDropped = conn.clients.filter((c) => c.quietAfterPong && !c.closed).length;
  signedDrops.sort((a, b) => a - b);
  afterPing.sort((a, b) => a - b);
  const median = signedDrops.length ? signedDrops[Math.floor(signedDrops.length / 2)] : null;
  finish({
    clients: H + S,
    healthy: H,
    silent: S,
    hold_s: (nowUs() - t0) / 1e6,
    ping_interval_ms: cfg.pingIntervalMs,
    ping_timeout_ms: cfg.pingTimeoutMs,
    dropped,
    silent_not_dropped: notDropped,
    dropped_early: early,
    healthy_dropped: healthyDropped,
    loss: notDropped + early + healthyDropped,
    delivered: dropped,
    drop_error: dropErr.summary(),
    drop_delta_median_us: median,
    drop_delta_min_us: signedDrops.length ? signedDrops[0] : null,
    drop_delta_max_us: signedDrops.length ? signedDrops[signedDrops.length - 1] : null,
    drop_after_unanswered_ping_median_us: afterPing.length
      ? afterPing[Math.floor(afterPing.length / 2)]
      : null,
    ping_error: pingErr.summary(),
    latency: dropErr.summary(),
  });
}

// ---------------------------------------------------------------------------------------

const scenarios = { pubsub, echo, idle, heartbeat };
const run = scenarios[cfg.mode];
if (!run) {
  log(`unknown mode ${cfg.mode}`);
  process.exit(2);
}
run().catch((err) => {
  log(`crashed: ${err.stack}`);
  process.exit(1);
});
