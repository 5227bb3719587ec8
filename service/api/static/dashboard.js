// The operations dashboard: polls two JSON endpoints and redraws in place, no page reloads.
"use strict";

const CSRF = document.querySelector('meta[name="csrf-token"]').content;
const PAGE_SIZE = 25;
const ACTIVE = new Set(["PENDING", "STARTED", "PROGRESS", "RETRY"]);
const RETRYABLE = new Set(["FAILURE", "REVOKED"]);
let offset = 0;
let openJob = null;

const $ = (selector) => document.querySelector(selector);

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (key === "class") node.className = value;
    else if (key === "style") node.style.cssText = value; // through the CSSOM: allowed by the page's CSP
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  node.append(...children.filter((child) => child !== null && child !== undefined));
  return node;
}

function ago(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  seconds = Math.max(0, seconds);
  if (seconds < 1) return `${Math.round(seconds * 1000)} ms`;
  if (seconds < 90) return `${seconds.toFixed(seconds < 10 ? 1 : 0)} s`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min`;
  if (seconds < 172800) return `${(seconds / 3600).toFixed(1)} h`;
  return `${Math.round(seconds / 86400)} d`;
}

const since = (iso) => (iso ? (Date.now() - Date.parse(iso)) / 1000 : null);
const took = (job) => (job.started_at && job.finished_at ? (Date.parse(job.finished_at) - Date.parse(job.started_at)) / 1000 : null);
const badge = (state) => el("span", { class: `badge ${state}` }, state);
const jobLabel = (job) => el("span", {}, job.name, " ", el("code", {}, job.job_id.slice(0, 12)));

function progressBar(job) {
  const percent = job.progress ? job.progress.percent : 0;
  const bar = el("div", { class: "bar", style: `width: ${percent}%` });
  return el("div", { class: "progress", "data-percent": String(percent) }, bar, el("span", {}, `${percent}%`));
}

async function api(path, options = {}) {
  const response = await fetch(path, {
    credentials: "same-origin",
    headers: { Accept: "application/json", "X-CSRF-Token": CSRF },
    ...options,
  });
  if (response.status === 401) window.location = "/dashboard/login";
  const body = await response.json();
  if (!response.ok) throw new Error(typeof body.detail === "string" ? body.detail : response.statusText);
  return body;
}

function toast(message) {
  const box = $("#toast");
  box.textContent = message;
  box.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => (box.hidden = true), 4000);
}

async function act(job, action) {
  try {
    const result = await api(`/dashboard/api/jobs/${encodeURIComponent(job.job_id)}/${action}`, { method: "POST" });
    toast(action === "retry" ? `Retried as ${result.job_id.slice(0, 12)}` : `Aborted ${job.name}`);
    await Promise.all([refreshOverview(), refreshJobs()]);
    if (openJob) showDetail(action === "retry" ? result.job_id : job.job_id);
  } catch (error) {
    toast(error.message);
  }
}

function actions(job) {
  const buttons = [];
  if (RETRYABLE.has(job.state)) {
    buttons.push(el("button", { class: "small retry", onclick: (event) => { event.stopPropagation(); act(job, "retry"); } }, "Retry"));
  }
  if (ACTIVE.has(job.state)) {
    buttons.push(el("button", { class: "small abort", onclick: (event) => { event.stopPropagation(); act(job, "abort"); } }, "Abort"));
  }
  return el("td", {}, ...buttons);
}

function fill(tableId, rows, emptyId) {
  $(`#${tableId} tbody`).replaceChildren(...rows);
  $(`#${emptyId}`).hidden = rows.length > 0;
  $(`#${tableId}`).hidden = rows.length === 0;
}

function drawThroughput(points, now) {
  const svg = $("#throughput");
  const minutes = new Map(points.map((p) => [Math.floor(Date.parse(p.minute) / 60000), p]));
  const last = Math.floor(now / 60);
  const series = Array.from({ length: 60 }, (_, i) => minutes.get(last - 59 + i) || { succeeded: 0, failed: 0 });
  const top = Math.max(1, ...series.map((p) => p.succeeded + p.failed));
  const width = 600 / 60;
  const bars = [];
  series.forEach((p, i) => {
    const ok = (p.succeeded / top) * 150;
    const ko = (p.failed / top) * 150;
    const title = `${p.succeeded} succeeded, ${p.failed} failed`;
    bars.push(`<rect class="ok" x="${i * width + 1}" y="${160 - ok}" width="${width - 2}" height="${ok}"><title>${title}</title></rect>`);
    bars.push(`<rect class="ko" x="${i * width + 1}" y="${160 - ok - ko}" width="${width - 2}" height="${ko}"><title>${title}</title></rect>`);
  });
  svg.innerHTML = bars.join("") + `<text x="4" y="12" font-size="10" fill="#7b8794">${top}/min</text>`;
  $("#hour-succeeded").textContent = series.reduce((sum, p) => sum + p.succeeded, 0);
  $("#hour-failed").textContent = series.reduce((sum, p) => sum + p.failed, 0);
}

function drawDurations(rows) {
  const top = Math.max(0.001, ...rows.map((row) => row.p95));
  $("#durations").replaceChildren(
    ...rows.map((row) =>
      el("div", { class: "duration" },
        el("span", {}, row.name),
        el("div", { class: "track" },
          el("div", { class: "mean", style: `width: ${(row.mean / top) * 100}%` }),
          el("div", { class: "p95", style: `left: ${(row.p95 / top) * 100}%` })),
        el("small", {}, `${ago(row.mean)} · p95 ${ago(row.p95)} · ${row.count}×`)))
  );
  if (!rows.length) $("#durations").replaceChildren(el("p", { class: "empty" }, "No job finished in the last hour."));
}

async function refreshOverview() {
  const data = await api("/dashboard/api/overview");
  $("#queue-depth").textContent = data.queue.waiting;
  $("#queue-deferred").textContent = data.queue.deferred ? `+ ${data.queue.deferred} deferred` : "";
  $("#queue-age").textContent = ago(data.queue.oldest_waiting_age);
  $("#running-count").textContent = data.running.length;
  $("#workers-count").textContent = data.workers.length;
  fill("running", data.running.map((job) =>
    el("tr", { "data-job-id": job.job_id, "data-state": job.state },
      el("td", {}, jobLabel(job)), el("td", {}, job.username || "–"), el("td", {}, progressBar(job)),
      el("td", {}, ago(since(job.started_at))), actions(job))), "running-empty");
  fill("workers", data.workers.map((w) =>
    el("tr", { "data-worker-id": w.worker_id },
      el("td", {}, `${w.host} `, el("code", {}, `pid ${w.pid}`)), el("td", {}, ago(w.uptime)),
      el("td", {}, w.complete), el("td", {}, w.failed), el("td", {}, w.retried), el("td", {}, w.ongoing),
      el("td", {}, `${ago(w.seen_ago)} ago`))), "workers-empty");
  fill("share", data.share.map((s) =>
    el("tr", { "data-user": s.username },
      el("td", {}, s.username), el("td", {}, el("code", {}, s.queue_name)),
      el("td", {}, `${s.active} of ${s.cap}`))), "share-empty");
  fill("webhooks-failing", data.webhooks_failing.map((d) =>
    el("tr", { "data-delivery-id": String(d.id), "data-status": d.status },
      el("td", {}, d.event_type, " ", el("code", {}, d.event_id.slice(0, 40))), el("td", {}, d.username),
      el("td", {}, el("code", {}, d.url)), el("td", {}, el("span", { class: `badge ${d.status === "failed" ? "FAILURE" : "RETRY"}` }, d.status)),
      el("td", {}, d.attempts), el("td", {}, d.last_error || String(d.last_status_code || "–")),
      el("td", {}, d.last_attempt_at ? `${ago(since(d.last_attempt_at))} ago` : "–"))), "webhooks-failing-empty");
  $("#cron tbody").replaceChildren(...data.cron.map((c) =>
    el("tr", {},
      el("td", {}, c.name), el("td", {}, c.schedule),
      el("td", {}, c.last_run ? badge(c.last_run.state) : "never", c.last_run ? ` ${ago(since(c.last_run.started_at))} ago` : ""),
      el("td", {}, c.next_run ? `in ${ago(c.next_run - data.now)}` : "–"))));
  drawThroughput(data.throughput, data.now);
  drawDurations(data.durations);
}

function filters() {
  const params = new URLSearchParams();
  for (const [key, value] of new FormData($("#filters"))) {
    if (!value) continue;
    params.set(key, key === "since" || key === "until" ? new Date(value).toISOString() : value);
  }
  params.set("limit", PAGE_SIZE);
  params.set("offset", offset);
  return params;
}

async function refreshJobs() {
  const jobs = await api(`/dashboard/api/jobs?${filters()}`);
  fill("jobs", jobs.map((job) =>
    el("tr", { "data-job-id": job.job_id, "data-state": job.state, onclick: () => showDetail(job.job_id) },
      el("td", {}, jobLabel(job)), el("td", {}, job.username || "–"), el("td", {}, badge(job.state)),
      el("td", {}, job.tries), el("td", {}, `${ago(since(job.enqueued_at))} ago`), el("td", {}, ago(took(job))),
      actions(job))), "jobs-empty");
  $("#page").textContent = `page ${offset / PAGE_SIZE + 1}`;
  $("#prev").disabled = offset === 0;
  $("#next").disabled = jobs.length < PAGE_SIZE;
}

async function showDetail(jobId) {
  const job = await api(`/dashboard/api/jobs/${encodeURIComponent(jobId)}`);
  openJob = jobId;
  $("#detail-title").replaceChildren(job.name, " ", badge(job.state));
  const facts = {
    "job id": job.job_id, user: job.username || "–", tries: job.tries, queue: job.queue_name,
    "request id": job.request_id || "–", enqueued: job.enqueued_at, started: job.started_at || "–",
    finished: job.finished_at || "–", took: ago(took(job)),
    progress: job.progress ? `${job.progress.current}/${job.progress.total} (${job.progress.percent}%)` : "–",
  };
  $("#detail-facts").replaceChildren(...Object.entries(facts).flatMap(([key, value]) => [el("dt", {}, key), el("dd", {}, String(value))]));
  $("#detail-args").textContent = JSON.stringify(job.args, null, 2);
  $("#detail-result").textContent = job.result === null ? "–" : JSON.stringify(job.result, null, 2);
  $("#detail-error").textContent = job.error ? `${job.error.type}: ${job.error.message}` : "–";
  const buttons = actions(job);
  $("#detail-actions").replaceChildren(...buttons.childNodes);
  $("#detail").hidden = false;
}

async function tick() {
  try {
    await Promise.all([refreshOverview(), refreshJobs()]);
    $("#live").classList.remove("stale");
  } catch (error) {
    $("#live").classList.add("stale");
  }
}

$("#filters").addEventListener("input", () => { offset = 0; refreshJobs(); });
$("#filters").addEventListener("submit", (event) => event.preventDefault());
$("#prev").addEventListener("click", () => { offset = Math.max(0, offset - PAGE_SIZE); refreshJobs(); });
$("#next").addEventListener("click", () => { offset += PAGE_SIZE; refreshJobs(); });
$("#detail-close").addEventListener("click", () => { $("#detail").hidden = true; openJob = null; });
tick();
setInterval(tick, 1000);
