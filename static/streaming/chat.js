// The chat page: one WebSocket speaking the contract in docs/protocol.md.
//
// Replies stream chunk by chunk into elements carrying data-message-id and data-status. Stop (or
// Esc) sends `stream.cancel` and settles on the server's `stream.finished`. The socket reconnects
// with backoff; after a reconnect (and on every page load) the conversation is re-read from the
// server, which is the source of truth: a reply cut by the lost connection comes back as
// `interrupted` with the text that was saved.
//
// Everything that came from a user or the model is inserted as text (textContent / text nodes),
// never parsed as HTML.

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const STATUS_LABELS = { cancelled: "Stopped", failed: "Failed", interrupted: "Interrupted" };
const REMOTE_POLL_MS = 1000;
// A reply the database calls "streaming" but no instance runs (its server died) is shown as
// interrupted after this many polls in a row find it missing from the registry.
const ORPHAN_POLLS = 2;

const $ = (id) => document.getElementById(id);
const ui = {
  log: $("messages"),
  empty: $("empty"),
  form: $("composer"),
  input: $("message"),
  send: $("send"),
  stop: $("stop"),
  connection: $("connection"),
  notice: $("notice"),
  list: $("conversations"),
  noConversations: $("no-conversations"),
  newChat: $("new-chat"),
  title: $("conversation-title"),
};

const state = {
  socket: null,
  everOpened: false,
  attempts: 0,
  conversationId: conversationFromUrl(),
  conversations: [],
  // Replies streaming to this socket: message_id -> {conversationId, text, el, stopping}.
  live: new Map(),
  // A chat.message sent but not yet answered by stream.started.
  pending: null,
  // Replies of the shown conversation streaming elsewhere (another tab, a dropped socket):
  // message_id -> number of polls in a row that found no running stream for it.
  remote: new Map(),
  remoteStopping: new Set(),
  pollTimer: null,
  noticeTimer: null,
};

// --- URL and HTTP --------------------------------------------------------------------------

function conversationFromUrl() {
  const id = new URLSearchParams(location.search).get("c");
  return id && UUID.test(id) ? id.toLowerCase() : null;
}

function setUrl(conversationId, { replace = false } = {}) {
  const url = conversationId ? `?c=${conversationId}` : location.pathname;
  history[replace ? "replaceState" : "pushState"](null, "", url);
}

function csrfToken() {
  const match = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
  return match ? decodeURIComponent(match[1]) : "";
}

async function getJson(path) {
  const response = await fetch(path, { headers: { Accept: "application/json" } });
  const body = await response.json().catch(() => ({}));
  return { ok: response.ok, status: response.status, body };
}

// --- Rendering -----------------------------------------------------------------------------

function showNotice(text, { sticky = false } = {}) {
  clearTimeout(state.noticeTimer);
  ui.notice.textContent = text;
  ui.notice.hidden = false;
  if (!sticky) state.noticeTimer = setTimeout(() => { ui.notice.hidden = true; }, 6000);
}

function setConnection(kind, text) {
  ui.connection.dataset.state = kind;
  ui.connection.textContent = text;
}

function scrollToEnd() {
  const nearEnd = ui.log.scrollHeight - ui.log.scrollTop - ui.log.clientHeight < 120;
  if (nearEnd) ui.log.scrollTop = ui.log.scrollHeight;
}

function renderMessage({ message_id, role, text, status, error }) {
  ui.empty.hidden = true;
  const el = document.createElement("article");
  el.className = `msg ${role}`;
  el.dataset.role = role;
  if (message_id) el.dataset.messageId = message_id;
  const body = document.createElement("div");
  body.className = "body";
  body.textContent = text || "";
  el.append(body);
  if (role === "assistant") {
    const meta = document.createElement("p");
    meta.className = "meta";
    el.append(meta);
    setStatus(el, status, error);
  }
  ui.log.append(el);
  ui.log.scrollTop = ui.log.scrollHeight;
  return el;
}

function setStatus(el, status, error = "", note = "") {
  el.dataset.status = status;
  el.setAttribute("aria-busy", String(status === "streaming"));
  const label = STATUS_LABELS[status];
  const empty = !el.querySelector(".body").textContent;
  let text = note;
  if (label) {
    const detail = error || (status === "cancelled"
      ? (empty ? "before the reply began." : "the partial reply is kept.")
      : "");
    text = detail ? `${label}: ${detail}` : label;
  }
  el.querySelector(".meta").textContent = text;
}

function clearLog() {
  for (const el of ui.log.querySelectorAll(".msg")) el.remove();
  ui.empty.hidden = false;
}

function renderConversations() {
  ui.list.replaceChildren();
  for (const c of state.conversations) {
    const li = document.createElement("li");
    const a = document.createElement("a");
    a.href = `?c=${c.conversation_id}`;
    a.dataset.conversationId = c.conversation_id;
    a.textContent = c.title || "Untitled";
    if (c.conversation_id === state.conversationId) a.setAttribute("aria-current", "page");
    li.append(a);
    ui.list.append(li);
  }
  ui.noConversations.hidden = state.conversations.length > 0;
  const current = state.conversations.find((c) => c.conversation_id === state.conversationId);
  ui.title.textContent = state.conversationId
    ? (current && current.title) || "Conversation"
    : "New conversation";
  document.title = `${ui.title.textContent} · Streaming chat`;
}

// --- Controls --------------------------------------------------------------------------------

function busyReply() {
  // The reply of the shown conversation that Stop would stop, if any.
  for (const [id, s] of state.live) {
    if (s.conversationId === state.conversationId) return { id, stopping: s.stopping };
  }
  for (const id of state.remote.keys()) return { id, stopping: state.remoteStopping.has(id) };
  return null;
}

function updateControls() {
  const open = state.socket && state.socket.readyState === WebSocket.OPEN;
  const pending = state.pending && state.pending.conversationId === state.conversationId;
  const busy = busyReply();
  const stopping = busy ? busy.stopping : Boolean(pending && state.pending.stopRequested);
  ui.send.disabled = !open || Boolean(busy) || Boolean(pending);
  ui.stop.hidden = !busy && !pending;
  ui.stop.disabled = stopping;
  ui.stop.dataset.state = stopping ? "stopping" : "ready";
  ui.stop.textContent = stopping ? "Stopping…" : "Stop";
}

// --- Loading from the server -----------------------------------------------------------------

async function loadConversations() {
  const { ok, body } = await getJson("/api/conversations/");
  if (ok) state.conversations = body.conversations || [];
  renderConversations();
}

async function loadConversation() {
  const id = state.conversationId;
  state.remote.clear();
  if (!id) {
    clearLog();
    updateControls();
    return;
  }
  const { ok, status, body } = await getJson(`/api/conversations/${id}/messages/`);
  if (id !== state.conversationId) return; // The user moved on meanwhile.
  clearLog();
  if (!ok) {
    showNotice(status === 404 || status === 403
      ? "That conversation does not exist or belongs to someone else."
      : "Could not load the conversation; try reloading.");
    if (status === 404 || status === 403) {
      state.conversationId = null;
      setUrl(null, { replace: true });
      renderConversations();
    }
    updateControls();
    return;
  }
  for (const m of body.messages) {
    const live = state.live.get(m.message_id);
    if (live) {
      live.el = renderMessage({ ...m, text: live.text, status: "streaming" });
    } else {
      const el = renderMessage(m);
      if (m.role === "assistant" && m.status === "streaming") {
        state.remote.set(m.message_id, 0);
        setStatus(el, "streaming", "", "Still being written elsewhere…");
      }
    }
  }
  schedulePoll();
  updateControls();
}

function schedulePoll() {
  clearTimeout(state.pollTimer);
  if (state.remote.size) state.pollTimer = setTimeout(pollRemote, REMOTE_POLL_MS);
}

async function pollRemote() {
  const id = state.conversationId;
  const [messages, active] = await Promise.all([
    getJson(`/api/conversations/${id}/messages/`),
    getJson("/api/streams/active/"),
  ]);
  if (id !== state.conversationId || !messages.ok) return schedulePoll();
  const running = new Map(active.ok ? active.body.streams.map((s) => [s.message_id, s]) : []);
  for (const m of messages.body.messages) {
    if (!state.remote.has(m.message_id)) continue;
    const el = ui.log.querySelector(`[data-message-id="${m.message_id}"]`);
    if (!el) continue;
    if (m.status !== "streaming") {
      state.remote.delete(m.message_id);
      state.remoteStopping.delete(m.message_id);
      el.querySelector(".body").textContent = m.text;
      setStatus(el, m.status, m.error);
      continue;
    }
    const stream = running.get(m.message_id);
    const misses = !active.ok ? 0 : stream && !stream.stale ? 0 : state.remote.get(m.message_id) + 1;
    state.remote.set(m.message_id, misses);
    if (misses >= ORPHAN_POLLS) {
      // Nothing runs it any more (its server died): it can only end interrupted.
      state.remote.delete(m.message_id);
      setStatus(el, "interrupted", "the server writing this reply stopped responding.");
    }
  }
  updateControls();
  schedulePoll();
}

// --- Socket ------------------------------------------------------------------------------------

function connect() {
  setConnection("connecting", state.everOpened ? "Reconnecting…" : "Connecting…");
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const socket = new WebSocket(`${scheme}://${location.host}/ws/chat/`);
  state.socket = socket;
  socket.addEventListener("open", () => {
    const resync = state.everOpened;
    state.everOpened = true;
    state.attempts = 0;
    setConnection("open", "Connected");
    updateControls();
    if (resync) {
      loadConversation();
      loadConversations();
    }
  });
  socket.addEventListener("message", (event) => {
    let frame;
    try {
      frame = JSON.parse(event.data);
    } catch {
      return;
    }
    handleFrame(frame);
  });
  socket.addEventListener("close", async (event) => {
    if (state.socket !== socket) return;
    state.socket = null;
    connectionLost();
    if (event.code === 4401) {
      // The session is gone (cookies cleared, expired): the chat page hands out a new one.
      await fetch("/", { headers: { Accept: "text/html" } }).catch(() => {});
    }
    const delay = Math.min(10000, 500 * 2 ** state.attempts) * (0.75 + Math.random() / 2);
    state.attempts += 1;
    setConnection("closed", `Offline, retrying in ${Math.max(1, Math.round(delay / 1000))} s`);
    setTimeout(connect, delay);
  });
}

function connectionLost() {
  // The server stops every reply of a closed socket and stores it as interrupted; show that now
  // and re-read the stored text once reconnected.
  for (const s of state.live.values()) {
    if (s.el) setStatus(s.el, "interrupted", "the connection was lost; reconnecting to check what was saved.");
  }
  state.live.clear();
  if (state.pending) {
    showNotice("The connection was lost before the message was answered.");
    state.pending = null;
  }
  updateControls();
}

function sendFrame(frame) {
  if (!state.socket || state.socket.readyState !== WebSocket.OPEN) return false;
  state.socket.send(JSON.stringify(frame));
  return true;
}

function handleFrame(frame) {
  switch (frame.type) {
    case "stream.started":
      return onStarted(frame);
    case "stream.chunk":
      return onChunk(frame);
    case "stream.finished":
      return onFinished(frame);
    case "cancel.accepted":
      if (!frame.delivered) {
        showNotice("Stop could not be delivered right now; press Stop again.");
        const s = state.live.get(frame.message_id);
        if (s) s.stopping = false;
        state.remoteStopping.delete(frame.message_id);
        updateControls();
      }
      return undefined;
    case "error":
      return onError(frame);
    default:
      return undefined;
  }
}

function onStarted(frame) {
  const pending = state.pending;
  state.pending = null;
  const conversationId = frame.conversation_id;
  if (pending && pending.conversationId === null && state.conversationId === null) {
    state.conversationId = conversationId;
    setUrl(conversationId);
  }
  const shown = conversationId === state.conversationId;
  const stream = { conversationId, text: "", el: null, stopping: Boolean(pending && pending.stopRequested) };
  if (shown) stream.el = renderMessage({ message_id: frame.message_id, role: "assistant", text: "", status: "streaming" });
  state.live.set(frame.message_id, stream);
  if (stream.stopping) requestCancel(frame.message_id);
  updateControls();
  loadConversations();
}

function onChunk(frame) {
  const stream = state.live.get(frame.message_id);
  if (!stream) return;
  stream.text += frame.text;
  if (stream.el) {
    stream.el.querySelector(".body").append(document.createTextNode(frame.text));
    stream.el.dataset.chunks = String(frame.index + 1);
    scrollToEnd();
  }
}

function onFinished(frame) {
  const stream = state.live.get(frame.message_id);
  if (!stream) return;
  state.live.delete(frame.message_id);
  if (stream.el) {
    stream.el.querySelector(".body").normalize();
    stream.el.dataset.chunks = String(frame.chunks);
    setStatus(stream.el, frame.status, frame.error || "");
  }
  updateControls();
}

function onError(frame) {
  const text = frame.message || frame.code;
  if (state.pending) {
    // The chat.message was refused: take the optimistic bubble back and restore the text.
    const { el, text: sent } = state.pending;
    state.pending = null;
    el.remove();
    if (!ui.input.value) ui.input.value = sent;
    if (!ui.log.querySelector(".msg")) ui.empty.hidden = false;
  }
  if (frame.code === "not_found" && state.live.size) {
    // A Stop that raced the end of its reply: stream.finished is on its way.
    return;
  }
  showNotice(text);
  for (const s of state.live.values()) s.stopping = false;
  state.remoteStopping.clear();
  updateControls();
}

// --- Actions -----------------------------------------------------------------------------------

function sendMessage() {
  const text = ui.input.value.trim();
  if (!text || state.pending || busyReply()) return;
  const frame = { type: "chat.message", text };
  if (state.conversationId) frame.conversation_id = state.conversationId;
  if (!sendFrame(frame)) {
    showNotice("Not connected yet; your message was not sent.");
    return;
  }
  const el = renderMessage({ role: "user", text });
  state.pending = { conversationId: state.conversationId, text, el, stopRequested: false };
  ui.input.value = "";
  updateControls();
}

async function requestCancel(messageId) {
  if (sendFrame({ type: "stream.cancel", message_id: messageId })) return;
  // No socket right now: the HTTP endpoint reaches the same service.
  const response = await fetch(`/api/streams/${messageId}/cancel/`, {
    method: "POST",
    headers: { "X-CSRFToken": csrfToken(), Accept: "application/json" },
  }).catch(() => null);
  if (!response || (response.status !== 202 && response.status !== 404)) {
    showNotice("Stop could not be delivered right now; press Stop again.");
    state.remoteStopping.delete(messageId);
    updateControls();
  }
}

function stop() {
  const busy = busyReply();
  if (busy) {
    if (busy.stopping) return;
    const live = state.live.get(busy.id);
    if (live) live.stopping = true;
    else state.remoteStopping.add(busy.id);
    updateControls();
    requestCancel(busy.id);
  } else if (state.pending && !state.pending.stopRequested) {
    // Stop before stream.started: cancel as soon as the reply has an id.
    state.pending.stopRequested = true;
    updateControls();
  }
}

function openConversation(conversationId, { push = true } = {}) {
  if (conversationId === state.conversationId) return;
  state.conversationId = conversationId;
  if (push) setUrl(conversationId);
  renderConversations();
  loadConversation();
  ui.input.focus();
}

// --- Wiring ------------------------------------------------------------------------------------

ui.form.addEventListener("submit", (event) => {
  event.preventDefault();
  sendMessage();
});

ui.input.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    sendMessage();
  }
});

document.addEventListener("keydown", (event) => {
  if (event.key === "Escape" && !ui.stop.hidden) {
    event.preventDefault();
    stop();
  }
});

ui.stop.addEventListener("click", stop);
ui.newChat.addEventListener("click", () => openConversation(null));

ui.list.addEventListener("click", (event) => {
  const link = event.target.closest("a[data-conversation-id]");
  if (!link || event.metaKey || event.ctrlKey || event.shiftKey || event.button !== 0) return;
  event.preventDefault();
  openConversation(link.dataset.conversationId);
});

window.addEventListener("popstate", () => openConversation(conversationFromUrl(), { push: false }));

renderConversations();
updateControls();
loadConversations();
loadConversation();
connect();
ui.input.focus();
