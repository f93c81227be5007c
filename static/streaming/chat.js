// Minimal chat client for the wire contract in docs/protocol.md.
const messages = document.getElementById("messages");
const form = document.getElementById("composer");
const input = document.getElementById("message");
const stopButton = document.getElementById("stop");
const connection = document.getElementById("connection");
let socket;
let conversationId = null;
let current = null;

function addMessage(role, text, status) {
  const el = document.createElement("div");
  el.className = `msg ${role}`;
  el.textContent = text;
  if (status) el.dataset.status = status;
  messages.appendChild(el);
  return el;
}

function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  socket = new WebSocket(`${scheme}://${location.host}/ws/chat/`);
  socket.onopen = () => { connection.dataset.state = "open"; connection.textContent = "connected"; };
  socket.onclose = () => {
    connection.dataset.state = "closed"; connection.textContent = "reconnecting…";
    setTimeout(connect, 1000);
  };
  socket.onmessage = (event) => {
    const frame = JSON.parse(event.data);
    if (frame.type === "stream.started") {
      conversationId = frame.conversation_id;
      current = addMessage("assistant", "", "streaming");
      current.dataset.messageId = frame.message_id;
      stopButton.hidden = false;
    } else if (frame.type === "stream.chunk" && current) {
      current.textContent += frame.text;
    } else if (frame.type === "stream.finished" && current) {
      current.dataset.status = frame.status;
      current = null;
      stopButton.hidden = true;
    }
  };
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  const text = input.value.trim();
  if (!text || socket.readyState !== WebSocket.OPEN) return;
  addMessage("user", text);
  const frame = { type: "chat.message", text };
  if (conversationId) frame.conversation_id = conversationId;
  socket.send(JSON.stringify(frame));
  input.value = "";
});

stopButton.addEventListener("click", () => {
  if (current) socket.send(JSON.stringify({ type: "stream.cancel", message_id: current.dataset.messageId }));
});

connect();
