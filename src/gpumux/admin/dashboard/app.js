// gpumux dashboard: polls /api/status, follows /api/events, drives admin actions and the
// chat box. The admin token lives in sessionStorage and travels as a header (never a
// cookie); `#token=...` in the URL is taken once and removed from the address bar.
"use strict";

const GIB = 1024 ** 3;
const POLL_MS = 2000;
const TOKEN_KEY = "gpumux.adminToken";
const API_KEY = "gpumux.apiKey";
const $ = (selector) => document.querySelector(selector);

const state = { models: [], lastCounters: null, statusTimer: null };
const charts = {};

function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

function takeTokenFromHash() {
  const match = /(?:^#|&)token=([^&]+)/.exec(location.hash);
  if (match) {
    sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(match[1]));
    history.replaceState(null, "", location.pathname + location.search);
  }
}

function headers(extra = {}) {
  const h = { ...extra };
  if (token()) h.Authorization = `Bearer ${token()}`;
  return h;
}

async function api(path, { method = "GET", body } = {}) {
  const response = await fetch(path, {
    method,
    headers: headers(body ? { "Content-Type": "application/json" } : {}),
    body: body ? JSON.stringify(body) : undefined,
  });
  if (response.status === 401 || response.status === 403) $("#token-form").classList.remove("hidden");
  const payload = await response.json().catch(() => null);
  if (!response.ok) {
    const message = payload && payload.error ? payload.error.message : `HTTP ${response.status}`;
    throw new Error(message);
  }
  return payload;
}

function toast(text) {
  $("#toast").textContent = text;
}

function cell(text, className) {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

function badge(value) {
  const span = document.createElement("span");
  span.className = `badge state ${value}`;
  span.textContent = value;
  return span;
}

function describeSwitch(last) {
  if (!last) return "–";
  return `${last.strategy} · ${last.outcome} · ${Number(last.duration_s).toFixed(2)}s`;
}

function renderModels(status) {
  const body = $("#models tbody");
  const rows = [];
  for (const [alias, model] of Object.entries(status.models)) {
    const tr = document.createElement("tr");
    tr.dataset.model = alias;
    tr.append(cell(alias + (model.pinned ? " 📌" : "")));
    const stateCell = document.createElement("td");
    stateCell.append(badge(model.state));
    if (model.ready_for_s !== null) {
      const age = document.createElement("span");
      age.className = "muted age";
      age.textContent = ` ${seconds(model.ready_for_s)}`;
      stateCell.append(age);
    }
    tr.append(stateCell);
    tr.append(cell(String(model.queue_depth), "queue"));
    tr.append(cell(String(model.inflight), "inflight"));
    tr.append(cell(describeSwitch(model.last_switch), "last-switch"));
    tr.append(cell(String(model.restarts), "restarts"));
    tr.append(cell(model.last_error || "", "error"));
    tr.append(cell(model.image ? `${model.image.location}: ${model.image.path}` : "–"));
    tr.append(cell(model.pid ? String(model.pid) : "–"));
    const actions = document.createElement("td");
    actions.className = "actions";
    for (const [label, action] of [["switch", "switch"], ["evict", "evict"], ["reset", "reset"]]) {
      const button = document.createElement("button");
      button.textContent = label;
      button.dataset.action = action;
      button.addEventListener("click", () => runAction(alias, action, button));
      actions.append(button);
    }
    tr.append(actions);
    rows.push(tr);
  }
  body.replaceChildren(...rows);
  const names = Object.keys(status.models);
  const select = $("#chat-model");
  if (select.options.length !== names.length) {
    const current = select.value;
    select.replaceChildren(...names.map((n) => new Option(n, n)));
    if (names.includes(current)) select.value = current;
  }
  state.models = names;
  $("#timeline").style.height = `${Math.max(2, names.length) * 24 + 24}px`;
}

function renderHeader(status) {
  const daemon = $("#daemon-state");
  daemon.textContent = status.daemon.state;
  daemon.className = `badge ${status.daemon.state}`;
  $("#mode").textContent = `mode: ${status.mode}${status.pinned ? ` (pinned ${status.pinned})` : ""} · policy: ${status.policy}`;
  const moving = status.switches_in_progress.map((s) => `→ ${s.target} (${s.target_state}, ${s.age_s.toFixed(1)}s)`);
  $("#switching").textContent = moving.length ? `switching ${moving.join(", ")}` : "";
}

function recordCharts(status) {
  const t = Date.now() / 1000;
  for (const gpu of status.resources.gpus) {
    charts.gpu.push(`gpu ${gpu.index}`, t, gpu.used_bytes / GIB);
    charts.gpu.push(`gpu ${gpu.index} total`, t, gpu.total_bytes / GIB);
  }
  const host = status.resources.host_memory;
  if (host.available_bytes !== null) charts.host.push("available", t, host.available_bytes / GIB);
  const counters = {};
  for (const [alias, model] of Object.entries(status.models)) {
    counters[alias] = { t, requests: model.requests_total, ttftSum: model.ttft_seconds_sum, ttftCount: model.ttft_seconds_count };
  }
  const previous = state.lastCounters;
  if (previous) {
    for (const [alias, now] of Object.entries(counters)) {
      const before = previous[alias];
      if (!before || now.t <= before.t) continue;
      charts.rate.push(alias, t, Math.max(0, (now.requests - before.requests) / (now.t - before.t)));
      const n = now.ttftCount - before.ttftCount;
      if (n > 0) charts.ttft.push(alias, t, (now.ttftSum - before.ttftSum) / n);
    }
  }
  state.lastCounters = counters;
  for (const chart of Object.values(charts)) chart.draw();
  timeline.draw(state.models);
}

const REQUEST_ROWS = 15;

function renderRequests(rows) {
  const optional = (v, format) => (v === null || v === undefined ? "–" : format(v));
  $("#requests tbody").replaceChildren(
    ...rows.map((r) => {
      const tr = document.createElement("tr");
      tr.dataset.model = r.model;
      tr.append(cell(new Date(r.started_at * 1000).toLocaleTimeString()));
      tr.append(cell(r.alias ? `${r.alias} → ${r.model}` : r.model, "model"));
      tr.append(cell(r.endpoint));
      tr.append(cell(String(r.status), r.status >= 400 ? "error status" : "status"));
      tr.append(cell(optional(r.queue_secs, seconds), "queue"));
      tr.append(cell(optional(r.ttft_secs, seconds)));
      tr.append(cell(optional(r.duration_secs, seconds)));
      tr.append(cell(`${optional(r.prompt_tokens, String)} / ${optional(r.completion_tokens, String)}`, "tokens"));
      tr.append(cell(r.client || "–"));
      tr.append(cell(r.key_hash || "–"));
      return tr;
    }),
  );
}

async function refresh() {
  try {
    const status = await api("/api/status");
    renderHeader(status);
    renderModels(status);
    recordCharts(status);
    renderRequests((await api(`/api/requests?limit=${REQUEST_ROWS}`)).requests);
    document.body.dataset.loaded = "true";
  } catch (error) {
    toast(`status: ${error.message}`);
  }
}

function scheduleRefresh(delay = POLL_MS) {
  clearTimeout(state.statusTimer);
  state.statusTimer = setTimeout(async () => {
    await refresh();
    scheduleRefresh();
  }, delay);
}

async function runAction(model, action, button) {
  button.disabled = true;
  toast(`${action} ${model}…`);
  try {
    const reply = action === "switch"
      ? await api("/api/switch", { method: "POST", body: { model } })
      : await api(`/api/models/${encodeURIComponent(model)}/${action}`, { method: "POST" });
    const took = reply.duration_s !== undefined ? ` in ${Number(reply.duration_s).toFixed(2)}s` : "";
    toast(`${reply.detail}${took}`);
  } catch (error) {
    toast(`${action} ${model}: ${error.message}`);
  } finally {
    button.disabled = false;
    scheduleRefresh(0);
  }
}

// ---- server-sent events over fetch (EventSource cannot send the token header) ----

function addEvent(event) {
  const li = document.createElement("li");
  const when = document.createElement("time");
  when.textContent = new Date(event.t * 1000).toLocaleTimeString();
  const name = document.createElement("span");
  name.className = "name";
  name.textContent = event.event;
  const rest = Object.entries(event)
    .filter(([k]) => !["t", "event", "phases"].includes(k))
    .map(([k, v]) => `${k}=${typeof v === "object" ? JSON.stringify(v) : v}`)
    .join(" ");
  li.append(when, name, document.createTextNode(rest));
  const list = $("#events");
  list.prepend(li);
  while (list.children.length > 200) list.lastChild.remove();
  if (event.event === "switch_finished") timeline.add(event.target, event.t, Number(event.duration_s), event.outcome);
}

// One reader for every SSE stream the page follows (events and chat): yields each frame's
// `id` (a number, or null) and its `data` lines joined; comments (": keep-alive") give "".
async function* sseFrames(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const frame = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const id = /^id: (\d+)$/m.exec(frame);
      const data = frame
        .split("\n")
        .filter((line) => line.startsWith("data: "))
        .map((line) => line.slice(6))
        .join("\n");
      yield { id: id ? Number(id[1]) : null, data };
    }
  }
}

async function followEvents() {
  let lastId = 0;
  for (let attempt = 0; ; attempt++) {
    try {
      const response = await fetch(`/api/events?replay=100`, {
        headers: headers(lastId ? { "Last-Event-ID": String(lastId) } : {}),
      });
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      attempt = 0;
      for await (const { id, data } of sseFrames(response)) {
        if (id !== null) lastId = id;
        if (data) {
          addEvent(JSON.parse(data));
          scheduleRefresh(100);
        }
      }
    } catch (error) {
      toast(`events: ${error.message}`);
    }
    await new Promise((resolve) => setTimeout(resolve, Math.min(10000, 500 * 2 ** attempt)));
  }
}

// ---- chat: streams through POST /api/chat (the admin port forwards to the proxy) ----

async function sendChat(event) {
  event.preventDefault();
  const output = $("#chat-output");
  const stats = $("#chat-stats");
  const model = $("#chat-model").value;
  const prompt = $("#chat-prompt").value.trim();
  if (!model || !prompt) return;
  const apiKey = $("#chat-key").value.trim();
  if (apiKey) sessionStorage.setItem(API_KEY, apiKey);
  output.textContent = "";
  output.dataset.chunks = "0";
  output.dataset.done = "false";
  stats.textContent = "waiting…";
  $("#chat-send").disabled = true;
  const started = performance.now();
  let firstAt = null;
  let chunks = 0;
  let completionTokens = null;
  try {
    const response = await fetch("/api/chat", {
      method: "POST",
      headers: headers({ "Content-Type": "application/json", ...(apiKey ? { "X-Gpumux-Api-Key": apiKey } : {}) }),
      body: JSON.stringify({
        model,
        messages: [{ role: "user", content: prompt }],
        max_tokens: 128,
        stream: true,
        stream_options: { include_usage: true },
      }),
    });
    if (!response.ok) {
      const payload = await response.json().catch(() => null);
      throw new Error(payload && payload.error ? payload.error.message : `HTTP ${response.status}`);
    }
    for await (const { data } of sseFrames(response)) {
      if (!data || data === "[DONE]") continue;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(chunk.error.message);
      if (chunk.usage) completionTokens = chunk.usage.completion_tokens;
      const text = chunk.choices && chunk.choices[0] && chunk.choices[0].delta ? chunk.choices[0].delta.content : "";
      if (text) {
        if (firstAt === null) firstAt = performance.now();
        chunks += 1;
        output.textContent += text;
        output.dataset.chunks = String(chunks);
      }
    }
    const total = (performance.now() - started) / 1000;
    const ttft = firstAt === null ? total : (firstAt - started) / 1000;
    const tokens = completionTokens !== null ? completionTokens : chunks;
    const genSecs = Math.max(1e-3, total - ttft);
    stats.textContent = `TTFT ${ttft.toFixed(2)}s · ${(tokens / genSecs).toFixed(1)} tokens/s · ${tokens} tokens`;
    output.dataset.done = "true";
  } catch (error) {
    stats.textContent = `error: ${error.message}`;
    output.dataset.done = "error";
  } finally {
    $("#chat-send").disabled = false;
    scheduleRefresh(0);
  }
}

let timeline;

function seconds(v) {
  return v < 1 ? `${Math.round(v * 1000)}ms` : `${v.toFixed(v < 10 ? 2 : 1)}s`;
}

function start() {
  takeTokenFromHash();
  const { LineChart, SwitchTimeline } = window.GpumuxCharts;
  charts.gpu = new LineChart($("#chart-gpu"), { format: (v) => v.toFixed(1) });
  charts.host = new LineChart($("#chart-host"), { format: (v) => v.toFixed(1) });
  charts.rate = new LineChart($("#chart-rate"), { format: (v) => v.toFixed(2) });
  charts.ttft = new LineChart($("#chart-ttft"), { format: seconds });
  timeline = new SwitchTimeline($("#timeline"));
  $("#chat-key").value = sessionStorage.getItem(API_KEY) || "";
  $("#chat-form").addEventListener("submit", sendChat);
  $("#token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("#token-input").value.trim());
    $("#token-form").classList.add("hidden");
    scheduleRefresh(0);
  });
  scheduleRefresh(0);
  followEvents();
}

document.addEventListener("DOMContentLoaded", start);
