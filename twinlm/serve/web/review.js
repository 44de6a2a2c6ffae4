// The review page: one page of conversations, one conversation's sessions at a time, as the build sees
// them. Corpus text goes into the page only through textContent (never innerHTML): a message holding
// "<script>" shows those characters.
"use strict";

const PAGE = 50; // conversations per page
const SESSIONS = 20; // sessions per page of one conversation
const state = { listOffset: 0, total: 0, items: [], conv: null, convOffset: 0, current: 0 };

const $ = (id) => document.getElementById(id);

function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

function button(label, title, onClick) {
  const b = el("button", null, label);
  b.type = "button";
  if (title) b.title = title;
  b.addEventListener("click", (event) => {
    event.stopPropagation();
    onClick();
  });
  return b;
}

function say(text, error) {
  const status = $("status");
  status.textContent = text;
  status.className = error ? "error" : "";
}

async function api(path, body) {
  const options = body === undefined ? {} : {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  };
  const response = await fetch("/review/api/" + path, options);
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    // {"detail": "..."} from the review app; {"error": {"message": "..."}} inside the `twinlm serve` app.
    const detail = typeof data.detail === "string" ? data.detail
      : data.error && typeof data.error.message === "string" ? data.error.message
      : "request failed (" + response.status + ")";
    throw new Error(detail);
  }
  return data;
}

function when(ms) {
  if (ms === null || ms === undefined) return "";
  return new Date(ms).toISOString().slice(0, 16).replace("T", " ");
}

function filters() {
  const params = new URLSearchParams();
  for (const [key, id] of [["source", "f-source"], ["chat", "f-chat"], ["person", "f-person"],
                           ["search", "f-search"], ["excluded", "f-excluded"]]) {
    const value = $(id).value.trim();
    if (value) params.set(key, value);
  }
  return params;
}

async function loadList() {
  const params = filters();
  params.set("offset", state.listOffset);
  params.set("limit", PAGE);
  try {
    const data = await api("conversations?" + params.toString());
    state.total = data.total;
    state.items = data.conversations;
  } catch (e) {
    say(e.message, true);
    return;
  }
  const list = $("list");
  list.replaceChildren();
  for (const c of state.items) {
    const item = el("li", c.excluded ? "excluded" : "");
    item.dataset.id = c.id;
    if (state.conv && state.conv.id === c.id) item.classList.add("current");
    item.append(el("div", "title", c.title || "(untitled)"));
    const built = c.last_build ? ` · ${c.last_build.samples} samples` : "";
    const changed = (c.excluded_messages ? ` · ${c.excluded_messages} excluded` : "") +
      (c.edited_messages ? ` · ${c.edited_messages} edited` : "");
    item.append(el("div", "meta", `${c.source} · ${c.messages} messages${built}${changed}`));
    item.addEventListener("click", () => openConversation(c.id, 0));
    list.append(item);
  }
  const last = Math.min(state.listOffset + state.items.length, state.total);
  $("list-info").textContent = state.total
    ? `${state.listOffset + 1}–${last} of ${state.total} conversations`
    : "No conversation matches.";
  $("list-prev").disabled = state.listOffset === 0;
  $("list-next").disabled = last >= state.total;
}

async function loadTotals() {
  try {
    const t = await api("totals");
    const totals = $("totals");
    totals.textContent = t.samples === null
      ? t.label
      : `${t.samples} samples · ≈${t.trained_tokens} trained tokens (estimate)`;
    totals.title = t.label;
  } catch (e) {
    say(e.message, true);
  }
}

async function openConversation(id, index) {
  const offset = Math.floor(index / SESSIONS) * SESSIONS;
  try {
    state.conv = await api(`conversations/${id}?offset=${offset}&limit=${SESSIONS}`);
  } catch (e) {
    say(e.message, true);
    return;
  }
  state.convOffset = offset;
  state.current = Math.min(index, Math.max(0, state.conv.parts - 1));
  for (const item of $("list").children) item.classList.toggle("current", Number(item.dataset.id) === id);
  renderConversation();
}

function renderConversation() {
  const c = state.conv;
  const detail = $("detail");
  detail.replaceChildren();
  const head = el("div", "conv-head");
  head.append(el("h2", null, c.title || "(untitled)"), el("span", "meta", `${c.key} · ${c.kind}`));
  const these = c.sessions.length < c.parts ? " (sessions shown)" : "";
  head.append(el("span", "meta",
    `${c.parts} sessions · ${c.samples} samples · ${c.trained_turns} trained turns${these}`));
  head.append(button(c.excluded ? "Include chat" : "Exclude chat", "The whole conversation",
    () => change("exclude", { conversation: c.id, include: c.excluded })));
  if (c.excluded) head.append(el("strong", "excluded-flag", "excluded"));
  detail.append(head);
  if (c.note) detail.append(el("p", "note", "Note: " + c.note));
  for (const s of c.sessions) detail.append(renderSession(s));
  const pager = el("div", "pager");
  const prev = button("◀ sessions", null, () => openConversation(c.id, Math.max(0, state.convOffset - SESSIONS)));
  prev.disabled = state.convOffset === 0;
  const next = button("sessions ▶", null, () => openConversation(c.id, state.convOffset + SESSIONS));
  next.disabled = state.convOffset + SESSIONS >= c.parts;
  pager.append(prev, el("span", null, `${state.convOffset + 1}–${state.convOffset + c.sessions.length} of ${c.parts}`), next);
  detail.append(pager);
  markCurrent(false);
}

function renderSession(s) {
  const box = el("div", "session" + (s.excluded ? " excluded" : ""));
  box.dataset.index = s.index;
  const bar = el("div", "bar");
  const kept = s.samples.filter((x) => x.kept);
  const trained = kept.reduce((n, x) => n + x.turns.filter((t) => t.trained).length, 0);
  bar.append(el("strong", null, `Session ${s.index}`), el("span", "meta", `${when(s.first)} – ${when(s.last)}`),
    el("span", "meta", `${s.messages.length} messages · ${kept.length} samples · ${trained} trained turns`));
  bar.append(button(s.excluded ? "Include session" : "Exclude session", "x",
    () => change("exclude", { conversation: state.conv.id, session: s.index, include: s.excluded })));
  for (const sample of s.samples) {
    if (!sample.kept) {
      const why = Object.keys(sample.rules).filter((r) => r.startsWith("session")).join(", ");
      bar.append(el("span", "rules", "no sample: " + (why || "no trained turn after the first")));
    }
  }
  bar.addEventListener("click", () => { state.current = s.index; markCurrent(true); });
  box.append(bar);
  for (const m of s.messages) box.append(renderMessage(m));
  return box;
}

function renderMessage(m) {
  const row = el("div", "msg " + m.status);
  row.dataset.id = m.id;
  row.append(el("span", "id", "#" + m.id), el("span", "when", when(m.ts)));
  row.append(el("span", "speaker", m.speaker));
  const body = el("div", "body");
  const shown = m.trained_text !== null && m.trained_text !== undefined ? m.trained_text : m.text;
  body.append(el("div", "text", shown));
  const notes = el("div", "notes");
  if (m.edited) {
    const edited = el("span", "edited", "edited ");
    edited.title = "The export says: " + m.original;
    notes.append(edited);
  }
  for (const [rule, n] of Object.entries(m.rules || {})) {
    const redaction = rule.startsWith("redacted") || rule.startsWith("pseudonymised");
    notes.append(el("span", redaction ? "redacted" : "rules", rule + (n > 1 ? ` ×${n}` : "") + " "));
  }
  if (m.status === "excluded" || m.status === "superseded") notes.append(el("span", "rules", m.status));
  body.append(notes);
  row.append(body);
  const actions = el("span", "actions");
  actions.append(button("Edit", "Change the text it trains", () => startEdit(row, body, m)));
  actions.append(m.status === "excluded"
    ? button("Keep", "Take it back", () => change("edit", { message: m.id, keep: true }))
    : button("Drop", "Leave this message out", () => change("edit", { message: m.id, drop: true })));
  if (m.edited) actions.append(button("Restore", "Train the exported text again",
    () => change("edit", { message: m.id, restore: true })));
  row.append(actions);
  return row;
}

function startEdit(row, body, m) {
  const area = el("textarea", "editor");
  area.value = m.text;
  const save = button("Save", "Ctrl+Enter", () => change("edit", { message: m.id, text: area.value }));
  save.className = "save";
  const cancel = button("Cancel", "Esc", () => renderConversation());
  area.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) save.click();
    if (event.key === "Escape") cancel.click();
  });
  body.replaceChildren(area, save, cancel);
  area.focus();
}

async function change(kind, body) {
  try {
    const result = await api(kind, body);
    say(result.changed ? `Changed ${result.changed} (change ${result.change.id}); u undoes it.` : "Nothing to change.");
  } catch (e) {
    say(e.message, true);
    return;
  }
  await refresh();
}

async function undo() {
  try {
    const result = await api("undo", {});
    say(`Undid change ${result.undone.id} (${result.undone.action}): ${result.restored} restored.`);
  } catch (e) {
    say(e.message, true);
    return;
  }
  await refresh();
}

async function refresh() {
  if (state.conv) await openConversation(state.conv.id, state.current);
  await Promise.all([loadList(), loadTotals()]);
}

function markCurrent(scroll) {
  for (const box of document.querySelectorAll(".session")) {
    const current = Number(box.dataset.index) === state.current;
    box.classList.toggle("current", current);
    if (current && scroll) box.scrollIntoView({ block: "nearest" });
  }
}

function move(step) {
  if (!state.conv) return;
  const next = state.current + step;
  if (next < 0 || next >= state.conv.parts) return;
  state.current = next;
  if (next < state.convOffset || next >= state.convOffset + SESSIONS) openConversation(state.conv.id, next);
  else markCurrent(true);
}

function toggleCurrent() {
  if (!state.conv) return;
  const s = state.conv.sessions.find((x) => x.index === state.current);
  if (s) change("exclude", { conversation: state.conv.id, session: s.index, include: s.excluded });
}

document.addEventListener("keydown", (event) => {
  const target = event.target;
  if (target instanceof HTMLInputElement || target instanceof HTMLTextAreaElement ||
      target instanceof HTMLSelectElement || event.ctrlKey || event.metaKey || event.altKey) return;
  if (event.key === "j") move(1);
  else if (event.key === "k") move(-1);
  else if (event.key === "x") toggleCurrent();
  else if (event.key === "u") undo();
  else if (event.key === "/") { event.preventDefault(); $("f-search").focus(); }
  else return;
  event.preventDefault();
});

async function start() {
  $("filters").addEventListener("submit", (event) => {
    event.preventDefault();
    state.listOffset = 0;
    loadList();
  });
  $("list-prev").addEventListener("click", () => { state.listOffset = Math.max(0, state.listOffset - PAGE); loadList(); });
  $("list-next").addEventListener("click", () => { state.listOffset += PAGE; loadList(); });
  $("undo").addEventListener("click", undo);
  try {
    for (const source of await api("sources")) {
      const option = el("option", null, source);
      option.value = source;
      $("f-source").append(option);
    }
  } catch (e) {
    say(e.message, true);
  }
  await Promise.all([loadList(), loadTotals()]);
  document.body.dataset.ready = "1";
}

start();
