// The artd page: polls the JSON API every few seconds and redraws. Plain JavaScript, no
// libraries, nothing fetched from anywhere but this daemon (docs/page.md).
"use strict";

const POLL_MS = 2000;
const SVG = "http://www.w3.org/2000/svg";
let page = 0;
let pageSize = 24;
let retryEnabled = false;

const $ = (id) => document.getElementById(id);

function el(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) if (child) node.append(child);
  return node;
}

async function getJSON(url) {
  const response = await fetch(url, { cache: "no-store", credentials: "same-origin" });
  if (!response.ok) throw new Error(`${url}: ${response.status}`);
  return response.json();
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "-";
  if (seconds < 1) return "a moment";
  if (seconds < 90) return `${Math.round(seconds)} s`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min`;
  return `${(seconds / 3600).toFixed(1)} h`;
}

function when(unix) {
  return new Date(unix * 1000).toLocaleString();
}

function drawChart(counts) {
  const svg = $("chart");
  svg.replaceChildren();
  const top = Math.max(1, ...counts);
  const width = 300 / counts.length;
  counts.forEach((count, i) => {
    const h = (count / top) * 76;
    const bar = document.createElementNS(SVG, "rect");
    bar.setAttribute("x", (i * width + 0.5).toFixed(2));
    bar.setAttribute("y", (80 - h).toFixed(2));
    bar.setAttribute("width", Math.max(0.5, width - 1).toFixed(2));
    bar.setAttribute("height", h.toFixed(2));
    const tip = document.createElementNS(SVG, "title");
    tip.textContent = `${count} file(s), ${counts.length - i} min ago`;
    bar.append(tip);
    svg.append(bar);
  });
}

function showStatus(s) {
  $("instance").textContent = s.instance;
  const state = $("state");
  state.textContent = s.health.status === "ok" ? "working" : "problem";
  state.className = `badge ${s.health.status}`;
  $("waiting").textContent = s.queue.waiting;
  $("in-work").textContent = s.queue.in_work;
  const idle = s.queue.waiting + s.queue.in_work === 0;
  $("eta-line").hidden = idle;
  $("idle-line").hidden = !idle;
  $("eta").textContent = s.queue.eta_s === null ? "unknown yet" : duration(s.queue.eta_s);
  $("rate").textContent = `${s.queue.rate_per_min} files per minute`;
  const problems = $("problems");
  problems.hidden = s.health.problems.length === 0;
  problems.textContent = s.health.problems.join("; ");
  $("hour-count").textContent = `${s.throughput.last_hour} done`;
  drawChart(s.throughput.per_minute);
  const models = $("models");
  models.replaceChildren(
    ...s.models.map((m) => el("li", { text: `${m.version} (epoch ${m.epoch || "-"}, ${m.device}, ${m.precision})` })),
  );
  $("workers").replaceChildren(
    ...s.workers.map((w) => el("li", { class: w.alive ? "" : "problems", text: describeWorker(w) })),
  );
  const reload = s.reload;
  $("reload").textContent = reload.last === "failed" ? `failed: ${reload.error}` : reload.last;
  retryEnabled = s.retry_enabled;
  $("retry-off").hidden = retryEnabled;
  $("token-form").hidden = !retryEnabled;
  pageSize = s.page_size;
}

function describeWorker(w) {
  const name = w.checkpoint.split("/").pop();
  const state = w.alive ? (w.busy ? "busy" : "idle") : "down";
  const parts = [`${name}: ${state}`, `${w.restarts} restart${w.restarts === 1 ? "" : "s"}`];
  if (w.pid) parts.push(`pid ${w.pid}`);
  if (w.actors != null) {
    parts.push(`Ray: ${w.actors} actor${w.actors === 1 ? "" : "s"}, ${w.busy_actors} busy, ${w.lost} lost`);
  }
  if (w.error) parts.push(w.error);
  return parts.join(" · ");
}

function describeMeta(meta) {
  const parts = [];
  if (meta.model) parts.push(`model ${meta.model}`);
  if (meta.objective) parts.push(meta.objective);
  const settings = meta.settings;
  if (settings && typeof settings === "object") {
    if (settings.preset) parts.push(`preset ${settings.preset}`);
    const keys = ["size", "resize", "precision", "output_format"].filter((k) => k in settings);
    for (const key of keys) parts.push(`${key} ${settings[key]}`);
  }
  if (meta.sampler && typeof meta.sampler === "object") {
    parts.push(`strength ${meta.sampler.strength}, ${meta.sampler.steps} steps`);
  }
  return parts.join(" · ");
}

function figure(src, caption) {
  const img = src ? el("img", { src, alt: caption, loading: "lazy" }) : el("div", { class: "noimg", text: "not kept" });
  return el("figure", {}, img, el("figcaption", { text: caption }));
}

function showRecent(r) {
  $("recent-total").textContent = `${r.total} in the outbox`;
  const cards = r.items.map((item) =>
    el(
      "article",
      { class: "result", "data-output": item.output },
      el("div", { class: "pair" }, figure(item.before, "before"), figure(item.after, "after")),
      el("p", { class: "name" }, el("a", { href: item.url, text: item.output, target: "_blank", rel: "noopener" })),
      el("p", { class: "meta", text: `${when(item.time)} · from ${item.input}` }),
      el("p", { class: "meta", text: describeMeta(item.meta || {}) }),
    ),
  );
  const box = $("recent");
  const keys = cards.map((c) => c.dataset.output).join("\n");
  if (box.dataset.keys !== keys) {
    box.replaceChildren(...cards);
    box.dataset.keys = keys;
  }
  const pages = Math.max(1, Math.ceil(r.total / pageSize));
  $("page-label").textContent = `page ${page + 1} of ${pages}`;
  $("newer").disabled = page === 0;
  $("older").disabled = page + 1 >= pages;
}

async function retry(file, button) {
  button.disabled = true;
  const result = $("retry-result");
  try {
    const response = await fetch("/api/retry", {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-Artd-Token": sessionStorage.getItem("artd-token") || "" },
      body: JSON.stringify({ file }),
    });
    const answer = await response.json();
    result.textContent = response.ok ? `${answer.retried} is back in the inbox as ${answer.inbox}.` : `Retry refused: ${answer.error}`;
    result.className = response.ok ? "ok" : "problems";
  } catch (error) {
    result.textContent = `Retry failed: ${error.message}`;
  }
  button.disabled = false;
  refresh();
}

function showQuarantine(q) {
  $("quarantine-total").textContent = q.total ? `${q.total} file(s)` : "empty";
  const items = q.items.map((item) => {
    const li = el(
      "li",
      { "data-file": item.file },
      el("div", { class: "file", text: item.file }),
      el("p", { class: "why", text: item.description }),
      el("p", { class: "muted", text: `${item.reason} · ${item.time || ""}` }),
      el(
        "details",
        {},
        el("summary", { text: "technical detail" }),
        el("pre", {
          text: `${item.message}\ncrash counts: interrupted ${item.interrupted}, alone in the model ${item.solo_crashes}\n${JSON.stringify(item.details, null, 1)}`,
        }),
      ),
    );
    if (retryEnabled && item.regular) {
      const button = el("button", { type: "button", class: "retry", text: "Retry" });
      button.addEventListener("click", () => retry(item.file, button));
      li.append(button);
    }
    return li;
  });
  const box = $("quarantine");
  const keys = `${retryEnabled}\n` + q.items.map((i) => `${i.file}|${i.time}`).join("\n");
  if (box.dataset.keys !== keys) {
    box.replaceChildren(...items);
    box.dataset.keys = keys;
  }
}

async function refresh() {
  try {
    const [status, recent, quarantine] = await Promise.all([
      getJSON("/api/status"),
      getJSON(`/api/recent?page=${page}&size=${pageSize}`),
      getJSON("/api/quarantine?size=100"),
    ]);
    showStatus(status);
    showRecent(recent);
    showQuarantine(quarantine);
  } catch (error) {
    $("state").textContent = "unreachable";
    $("state").className = "badge failing";
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("newer").addEventListener("click", () => { page = Math.max(0, page - 1); refresh(); });
  $("older").addEventListener("click", () => { page += 1; refresh(); });
  const token = $("token");
  token.value = sessionStorage.getItem("artd-token") || "";
  token.addEventListener("input", () => sessionStorage.setItem("artd-token", token.value));
  $("token-form").addEventListener("submit", (event) => event.preventDefault());
  refresh();
  setInterval(refresh, POLL_MS);
});
