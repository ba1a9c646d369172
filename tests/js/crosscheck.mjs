// Cross-check corpus for roomcast's Engine.IO / Socket.IO codecs, driven by the real
// JavaScript parsers (engine.io-parser, socket.io-parser, socket.io-msgpack-parser).
//
// Usage (run from anywhere; packages resolve from this folder's node_modules):
//   node crosscheck.mjs corpus   > cases.jsonl   print the corpus, one JSON case per line
//   node crosscheck.mjs decode   < frames.jsonl  decode each line's frames with the JS parsers
//
// JSON-able form used on both sides ("logical" values):
//   binary (Buffer / Uint8Array / ArrayBuffer)  ->  {"$bin": "<base64>"}
//   Engine.IO packet   ->  {"type": 0..6, "data": string | {"$bin": ...}}   (no data = "")
//   Socket.IO packet   ->  {"type": 0..4, "nsp": string, "data"?: value, "id"?: number}
//                          (BINARY_EVENT / BINARY_ACK are folded into EVENT / ACK, as the
//                          JS Decoder does; "data" / "id" are absent when undefined)
//   frame              ->  {"text": string} | {"bin": "<base64>"}
//
// Corpus case kinds (each line: {"id", "kind", ...}):
//   eio_ws         packet, frame              one Engine.IO packet as a WebSocket frame
//   eio_payload    packets, body              Engine.IO packets as one polling body
//   eio_reject     frame | body               input the JS parser rejects
//   sio_json       packet, frames, canonical  socket.io-parser Encoder output
//   sio_msgpack    packet, frames, canonical  socket.io-msgpack-parser Encoder output
//   sio_reject     parser, frames             frames the JS Decoder rejects
//   stack_payload  parser, packets, body      Socket.IO packets inside one polling body
// "canonical" is true when the frames are what a Node socket.io *server* would send for that
// packet (so a byte-identical re-encoding is expected); false for client-shaped packets
// (socket.io-client adds an `options` key and sends `data: undefined`), decode-only.
//
// Decode mode reads lines {"id", "kind", "parser"?, "frames"? | "frame"? | "body"?} and prints
// {"id", "ok": true, "packets": [logical...]} or {"id", "ok": false, "error": message}.

import { createRequire } from "node:module";
import { isDeepStrictEqual } from "node:util";
import * as eio from "engine.io-parser";
import * as sio from "socket.io-parser";

const require = createRequire(import.meta.url);
const msgpackParser = require("socket.io-msgpack-parser");

const EIO_TYPES = ["open", "close", "ping", "pong", "message", "upgrade", "noop"];
const SEPARATOR = "\x1e";

// ---------------------------------------------------------------------------------------
// Logical (JSON-able) form

function isBin(v) {
  return v instanceof ArrayBuffer || ArrayBuffer.isView(v);
}

function binToBase64(v) {
  if (v instanceof ArrayBuffer) return Buffer.from(v).toString("base64");
  return Buffer.from(v.buffer, v.byteOffset, v.byteLength).toString("base64");
}

function toLogical(v) {
  if (isBin(v)) return { $bin: binToBase64(v) };
  if (Array.isArray(v)) return v.map(toLogical);
  if (v !== null && typeof v === "object") {
    const out = {};
    for (const k of Object.keys(v)) {
      if (v[k] !== undefined) out[k] = toLogical(v[k]);
    }
    return out;
  }
  return v;
}

function fromLogical(v) {
  if (Array.isArray(v)) return v.map(fromLogical);
  if (v !== null && typeof v === "object") {
    const keys = Object.keys(v);
    if (keys.length === 1 && keys[0] === "$bin") return Buffer.from(v.$bin, "base64");
    const out = {};
    for (const k of keys) out[k] = fromLogical(v[k]);
    return out;
  }
  return v;
}

function frameOut(f) {
  return typeof f === "string" ? { text: f } : { bin: binToBase64(f) };
}

function frameIn(f) {
  if (typeof f.text === "string") return f.text;
  if (typeof f.bin === "string") return Buffer.from(f.bin, "base64");
  throw new Error("bad frame description");
}

function sioLogical(p) {
  let type = p.type;
  if (type === sio.PacketType.BINARY_EVENT) type = sio.PacketType.EVENT;
  if (type === sio.PacketType.BINARY_ACK) type = sio.PacketType.ACK;
  const out = { type, nsp: p.nsp };
  if (p.data !== undefined) out.data = toLogical(p.data);
  if (p.id !== undefined) out.id = p.id;
  return out;
}

function eioLogical(p) {
  if (p.type === "error") throw new Error("engine.io-parser: " + p.data);
  const type = EIO_TYPES.indexOf(p.type);
  if (type < 0) throw new Error("unknown engine.io packet type " + p.type);
  return { type, data: p.data === undefined ? "" : toLogical(p.data) };
}

// ---------------------------------------------------------------------------------------
// JS codecs, wrapped

function eioEncodeWs(p) {
  let out;
  eio.encodePacket({ type: EIO_TYPES[p.type], data: p.data }, true, (f) => (out = f));
  return out;
}

function eioEncodePayload(packets) {
  let out;
  eio.encodePayload(
    packets.map((p) => ({ type: EIO_TYPES[p.type], data: p.data })),
    (body) => (out = body),
  );
  return out;
}

function makeSioDecoder(parser) {
  return parser === "msgpack" ? new msgpackParser.Decoder() : new sio.Decoder();
}

function makeSioEncoder(parser) {
  return parser === "msgpack" ? new msgpackParser.Encoder() : new sio.Encoder();
}

/** Feed frames to a fresh JS Decoder; return the logical packets it emitted. */
function sioDecodeFrames(parser, frames) {
  const decoder = makeSioDecoder(parser);
  const packets = [];
  decoder.on("decoded", (p) => packets.push(sioLogical(p)));
  for (const f of frames) decoder.add(f);
  if (parser === "json" && decoder.reconstructor) {
    throw new Error("binary packet still waiting for attachments");
  }
  return packets;
}

/** Decode a polling body, then each message as a Socket.IO frame. */
function stackDecode(parser, body) {
  const eioPackets = eio.decodePayload(body, "nodebuffer");
  const frames = [];
  for (const p of eioPackets) {
    if (p.type === "error") throw new Error("engine.io-parser: " + p.data);
    if (p.type !== "message") throw new Error("non-message packet in stack payload: " + p.type);
    frames.push(p.data);
  }
  return sioDecodeFrames(parser, frames);
}

// ---------------------------------------------------------------------------------------
// Deterministic data

function mulberry32(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const rand = mulberry32(0x5eed2024);
const randInt = (n) => Math.floor(rand() * n);
const pick = (xs) => xs[randInt(xs.length)];

function bytes(n, seed = n) {
  const r = mulberry32(seed + 1);
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = Math.floor(r() * 256);
  return b;
}

const ALL_BYTES = Buffer.from(Array.from({ length: 256 }, (_, i) => i));

const STRINGS = [
  "hello",
  "",
  "héllo wörld",
  "日本語のテキスト",
  "emoji 😀🎉 and flags 🇫🇷",
  "astral 𝄞 𝕏 𐍈",
  "line\u2028sep\u2029para",
  'quote " backslash \\ slash / done',
  "controls \u0000\u0001\u0007\u001f tab\tnl\ncr\rbs\bff\f",
  "del \u007f and nbsp \u00a0",
  "record\u001eseparator",
  "zero width \u200b and bom \ufeff",
  "e\u0301 combining",
  "مرحبا بالعالم",
  "<script>alert('x')</script>&amp;",
  "[1,2,3]",
  "12345",
  "/ns,with,commas",
  "b64?AQID",
  "\uffff\ufffe\ufffd",
];

const RANDOM_ALPHABET = [
  "a", "b", "z", "0", "9", " ", "_", "-", ",", "/", '"', "\\", "\n", "\t", "\u0000",
  "\u001e", "é", "ß", "Ж", "中", "日", "\u2028", "\u2029", "😀", "𝄞", "\ud83c\udf89",
];

function randString(maxLen = 12) {
  const n = randInt(maxLen + 1);
  let s = "";
  for (let i = 0; i < n; i++) s += pick(RANDOM_ALPHABET);
  return s;
}

function randNumber() {
  switch (randInt(5)) {
    case 0:
      return randInt(200) - 100;
    case 1:
      return randInt(2 ** 31) * (rand() < 0.5 ? -1 : 1);
    case 2:
      return Math.floor(rand() * 2 ** 53) * (rand() < 0.5 ? -1 : 1);
    case 3:
      // non-integral, magnitude 1e-3 .. 1e6 (no exponent notation in JS or Python)
      return Math.round((rand() - 0.5) * 2e9) / 1000 + 0.5;
    default:
      return rand() * 1000;
  }
}

function randValue(depth, allowBin) {
  const kinds = depth > 3 ? 6 : 8;
  switch (randInt(kinds + (allowBin ? 1 : 0))) {
    case 0:
      return null;
    case 1:
      return rand() < 0.5;
    case 2:
    case 3:
      return randNumber();
    case 4:
    case 5:
      return randString();
    case 6: {
      const n = randInt(5);
      return Array.from({ length: n }, () => randValue(depth + 1, allowBin));
    }
    case 7: {
      const n = randInt(5);
      const o = {};
      for (let i = 0; i < n; i++) o[randString(6) || "k" + i] = randValue(depth + 1, allowBin);
      return o;
    }
    default:
      return bytes(randInt(40), randInt(1000));
  }
}

function nestedArray(depth, leaf) {
  let v = leaf;
  for (let i = 0; i < depth; i++) v = [v];
  return v;
}

function nestedObject(depth, leaf) {
  let v = leaf;
  for (let i = depth; i > 0; i--) v = { ["level" + i]: v };
  return v;
}

// ---------------------------------------------------------------------------------------
// Engine.IO corpus

const HANDSHAKE = JSON.stringify({
  sid: "lv_VI97HAXpY6yYWAAAC",
  upgrades: ["websocket"],
  pingInterval: 25000,
  pingTimeout: 20000,
  maxPayload: 1000000,
});

function eioPackets() {
  const list = [
    [0, HANDSHAKE],
    [0, JSON.stringify({ sid: "x", upgrades: [], pingInterval: 1, pingTimeout: 2, maxPayload: 3 })],
    [1, ""],
    [2, ""],
    [2, "probe"],
    [3, ""],
    [3, "probe"],
    [4, ""],
    [4, "4"],
    [4, "b"],
    [4, "0{}"],
    [4, '2["chat","hi"]'],
    [4, "x".repeat(100000)],
    [5, ""],
    [6, ""],
    [4, Buffer.alloc(0)],
    [4, Buffer.from([0])],
    [4, Buffer.from([0x34])],
    [4, ALL_BYTES],
    [4, bytes(1000)],
    [4, bytes(70000)],
    [4, new Uint8Array([1, 2, 3])],
  ];
  for (const s of STRINGS) list.push([4, s]);
  return list.map(([type, data]) => ({ type, data }));
}

function eioPayloads() {
  const p = (type, data = "") => ({ type, data });
  return [
    [p(4, "hello")],
    [p(0, HANDSHAKE)],
    [p(2), p(4, "after ping")],
    [p(6)],
    [p(1)],
    [p(3, "probe"), p(5)],
    [p(4, ""), p(4, "")],
    [p(4, Buffer.from([1, 2, 3]))],
    [p(4, Buffer.alloc(0))],
    [p(4, "text"), p(4, Buffer.from([0xff, 0xfe])), p(4, "more"), p(4, ALL_BYTES)],
    [p(4, "日本語"), p(4, "😀 astral 𝄞"), p(4, "line\u2028sep")],
    [p(4, "quote \" and \\"), p(4, "\u0000nul"), p(4, "b not binary")],
    STRINGS.filter((s) => !s.includes(SEPARATOR)).map((s) => p(4, s)),
    Array.from({ length: 20 }, (_, i) => p(4, "m" + i)),
    Array.from({ length: 10 }, (_, i) => p(4, bytes(i * 7, i))),
    [p(4, '451-["upload",{"_placeholder":true,"num":0}]'), p(4, Buffer.from("data"))],
    [p(4, bytes(3000, 7)), p(2), p(4, "x".repeat(5000))],
  ];
}

const EIO_REJECT_FRAMES = ["", "7", "9", "x", "-1", "\u00e9"];
const EIO_REJECT_BODIES = ["4ok\x1e7bad", "", "z", "4a\x1e\x1e4b"];

// ---------------------------------------------------------------------------------------
// Socket.IO corpus (server-shaped key order, as socket.io 4.8 builds its packets)

const EVENT = 2;
const ev = (nsp, data, id) => {
  const p = { type: EVENT, data };
  if (id !== undefined) p.id = id;
  p.nsp = nsp;
  return p;
};
const ack = (nsp, id, data) => ({ id, type: 3, data, nsp });
const conn = (nsp, data) => (data === undefined ? { type: 0, nsp } : { type: 0, data, nsp });
const disc = (nsp) => ({ type: 1, nsp });
const cerr = (nsp, data) => ({ type: 4, data, nsp });

const NAMESPACES = [
  "/",
  "/admin",
  "/a/b/c",
  "/ünï",
  "/😀",
  "/123",
  "/with space",
  "/x-y_z.~",
  "/" + "n".repeat(255),
];

const EVENT_NAMES = ["message", "chat message", "ünïcödé", "😀", "", "with,comma", "42", "a/b"];

const NUMBERS = [
  0, 1, -1, 127, 128, 255, 256, 65535, 65536, -32, -33, -128, -129, -32768, -32769,
  2 ** 31 - 1, 2 ** 31, 2 ** 32 - 1, 2 ** 32, -(2 ** 31), -(2 ** 31) - 1,
  2 ** 53 - 1, -(2 ** 53 - 1), 1.5, -0.25, 3.141592653589793, 0.1 + 0.2, 123456.789,
  0.001, 2.5e-3, 987654321.123, 1.7976931348623157e308 / 2 ** 1000, 4.9e-300,
];

function sioCases() {
  const cases = []; // {name, packet, json: bool, msgpack: bool}
  const add = (name, packet, opts = {}) =>
    cases.push({
      name,
      packet,
      json: opts.json !== false,
      msgpack: opts.msgpack !== false,
      // false: Node's server would not send these msgpack bytes (see canonical above)
      msgpackCanonical: opts.msgpackCanonical !== false,
    });

  // CONNECT
  add("connect-default", conn("/"));
  add("connect-ns", conn("/admin"));
  add("connect-auth", conn("/", { token: "abc123" }));
  add("connect-ns-auth", conn("/admin", { token: "abc", n: 1, ok: true, none: null }));
  add("connect-empty-auth", conn("/", {}));
  add("connect-server-sid", conn("/", { sid: "jF7qBz3QX0YaJp9PAAAB" }));
  add("connect-server-sid-pid", conn("/chat", { sid: "s1", pid: "p1" }));
  add("connect-recovery", conn("/", { pid: "pid-1", offset: "1700000000000-12", token: "t" }));
  add("connect-unicode-auth", conn("/ünï", { user: "Zoë 😀", "ключ": "значение" }));
  add("connect-nested-auth", conn("/", { a: { b: { c: [1, 2, { d: "e" }] } } }));
  for (const nsp of NAMESPACES.slice(4)) add("connect-ns-" + nsp.slice(0, 12), conn(nsp));

  // DISCONNECT
  for (const nsp of NAMESPACES) add("disconnect-" + nsp.slice(0, 12), disc(nsp));

  // CONNECT_ERROR
  add("connect-error-message", cerr("/", { message: "Not authorized" }));
  add("connect-error-data", cerr("/", { message: "x", data: { code: 403, retry: false } }));
  add("connect-error-ns", cerr("/admin", { message: "Invalid namespace" }));
  add("connect-error-string", cerr("/", "legacy string error"));
  add("connect-error-unicode", cerr("/😀", { message: "refusé 🚫", data: null }));

  // EVENT: names, namespaces, ack ids
  for (const name of EVENT_NAMES) add("event-name-" + name, ev("/", [name]));
  for (const nsp of NAMESPACES) add("event-ns-" + nsp.slice(0, 12), ev(nsp, ["hi", 1]));
  for (const nsp of NAMESPACES.slice(0, 5)) add("event-ns-ack-" + nsp, ev(nsp, ["q"], 7));
  for (const id of [0, 1, 9, 10, 42, 2 ** 31, 2 ** 32 + 1, 2 ** 53 - 1]) {
    add("event-ack-" + id, ev("/", ["req", { id }], id));
    add("ack-" + id, ack("/", id, ["res", id]));
  }

  // EVENT / ACK payloads
  for (const [i, s] of STRINGS.entries()) add("event-string-" + i, ev("/", ["s", s]));
  add("event-all-strings", ev("/admin", ["all", ...STRINGS]));
  add("event-lone-surrogates", ev("/", ["s", "\ud800", "x\udfffy", "\udc00\ud800"]), {
    msgpack: false, // notepack.io mangles lone surrogates
  });
  add("event-numbers", ev("/", ["n", ...NUMBERS]));
  for (const [i, n] of NUMBERS.entries()) add("event-number-" + i, ev("/", ["n", n, n === 0 ? 0 : -n]));
  add("event-big-integral", ev("/", ["big", 2 ** 60, -(2 ** 64), 1e21, 1.5e300]), {
    msgpack: false, // notepack.io cannot encode integral doubles >= 2**64
  });
  add("event-small-floats", ev("/", ["small", 0.00001, 1e-7, 1.5e-10, 2.5e-5]));
  add("event-literals", ev("/", ["lit", null, true, false, 0, "", [], {}]));
  add("event-no-args", ev("/", ["ping"]));
  add("event-nested", ev("/", ["nested", { a: [1, { b: [2, { c: [3, { d: "deep" }] }] }] }]));
  add("event-deep-array", ev("/", ["deep", nestedArray(16, "leaf")]));
  add("event-deep-object", ev("/", ["deep", nestedObject(16, [1, 2])]));
  add("event-key-order", ev("/", ["keys", { b: 1, 2: "two", a: 3, 1: "one", "": "empty" }]));
  add("event-unicode-keys", ev("/", ["keys", { "ключ": 1, "😀": 2, "a\u2028b": 3, 'q"': 4 }]));
  add("event-placeholder-lookalike", ev("/", ["fake", { _placeholder: true, num: 0 }]));
  add("event-dollar-key", ev("/", ["d", { $ref: "x", $bins: 1 }]));
  add("event-many-args", ev("/", ["many", ...Array.from({ length: 100 }, (_, i) => i * 3)]));
  add("event-array-16", ev("/", ["a16", Array.from({ length: 16 }, (_, i) => "e" + i)]));
  add("event-array-15", ev("/", ["a15", Array.from({ length: 15 }, (_, i) => i)]));
  add("event-map-16", ev("/", ["m16", Object.fromEntries(Array.from({ length: 16 }, (_, i) => ["k" + i, i]))]));
  add("event-map-15", ev("/", ["m15", Object.fromEntries(Array.from({ length: 15 }, (_, i) => ["k" + i, i]))]));
  add("event-str-31-32", ev("/", ["s", "a".repeat(31), "b".repeat(32), "é".repeat(16)]));
  add("event-str-255-256", ev("/", ["s", "a".repeat(255), "b".repeat(256)]));
  add("event-str-65535-65536", ev("/", ["s", "a".repeat(65535), "b".repeat(65536)]));
  add("event-str-unicode-long", ev("/", ["s", "日本😀".repeat(5000)]));
  add("ack-empty", ack("/", 5, []));
  add("ack-null", ack("/admin", 6, [null]));
  add("ack-nested", ack("/", 8, [{ ok: true, items: [{ id: 1 }, { id: 2 }] }, "done"]));
  add("ack-unicode", ack("/😀", 9, ["réponse 𝄞", { "ключ": "значение" }]));

  // Binary (BINARY_EVENT / BINARY_ACK in socket.io-parser; bin values in msgpack)
  add("bin-event-simple", ev("/", ["upload", Buffer.from([1, 2, 3])]));
  add("bin-event-empty-buffer", ev("/", ["upload", Buffer.alloc(0)]));
  add("bin-event-all-bytes", ev("/", ["upload", ALL_BYTES]));
  // notepack.io writes a non-Buffer typed array as ext type 0, not bin (as a browser does)
  add("bin-event-uint8array", ev("/", ["upload", new Uint8Array([9, 8, 7])]), {
    msgpackCanonical: false,
  });
  add("bin-event-nested", ev("/", [
    "file",
    { name: "a.bin", content: bytes(10), meta: { parts: [bytes(3, 1), bytes(4, 2)] } },
  ]));
  add("bin-event-ns-ack", ev("/admin", ["up", bytes(20), "tail"], 12));
  add("bin-event-ack-0", ev("/", ["up", bytes(5)], 0));
  add("bin-event-ten", ev("/", ["ten", ...Array.from({ length: 10 }, (_, i) => bytes(i + 1, i))]));
  add("bin-event-mixed", ev("/", ["mix", 1, "two", bytes(2), null, [bytes(3), { k: bytes(4) }], true]));
  add("bin-event-unicode", ev("/ünï", ["日本", { "ключ": bytes(6) }, "😀"]));
  add("bin-event-large", ev("/", ["big", bytes(70000)]));
  add("bin-event-bin16", ev("/", ["b16", bytes(300)]));
  add("bin-ack", ack("/", 7, [bytes(8)]));
  add("bin-ack-ns-nested", ack("/admin", 2 ** 31, [{ file: bytes(16), list: [bytes(1)] }, "ok"]));
  add("bin-ack-empty", ack("/", 3, [Buffer.alloc(0)]));

  // Seeded random events and acks
  for (let i = 0; i < 40; i++) {
    const nsp = pick(NAMESPACES.slice(0, 8));
    const allowBin = i % 3 === 0;
    const args = Array.from({ length: randInt(4) }, () => randValue(0, allowBin));
    if (i % 4 === 3) {
      add("random-ack-" + i, ack(nsp, randInt(10000), args));
    } else {
      const id = i % 2 ? randInt(100000) : undefined;
      add("random-event-" + i, ev(nsp, [randString(10) || "e", ...args], id));
    }
  }
  return cases;
}

// Client-shaped msgpack packets: what socket.io-client 4.8 really sends with the msgpack parser.
function clientMsgpackPackets() {
  return [
    ["client-connect-no-auth", { type: 0, data: undefined, nsp: "/" }],
    ["client-connect-no-auth-ns", { type: 0, data: undefined, nsp: "/admin" }],
    ["client-connect-auth", { type: 0, data: { token: "abc" }, nsp: "/" }],
    ["client-event-options", { type: 2, data: ["chat", "hi"], options: { compress: true }, nsp: "/" }],
    [
      "client-event-options-ack",
      { type: 2, data: ["q", 1], options: { compress: false }, id: 3, nsp: "/admin" },
    ],
    [
      "client-event-options-bin",
      { type: 2, data: ["up", bytes(9)], options: { compress: true }, nsp: "/" },
    ],
    ["client-ack", { type: 3, id: 4, data: ["answer", 42], nsp: "/" }],
    // A browser has no Buffer: binary goes out as a typed array, which notepack.io writes
    // as ext type 0 (ext 8/16/32), decoded by the JS side as an ArrayBuffer.
    [
      "client-event-typed-array",
      { type: 2, data: ["up", new Uint8Array([1, 2, 3]), new Uint8Array(300)], nsp: "/" },
    ],
    ["client-event-typed-array-one-zero-byte", { type: 2, data: ["up", new Uint8Array([0])], nsp: "/" }],
    ["client-event-typed-array-empty", { type: 2, data: ["up", new Uint8Array(0)], nsp: "/" }],
    ["client-disconnect", { type: 1, nsp: "/admin" }],
    ["client-event-undefined-arg", { type: 2, data: ["ev", undefined, 1], nsp: "/" }],
    // What a socket.io 4.8 server without connectionStateRecovery sends: `pid` is undefined.
    ["server-connect-pid-undefined", { type: 0, data: { sid: "s1", pid: undefined }, nsp: "/" }],
  ];
}

// Inputs the JS Decoders reject; ours must reject them too (RemoteProtocolError).
function sioRejects() {
  const mp = (obj) => msgpackParser.Encoder.prototype.encode(obj)[0];
  const json = [
    ["json-type-7", ["7"]],
    ["json-type-9", ['9["x"]']],
    ["json-type-letter", ["x"]],
    ["json-event-reserved-connect", ['2["connect"]']],
    ["json-event-reserved-disconnect", ['2["disconnect",1]']],
    ["json-event-reserved-connect-error", ['2["connect_error"]']],
    ["json-event-object", ['2{"a":1}']],
    ["json-event-empty-array", ["2[]"]],
    ["json-event-name-null", ["2[null]"]],
    ["json-event-bad-json", ['2["a"']],
    ["json-event-string", ['2"a"']],
    ["json-ack-object", ["31{}"]],
    ["json-connect-array", ["0[]"]],
    ["json-connect-string", ['0"x"']],
    ["json-connect-bool", ["0/admin,true"]],
    ["json-disconnect-data", ["1{}"]],
    ["json-connect-error-bool", ["4true"]],
    ["json-connect-error-array", ["4[]"]],
    ["json-binary-bad-count", ['5x-["a",{"_placeholder":true,"num":0}]', Buffer.from([1])]],
    ["json-binary-no-dash", ['51["a",{"_placeholder":true,"num":0}]']],
    ["json-binary-bad-placeholder", ['51-["a",{"_placeholder":true,"num":5}]', Buffer.from([1])]],
    ["json-binary-frame-first", [Buffer.from([1, 2])]],
  ];
  const msgpack = [
    ["msgpack-type-5", [mp({ type: 5, data: ["a"], nsp: "/" })]],
    ["msgpack-type-string", [mp({ type: "2", data: ["a"], nsp: "/" })]],
    ["msgpack-type-float", [mp({ type: 2.5, data: ["a"], nsp: "/" })]],
    ["msgpack-no-nsp", [mp({ type: 2, data: ["a"] })]],
    ["msgpack-nsp-number", [mp({ type: 2, data: ["a"], nsp: 1 })]],
    ["msgpack-event-object", [mp({ type: 2, data: { a: 1 }, nsp: "/" })]],
    ["msgpack-ack-string", [mp({ type: 3, id: 1, data: "x", nsp: "/" })]],
    ["msgpack-connect-array", [mp({ type: 0, data: [1], nsp: "/" })]],
    ["msgpack-connect-null", [mp({ type: 0, data: null, nsp: "/" })]],
    ["msgpack-disconnect-data", [mp({ type: 1, data: {}, nsp: "/" })]],
    ["msgpack-connect-error-number", [mp({ type: 4, data: 3, nsp: "/" })]],
    ["msgpack-id-string", [mp({ type: 2, data: ["a"], id: "1", nsp: "/" })]],
    ["msgpack-id-float", [mp({ type: 2, data: ["a"], id: 1.5, nsp: "/" })]],
    ["msgpack-trailing-bytes", [Buffer.concat([mp({ type: 1, nsp: "/" }), Buffer.from([0])])]],
    ["msgpack-truncated", [mp({ type: 2, data: ["abc"], nsp: "/" }).subarray(0, 8)]],
    ["msgpack-not-a-map", [mp([2, "/", ["a"]])]],
  ];
  return [
    ...json.map(([name, frames]) => ({ name, parser: "json", frames })),
    ...msgpack.map(([name, frames]) => ({ name, parser: "msgpack", frames })),
  ];
}

function stackCases() {
  return [
    ["json-two-events", "json", [ev("/", ["a", 1]), ev("/admin", ["b", "😀"], 3)]],
    ["json-connect-then-event", "json", [conn("/", { sid: "abc" }), ev("/", ["welcome"])]],
    ["json-binary-event", "json", [ev("/", ["up", bytes(5), { k: bytes(0) }])]],
    ["json-binary-ack-and-event", "json", [ack("/", 1, [bytes(3)]), ev("/", ["x", "line\u2028sep"])]],
    ["json-disconnect", "json", [disc("/admin")]],
    ["json-connect-error", "json", [cerr("/", { message: "nope" })]],
    ["msgpack-two-events", "msgpack", [ev("/", ["a", 1]), ev("/admin", ["b", bytes(4)], 3)]],
    ["msgpack-connect-ack", "msgpack", [conn("/", { sid: "abc" }), ack("/", 2, ["r"])]],
  ].map(([name, parser, packets]) => ({ name, parser, packets }));
}

// ---------------------------------------------------------------------------------------
// Corpus mode

function check(cond, message) {
  if (!cond) throw new Error("corpus self-check failed: " + message);
}

function clone(v) {
  if (Buffer.isBuffer(v)) return Buffer.from(v);
  if (v instanceof ArrayBuffer) return v.slice(0);
  if (ArrayBuffer.isView(v)) return new Uint8Array(v.buffer.slice(v.byteOffset, v.byteOffset + v.byteLength));
  if (Array.isArray(v)) return v.map(clone);
  if (v !== null && typeof v === "object") {
    const out = {};
    for (const k of Object.keys(v)) out[k] = clone(v[k]);
    return out;
  }
  return v;
}

function buildCorpus() {
  const out = [];
  const emit = (c) => out.push(c);

  eioPackets().forEach((p, i) => {
    const frame = eioEncodeWs(p);
    const logical = { type: p.type, data: toLogical(p.data) };
    check(isDeepStrictEqual(eioLogical(eio.decodePacket(frame, "nodebuffer")), logical), "eio ws " + i);
    emit({ id: `eio-ws-${i}`, kind: "eio_ws", packet: logical, frame: frameOut(frame) });
  });

  eioPayloads().forEach((packets, i) => {
    const body = eioEncodePayload(packets);
    const logical = packets.map((p) => ({ type: p.type, data: toLogical(p.data) }));
    const back = eio.decodePayload(body, "nodebuffer").map(eioLogical);
    check(isDeepStrictEqual(back, logical), "eio payload " + i);
    emit({ id: `eio-payload-${i}`, kind: "eio_payload", packets: logical, body });
  });

  EIO_REJECT_FRAMES.forEach((frame, i) => {
    check(eio.decodePacket(frame, "nodebuffer").type === "error", "eio reject " + i);
    emit({ id: `eio-reject-frame-${i}`, kind: "eio_reject", frame: frameOut(frame) });
  });
  EIO_REJECT_BODIES.forEach((body, i) => {
    check(eio.decodePayload(body, "nodebuffer").some((p) => p.type === "error"), "eio reject body " + i);
    emit({ id: `eio-reject-body-${i}`, kind: "eio_reject", body });
  });

  for (const c of sioCases()) {
    const logical = sioLogical(c.packet);
    for (const parser of ["json", "msgpack"]) {
      if (!c[parser]) continue;
      const frames = makeSioEncoder(parser).encode(clone(c.packet));
      const back = sioDecodeFrames(parser, frames);
      check(back.length === 1 && isDeepStrictEqual(back[0], logical), `${parser} ${c.name}`);
      emit({
        id: `sio-${parser}-${c.name}`,
        kind: `sio_${parser}`,
        packet: logical,
        frames: frames.map(frameOut),
        canonical: parser === "json" || c.msgpackCanonical,
      });
    }
  }

  for (const [name, packet] of clientMsgpackPackets()) {
    const frames = new msgpackParser.Encoder().encode(clone(packet));
    const back = sioDecodeFrames("msgpack", frames);
    const logical = sioLogical(packet);
    check(back.length === 1 && isDeepStrictEqual(back[0], logical), "client msgpack " + name);
    emit({
      id: `sio-msgpack-${name}`,
      kind: "sio_msgpack",
      packet: logical,
      frames: frames.map(frameOut),
      canonical: false,
    });
  }

  for (const r of sioRejects()) {
    let rejected = false;
    try {
      sioDecodeFrames(r.parser, r.frames);
    } catch {
      rejected = true;
    }
    check(rejected, "sio reject " + r.name);
    emit({ id: `sio-reject-${r.name}`, kind: "sio_reject", parser: r.parser, frames: r.frames.map(frameOut) });
  }

  for (const s of stackCases()) {
    const encoder = makeSioEncoder(s.parser);
    const messages = s.packets.flatMap((p) => encoder.encode(clone(p)));
    const body = eioEncodePayload(messages.map((data) => ({ type: 4, data })));
    const logical = s.packets.map(sioLogical);
    check(isDeepStrictEqual(stackDecode(s.parser, body), logical), "stack " + s.name);
    emit({ id: `stack-${s.name}`, kind: "stack_payload", parser: s.parser, packets: logical, body });
  }

  const ids = new Set(out.map((c) => c.id));
  check(ids.size === out.length, "duplicate case ids");
  return out;
}

// ---------------------------------------------------------------------------------------
// Decode mode

function decodeOne(req) {
  switch (req.kind) {
    case "eio_ws": {
      return [eioLogical(eio.decodePacket(frameIn(req.frame), "nodebuffer"))];
    }
    case "eio_payload": {
      if (typeof req.body !== "string") throw new Error("polling body must be text");
      return eio.decodePayload(req.body, "nodebuffer").map(eioLogical);
    }
    case "sio": {
      return sioDecodeFrames(req.parser, req.frames.map(frameIn));
    }
    case "stack_payload": {
      return stackDecode(req.parser, req.body);
    }
    default:
      throw new Error("unknown decode kind " + req.kind);
  }
}

async function readStdin() {
  const chunks = [];
  for await (const chunk of process.stdin) chunks.push(chunk);
  return Buffer.concat(chunks).toString("utf8");
}

async function decodeMode() {
  const input = await readStdin();
  const lines = [];
  // Split on "\n" only: U+2028 / U+2029 may appear raw inside JSON strings.
  for (const line of input.split("\n")) {
    if (!line) continue;
    const req = JSON.parse(line);
    let result;
    try {
      result = { id: req.id, ok: true, packets: decodeOne(req) };
    } catch (err) {
      result = { id: req.id, ok: false, error: String(err && err.message ? err.message : err) };
    }
    lines.push(JSON.stringify(result));
  }
  process.stdout.write(lines.join("\n") + "\n");
}

const mode = process.argv[2];
if (mode === "corpus") {
  process.stdout.write(buildCorpus().map((c) => JSON.stringify(c)).join("\n") + "\n");
} else if (mode === "decode") {
  await decodeMode();
} else {
  process.stderr.write("usage: node crosscheck.mjs corpus|decode\n");
  process.exit(2);
}
