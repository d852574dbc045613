// The Sluice dashboard: recent jobs with live progress (GET /v1/bulk-operations, then the
// tenant's event stream GET /v1/events), records/s from the counts those events carry,
// failures by code from each job's `ended` event, and queue figures (GET /v1/overview).
// Plain browser JavaScript, no build step; the token stays in this tab's sessionStorage.
"use strict";

const TOKEN_KEY = "sluice.token";
const CHART_SECONDS = 300;
const OVERVIEW_EVERY_MS = 2000;
const RECONNECT_MS = 2000;
const MAX_JOBS = 50;
const MAX_FAILURE_ROWS = 100;

const $ = (selector) => document.querySelector(selector);
const state = {
  token: sessionStorage.getItem(TOKEN_KEY),
  jobs: new Map(),           // job_id -> the job as the API shows it
  done: new Map(),           // job_id -> records with an outcome, as last seen
  perSecond: new Map(),      // epoch second -> records given an outcome in it
  stream: null,              // AbortController of the event stream
  timers: [],
};

class Unauthorized extends Error {}

async function api(path, init = {}) {
  const response = await fetch(path, {
    ...init, headers: { ...(init.headers || {}), Authorization: `Bearer ${state.token}` },
  });
  if (response.status === 401 || response.status === 403) {
    const problem = await response.json().catch(() => ({}));
    throw new Unauthorized(problem.detail || `refused (${response.status})`);
  }
  if (!response.ok) throw new Error(`${path}: ${response.status}`);
  return response;
}

function cell(text, className) {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

const number = (n) => Number(n).toLocaleString("en-US");
const shortId = (id) => id.slice(0, 8);
const doneOf = (counts) => counts.succeeded + counts.failed + counts.duplicates + counts.aborted;

function progressBar(job) {
  const counts = job.counts;
  const percent = counts.received ? Math.min(100, Math.floor((100 * doneOf(counts)) / counts.received)) : 0;
  const bar = document.createElement("div");
  bar.className = "bar";
  bar.setAttribute("role", "progressbar");
  bar.setAttribute("aria-valuenow", String(percent));
  bar.dataset.progress = String(percent);
  // Green for records done, red for the failed share of them (at least a sliver when any).
  const failedShare = counts.received && counts.failed
    ? Math.max(1, (100 * counts.failed) / counts.received) : 0;
  const done = document.createElement("span");
  done.style.width = `${percent}%`;
  const failed = document.createElement("span");
  failed.className = "failed";
  const failedWidth = Math.min(percent, failedShare);
  failed.style.left = `${percent - failedWidth}%`;  // at the end of what is done
  failed.style.width = `${failedWidth}%`;
  const label = document.createElement("em");
  label.textContent = `${percent}%`;
  bar.append(done, failed, label);
  return bar;
}

function renderJobs() {
  const body = $("#jobs tbody");
  const rows = [...state.jobs.values()]
    .sort((a, b) => (a.created_at < b.created_at ? 1 : -1))
    .slice(0, MAX_JOBS)
    .map((job) => {
      const tr = document.createElement("tr");
      tr.dataset.jobId = job.job_id;
      tr.dataset.state = job.state;
      const bar = document.createElement("td");
      bar.append(progressBar(job));
      tr.append(cell(shortId(job.job_id), "mono"), cell(job.target),
        cell(job.state, `state-${job.state}`), bar, cell(number(job.counts.received), "num"),
        cell(number(job.counts.succeeded), "num"), cell(number(job.counts.failed), "num"),
        cell(number(job.counts.duplicates), "num"));
      tr.title = job.reason || "";
      return tr;
    });
  body.replaceChildren(...rows);
}

function countProgress(job) {
  const now = doneOf(job.counts);
  // A job the page has not seen yet started after it opened (the listing read at start
  // holds the others): all its records were given outcomes while the page watched, even
  // when its first event is its end (a small job ends within one event tick).
  const before = state.done.get(job.job_id) ?? 0;
  state.done.set(job.job_id, now);
  if (now <= before) return;
  const second = Math.floor(Date.now() / 1000);
  state.perSecond.set(second, (state.perSecond.get(second) || 0) + (now - before));
}

function addFailures(job, failures) {
  const body = $("#failures tbody");
  for (const failure of failures) {
    const tr = document.createElement("tr");
    tr.dataset.jobId = job.job_id;
    tr.dataset.code = failure.code || "";
    const examples = document.createElement("td");
    for (const example of failure.examples) {
      const line = document.createElement("span");
      line.className = "example mono";
      line.textContent = `#${example.index}: ${example.message || ""}` +
        (example.record ? `  ${example.record}` : "");
      examples.append(line);
    }
    tr.append(cell(shortId(job.job_id), "mono"), cell(failure.code || "(none)"),
      cell(number(failure.records), "num"), examples);
    body.prepend(tr);
  }
  while (body.rows.length > MAX_FAILURE_ROWS) body.deleteRow(-1);
}

function onEvent(event) {
  const job = event.job;
  countProgress(job);
  state.jobs.set(job.job_id, job);
  if (event.type === "ended" && event.failures && event.failures.length) addFailures(job, event.failures);
  renderJobs();
}

function drawChart() {
  const svg = $("#chart");
  const last = Math.floor(Date.now() / 1000) - 1;  // the current second is still filling
  const values = [];
  for (let s = last - CHART_SECONDS + 1; s <= last; s += 1) values.push(state.perSecond.get(s) || 0);
  for (const s of state.perSecond.keys()) if (s < last - CHART_SECONDS) state.perSecond.delete(s);
  const top = Math.max(10, ...values);
  const points = values.map((v, i) =>
    `${((i / (CHART_SECONDS - 1)) * 600).toFixed(1)},${(150 - (v / top) * 140).toFixed(1)}`);
  const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
  line.setAttribute("points", points.join(" "));
  const label = document.createElementNS("http://www.w3.org/2000/svg", "text");
  label.setAttribute("x", "4");
  label.setAttribute("y", "12");
  label.textContent = `max ${number(top)}/s`;
  svg.replaceChildren(line, label);
  $("#rate-now").textContent = `${number(values[values.length - 1])} records/s`;
}

function loadRows(selector, rows, key) {
  $(selector + " tbody").replaceChildren(...rows.map((row) => {
    const tr = document.createElement("tr");
    tr.append(cell(row[key] || "(none)"), cell(number(row.running_jobs), "num"),
      cell(number(row.queued_records), "num"), cell(`${row.oldest_age_s.toFixed(1)} s`, "num"));
    return tr;
  }));
}

async function refreshOverview() {
  const overview = await (await api("/v1/overview")).json();
  $("#queue-records").textContent = number(overview.queue.records);
  $("#queue-jobs").textContent = number(overview.queue.running_jobs);
  $("#queue-age").textContent = `${overview.queue.oldest_age_s.toFixed(1)} s`;
  loadRows("#load-targets", overview.targets, "target");
  loadRows("#load-tenants", overview.tenants, "tenant");
  $("#tenants-title").textContent = overview.scope === "service" ? "By tenant" : "Your tenant";
}

// Server-Sent Events read through fetch, which (unlike EventSource) can send the token.
async function followEvents() {
  const controller = new AbortController();
  state.stream = controller;
  const response = await api("/v1/events", { signal: controller.signal });
  setStatus("live", true);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = block.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("\n");
      if (data) onEvent(JSON.parse(data));
    }
  }
}

async function keepFollowing() {
  while (state.token) {
    try {
      await followEvents();
      setStatus("reconnecting…", false);
    } catch (error) {
      if (error instanceof Unauthorized) return signOut(error.message);
      if (error.name === "AbortError") return;
      setStatus("reconnecting…", false);
    }
    await new Promise((resolve) => setTimeout(resolve, RECONNECT_MS));
  }
}

function setStatus(text, live) {
  const status = $("#status");
  status.textContent = text;
  status.classList.toggle("live", live);
}

async function start() {
  $("#login").hidden = true;
  try {
    const listing = await (await api("/v1/bulk-operations?limit=20")).json();
    for (const job of listing.jobs) {
      state.jobs.set(job.job_id, job);
      state.done.set(job.job_id, doneOf(job.counts));
    }
    renderJobs();
    await refreshOverview();
  } catch (error) {
    return signOut(error instanceof Unauthorized ? error.message : `cannot reach Sluice: ${error.message}`);
  }
  $("#board").hidden = false;
  $("#sign-out").hidden = false;
  drawChart();
  state.timers.push(setInterval(drawChart, 1000));
  state.timers.push(setInterval(() => refreshOverview().catch(() => setStatus("overview unavailable", false)),
    OVERVIEW_EVERY_MS));
  keepFollowing();
}

function signOut(message = "") {
  sessionStorage.removeItem(TOKEN_KEY);
  state.token = null;
  if (state.stream) state.stream.abort();
  state.timers.forEach(clearInterval);
  state.timers = [];
  state.jobs.clear();
  state.done.clear();
  $("#board").hidden = true;
  $("#sign-out").hidden = true;
  $("#login").hidden = false;
  $("#login-error").textContent = message;
  setStatus("signed out", false);
}

document.addEventListener("DOMContentLoaded", () => {
  $("#login").addEventListener("submit", (event) => {
    event.preventDefault();
    state.token = $("#token").value.trim();
    sessionStorage.setItem(TOKEN_KEY, state.token);
    start();
  });
  $("#sign-out").addEventListener("click", () => signOut());
  if (state.token) start(); else signOut();
});
