// The twinlm chat page: talks to this server's own OpenAI-compatible API (/v1/models, streamed
// /v1/chat/completions read with fetch + ReadableStream). Model text is only ever set as textContent.
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  models: [],          // [{id, name}]
  messages: [],        // the chat so far, as the API takes it
  key: sessionStorage.getItem("twinlm-api-key") || "",
  controller: null,    // the reply being streamed (to stop it)
};

function headers() {
  const h = { "Content-Type": "application/json" };
  if (state.key) h.Authorization = "Bearer " + state.key;
  return h;
}

function setStatus(text) { $("status").textContent = text; }

function personaName() {
  const model = state.models.find((m) => m.id === $("persona").value);
  return model ? model.name : $("persona").value;
}

function addMessage(kind, who, text) {
  const box = document.createElement("div");
  box.className = "message " + kind;
  const label = document.createElement("span");
  label.className = "who";
  label.textContent = who;
  const body = document.createElement("div");
  body.className = "text";
  body.textContent = text;
  box.append(label, body);
  $("log").append(box);
  box.scrollIntoView({ block: "end" });
  return box;
}

async function errorText(response) {
  try {
    const body = await response.json();
    if (body && body.error && body.error.message) return body.error.message;
  } catch (_) { /* not JSON */ }
  return "HTTP " + response.status;
}

async function loadModels() {
  // Where the server wants a key and the page has none, it asks first (a 401 would be a console error);
  // a wrong key is answered 401 and asked again.
  if (!state.key) {
    const health = await (await fetch("/health")).json();
    if (health.api_key) {
      $("key-form").hidden = false;
      setStatus("This server needs its API key (TWINLM_API_KEY).");
      $("key").focus();
      return;
    }
  }
  const response = await fetch("/v1/models", { headers: headers() });
  if (response.status === 401) {
    $("key-form").hidden = false;
    setStatus(await errorText(response));
    return;
  }
  if (!response.ok) { setStatus(await errorText(response)); return; }
  const body = await response.json();
  state.models = body.data.map((m) => ({ id: m.id, name: m.name || m.id }));
  const select = $("persona");
  select.replaceChildren();
  for (const model of state.models) {
    const option = document.createElement("option");
    option.value = model.id;
    option.textContent = model.name;
    select.append(option);
  }
  $("key-form").hidden = true;
  startOver();
}

function startOver() {
  if (state.controller) {
    state.controller.stale = true; // its reply belongs to the chat being cleared
    state.controller.abort();
    state.controller = null;
    $("send").textContent = "Send";
  }
  state.messages = [];
  $("log").replaceChildren();
  setStatus(state.models.length ? "Chatting with " + personaName() + "." : "");
  $("input").focus();
}

// One server-sent event's data; returns true at [DONE].
function handleEvent(data, box, reply) {
  if (data === "[DONE]") return true;
  const chunk = JSON.parse(data);
  if (chunk.error) throw new Error(chunk.error.message);
  for (const choice of chunk.choices || []) {
    const piece = choice.delta && choice.delta.content;
    if (piece) {
      reply.text += piece;
      box.querySelector(".text").textContent = reply.text;
      box.scrollIntoView({ block: "end" });
    }
  }
  return false;
}

async function send(text) {
  const model = $("persona").value;
  if (!model) return;
  state.messages.push({ role: "user", content: text });
  addMessage("user", "You", text);
  const box = addMessage("assistant streaming", personaName(), "");
  const reply = { text: "" };
  const controller = new AbortController();
  state.controller = controller;
  $("send").textContent = "Stop";
  setStatus(personaName() + " is typing…");
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: headers(),
      body: JSON.stringify({ model, messages: state.messages, stream: true }),
      signal: controller.signal,
    });
    if (!response.ok) throw new Error(await errorText(response));
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    let done = false;
    while (!done) {
      const { value, done: ended } = await reader.read();
      if (ended) break;
      buffer += decoder.decode(value, { stream: true });
      let end;
      while (!done && (end = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        for (const line of event.split("\n")) {
          if (line.startsWith("data: ")) done = handleEvent(line.slice(6), box, reply) || done;
        }
      }
    }
    setStatus("");
  } catch (err) {
    if (err.name === "AbortError") {
      if (!controller.stale) setStatus("Stopped.");
    } else {
      box.classList.add("error");
      box.querySelector(".text").textContent = reply.text || "Error: " + err.message;
      setStatus("Error: " + err.message);
    }
  } finally {
    box.classList.remove("streaming");
    // What was shown is part of the chat (a stopped reply too), so the next turn sees it.
    if (reply.text && !controller.stale) state.messages.push({ role: "assistant", content: reply.text });
    if (state.controller === controller) {
      state.controller = null;
      $("send").textContent = "Send";
    }
  }
}

function submit(event) {
  event.preventDefault();
  if (state.controller) { state.controller.abort(); return; }
  const text = $("input").value;
  if (!text.trim()) return;
  $("input").value = "";
  send(text);
}

window.addEventListener("DOMContentLoaded", () => {
  $("composer").addEventListener("submit", submit);
  $("input").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) submit(event);
  });
  $("persona").addEventListener("change", startOver);
  $("reset").addEventListener("click", startOver);
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    state.key = $("key").value.trim();
    sessionStorage.setItem("twinlm-api-key", state.key);
    loadModels().catch((err) => setStatus("Error: " + err.message));
  });
  loadModels().catch((err) => setStatus("Error: " + err.message));
});
