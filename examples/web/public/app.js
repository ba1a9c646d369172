// The workspace chat page: pick a workspace (a room), see its messages, send to it.
//
// Server events (examples/workspace_chat.py):
//   join_workspace(workspaceId)                 ack {ok, workspaceId} or {ok: false, error}
//   dispatch_message({workspaceId, textMarker}) ack {ok, delivered} or {ok: false, error}
//   receive_message {sender, text, timestamp}   to every member of the workspace
//     (timestamp: an ISO 8601 string, as JSON.stringify(new Date()) writes it)
//
// The client uses socket.io-client's default transports: HTTP long-polling first, then the
// upgrade to WebSocket.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const status = $("status");
  const transport = $("transport");
  const messages = $("messages");
  const empty = $("empty");
  const current = $("current");
  const text = $("text");
  const send = $("send");
  const error = $("error");

  const socket = io({ autoConnect: false });
  let workspace = null; // the workspace this page has joined
  window.chat = { socket, workspace: () => workspace }; // for people and tests poking around

  function showTransport() {
    const engine = socket.io.engine;
    transport.textContent = engine ? engine.transport.name : "–";
  }

  function setStatus(state, label) {
    status.dataset.state = state;
    status.textContent = label;
  }

  function setJoined(id) {
    workspace = id;
    current.textContent = id ? `in “${id}”` : "";
    text.disabled = send.disabled = !id || !socket.connected;
    document.body.dataset.workspace = id || "";
  }

  function showError(message) {
    error.textContent = message || "";
  }

  function addMessage({ sender, text: body, timestamp }) {
    const item = document.createElement("li");
    item.className = "message" + (sender === socket.id ? " mine" : "");
    const meta = document.createElement("span");
    meta.className = "meta";
    const when = new Date(timestamp).toLocaleTimeString();
    meta.textContent = `${sender === socket.id ? "you" : String(sender).slice(0, 6)} · ${when}`;
    const content = document.createElement("span");
    content.className = "text";
    content.textContent = body; // never innerHTML: messages are untrusted
    item.append(meta, content);
    messages.append(item);
    empty.hidden = true;
    messages.scrollTop = messages.scrollHeight;
  }

  function join(id) {
    showError("");
    socket.timeout(5000).emit("join_workspace", id, (err, ack) => {
      if (err) return showError("The server did not answer the join.");
      if (!ack.ok) return showError(ack.error);
      setJoined(ack.workspaceId);
    });
  }

  socket.on("connect", () => {
    setStatus("connected", "connected");
    showTransport();
    socket.io.engine.once("upgrade", showTransport);
    // A new connection is a new socket with no rooms: join the workspace again.
    if (workspace) join(workspace);
    else setJoined(null);
  });
  socket.on("disconnect", (reason) => {
    setStatus("disconnected", `disconnected (${reason})`);
    text.disabled = send.disabled = true;
    showTransport();
  });
  socket.on("connect_error", (err) => {
    setStatus("disconnected", "cannot connect");
    showError(err.message);
  });
  socket.on("receive_message", addMessage);

  $("join-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const id = $("workspace").value.trim();
    if (!id || id === workspace) return;
    if (workspace) {
      // The server keeps every room a socket joined; a fresh connection leaves the old
      // workspace behind, so only the chosen one's messages arrive.
      messages.replaceChildren();
      empty.hidden = false;
      workspace = id;
      socket.disconnect().connect();
      return;
    }
    join(id);
  });

  $("send-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const body = text.value;
    if (!body || !workspace) return;
    showError("");
    socket
      .timeout(5000)
      .emit("dispatch_message", { workspaceId: workspace, textMarker: body }, (err, ack) => {
        if (err) return showError("The server did not answer.");
        if (!ack.ok) return showError(ack.error);
        text.value = "";
        text.focus();
      });
  });

  socket.connect();
})();
