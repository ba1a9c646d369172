// The workspace chat page: pick a name and a workspace (a room), see who is online, the
// workspace's last messages and the new ones, send to it.
//
// Server events (examples/workspace_chat.py):
//   connect auth {name}                         the name others see (presence)
//   join_workspace(workspaceId)                 ack {ok, workspaceId, history} or {ok: false,
//     error}; history: the last 50 receive_message payloads, oldest first (every later
//     one arrives live, maybe before this ack: history goes above them)
//   who_is_here(workspaceId)                    ack {ok, members: [{name, connections}]}
//   presence_join / presence_leave {workspaceId, name}   to the workspace's members
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
  const nameInput = $("name");
  const people = $("people");

  const socket = io({ autoConnect: false, auth: { name: nameInput.value.trim() } });
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

  function messageItem({ sender, text: body, timestamp }, extra) {
    const item = document.createElement("li");
    item.className = "message" + (sender === socket.id ? " mine" : "") + extra;
    const meta = document.createElement("span");
    meta.className = "meta";
    const when = new Date(timestamp).toLocaleTimeString();
    meta.textContent = `${sender === socket.id ? "you" : String(sender).slice(0, 6)} · ${when}`;
    const content = document.createElement("span");
    content.className = "text";
    content.textContent = body; // never innerHTML: messages are untrusted
    item.append(meta, content);
    return item;
  }

  function addMessage(message) {
    messages.append(messageItem(message, ""));
    empty.hidden = true;
    messages.scrollTop = messages.scrollHeight;
  }

  function showHistory(history) {
    // Older than anything received live since the join: above it.
    messages.prepend(...history.map((message) => messageItem(message, " history")));
    empty.hidden = messages.childElementCount > 0;
    messages.scrollTop = messages.scrollHeight;
  }

  function showPeople(members) {
    people.replaceChildren(
      ...members.map(({ name, connections }) => {
        const item = document.createElement("li");
        item.textContent = connections > 1 ? `${name} (${connections} tabs)` : name;
        item.dataset.name = name;
        return item;
      }),
    );
  }

  function refreshPeople() {
    if (!workspace) return showPeople([]);
    const asked = workspace;
    socket.timeout(5000).emit("who_is_here", asked, (err, ack) => {
      if (!err && ack.ok && asked === workspace) showPeople(ack.members);
    });
  }

  function join(id) {
    showError("");
    socket.timeout(5000).emit("join_workspace", id, (err, ack) => {
      if (err) return showError("The server did not answer the join.");
      if (!ack.ok) return showError(ack.error);
      setJoined(ack.workspaceId);
      showHistory(ack.history || []);
      refreshPeople();
    });
  }

  function reconnectAs(name, id) {
    // The name is in the connect auth, and a fresh connection leaves the old workspace
    // behind, so only the chosen one's messages arrive.
    messages.replaceChildren();
    people.replaceChildren();
    empty.hidden = false;
    workspace = id;
    socket.auth = { name };
    socket.disconnect().connect();
  }

  socket.on("connect", () => {
    setStatus("connected", "connected");
    showTransport();
    socket.io.engine.once("upgrade", showTransport);
    if (socket.recovered) {
      // The same socket, its rooms and the messages it missed came back.
      setJoined(workspace);
      refreshPeople();
    } else if (workspace) {
      // A new socket with no rooms: join the workspace again (its history comes along).
      messages.replaceChildren();
      empty.hidden = false;
      join(workspace);
    } else setJoined(null);
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
  socket.on("presence_join", ({ workspaceId }) => workspaceId === workspace && refreshPeople());
  socket.on("presence_leave", ({ workspaceId }) => workspaceId === workspace && refreshPeople());

  $("join-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const id = $("workspace").value.trim();
    const name = nameInput.value.trim();
    const renamed = name !== (socket.auth.name || "");
    if (!id || (id === workspace && !renamed)) return;
    if (workspace || renamed) return reconnectAs(name, id);
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
