// The operator page: a snapshot from /api/status and /api/results, then live results and status
// from /api/events (server-sent events; the browser resumes with Last-Event-ID after a drop).
"use strict";

const TREND = 200; // parts in the score trend
const NG_LIST = 8; // thumbnails of the last NG parts
const RETRY_MS = 5000; // after the server refused the event stream
const SILENT_STATUSES = 3; // status intervals without a status before the station counts as silent

const view = {
  next: 0, // id of the next record expected: anything below was counted already
  counts: { parts: 0, ok: 0, ng: 0, no_decision: 0, rejected: 0 },
  trend: [], // {id, score, threshold, decision}
  ng: [], // the last NG records, newest first
  threshold: null,
  station: null, // the last status the station reported
  statusAt: 0, // when it came (this page's clock, ms)
  live: false,
  offlineSince: null, // Date the event stream dropped, null while live
  lockedOut: null, // the server's reason for refusing the event stream
  events: null,
};

const $ = (id) => document.getElementById(id);

async function getJSON(url) {
  const response = await fetch(url, { cache: "no-store" });
  if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
  return response.json();
}

function fmt(value, digits = 4) {
  return value === null || value === undefined ? "–" : Number(value).toPrecision(digits);
}

function overlayUrl(record) {
  return record.overlay ? `/api/results/${record.id}/overlay.png` : null;
}

// ------------------------------------------------------------------ state from the server

async function start() {
  const overview = await getJSON("/api/status");
  view.trend = [];
  view.next = overview.records;
  view.counts = overview.counts;
  view.ng = overview.recent_ng;
  const since = Math.max(0, overview.records - TREND);
  const page = await getJSON(`/api/results?since=${since}&limit=${TREND}`);
  for (const record of page.results) {
    if (record.id < overview.records && record.index !== null) addToTrend(record);
  }
  applyStatus(overview.station);
  if (overview.latest) showLatest(overview.latest);
  renderCounts();
  renderNg();
  drawTrend();
  connect();
}

function connect() {
  if (view.events) view.events.close();
  const events = new EventSource(`/api/events?since=${view.next}`);
  view.events = events;
  events.addEventListener("result", (event) => onResult(JSON.parse(event.data)));
  events.addEventListener("status", (event) => applyStatus(JSON.parse(event.data).station));
  events.onopen = () => {
    view.lockedOut = null;
    setLive(true);
  };
  events.onerror = () => {
    setLive(false);
    // CLOSED: the server answered with an error (the browser will not retry by itself).
    if (events.readyState === EventSource.CLOSED) probe();
  };
}

// Why the event stream was refused (say it on the page), then try again.
async function probe() {
  const abort = new AbortController();
  try {
    const response = await fetch(`/api/events?since=${view.next}`,
      { cache: "no-store", signal: abort.signal });
    if (response.ok) {
      abort.abort();
      connect();
      return;
    }
    const answer = await response.json().catch(() => ({}));
    view.lockedOut = answer.error || `HTTP ${response.status}`;
  } catch (error) {
    view.lockedOut = null; // unreachable, not refused: the offline banner says so
  }
  renderFreshness();
  setTimeout(connect, RETRY_MS);
}

function onResult(record) {
  if (record.id < view.next) return; // already counted (a resumed stream repeats nothing, but be sure)
  view.next = record.id + 1;
  if (record.decision === "rejected") {
    view.counts.rejected += 1;
    renderCounts();
    return;
  }
  view.counts.parts += 1;
  const key = { OK: "ok", NG: "ng" }[record.decision] || "no_decision";
  view.counts[key] += 1;
  if (record.decision === "NG") {
    view.ng.unshift(record);
    view.ng.length = Math.min(view.ng.length, NG_LIST);
    renderNg();
  }
  addToTrend(record);
  showLatest(record);
  renderCounts();
  drawTrend();
}

function addToTrend(record) {
  view.trend.push({
    id: record.id, score: record.score, threshold: record.threshold, decision: record.decision,
  });
  if (view.trend.length > TREND) view.trend.shift();
}

// ------------------------------------------------------------------ rendering

function applyStatus(station) {
  view.station = station;
  view.statusAt = Date.now();
  renderFreshness();
  $("rate").textContent = station.images_per_s_last_minute ?? "–";
  $("latency").textContent =
    station.latency_ms_p50 === null || station.latency_ms_p50 === undefined
      ? "–" : `${Math.round(station.latency_ms_p50)} ms`;
  view.threshold = station.threshold ?? null;
  $("threshold").textContent = fmt(view.threshold);
  $("backlog").textContent = station.backlog ?? "–";
  drawTrend();
}

function setLive(on) {
  if (on) view.offlineSince = null;
  else if (view.offlineSince === null) view.offlineSince = new Date();
  view.live = on;
  const live = $("live");
  live.textContent = on ? "live" : "offline";
  live.classList.toggle("on", on);
  renderFreshness();
}

// The station's state, unless what the page shows is not current: then a banner across the
// page says since when and why, and the state pill says "stale" instead of the last state.
function renderFreshness() {
  const station = view.station;
  const every = (station && station.status_every_s) || 5;
  const silentFor = (Date.now() - view.statusAt) / 1000;
  let warning = null;
  if (view.lockedOut) {
    warning = `LOCKED OUT: the station refused live updates (${view.lockedOut}). `
      + `Figures below are from ${clock(view.offlineSince)}; retrying.`;
  } else if (!view.live && view.offlineSince) {
    warning = `NOT LIVE since ${clock(view.offlineSince)}: the figures below stopped `
      + "updating; reconnecting.";
  } else if (station && station.state !== "stopped" && station.state !== "error"
             && silentFor > SILENT_STATUSES * every + 2) {
    warning = `STATION SILENT: no status since ${clock(new Date(view.statusAt))} `
      + `(it reports every ${every} s).`;
  }
  const banner = $("banner");
  banner.hidden = warning === null;
  banner.textContent = warning || "";
  banner.classList.toggle("locked", Boolean(view.lockedOut));
  const state = $("state");
  const name = warning ? "stale" : (station ? station.state : "connecting");
  state.textContent = name;
  state.className = `pill ${name}`;
}

function clock(date) {
  return date ? date.toTimeString().slice(0, 8) : "–";
}

function showLatest(record) {
  const url = overlayUrl(record);
  const img = $("latest-img");
  if (url) img.src = url;
  img.hidden = !url;
  $("latest-empty").hidden = Boolean(url);
  $("latest-empty").textContent = url ? "" : "no overlay for this part";
  $("latest-name").textContent = `#${record.id}  ${record.name}`;
  $("latest-meta").textContent = `${record.time.slice(11, 23)} UTC · ${record.phase || ""}`;
  const decision = $("decision");
  const known = record.decision === "OK" || record.decision === "NG";
  decision.textContent = known ? record.decision : "no threshold";
  decision.className = `decision ${known ? record.decision.toLowerCase() : "none"}`;
  $("decision-score").textContent = `score ${fmt(record.score)}`;
}

function renderCounts() {
  for (const name of ["parts", "ok", "ng", "no_decision", "rejected"]) {
    $(`count-${name}`).textContent = view.counts[name];
  }
}

function renderNg() {
  const list = $("ng-parts");
  list.replaceChildren();
  for (const record of view.ng) {
    const item = document.createElement("li");
    const link = document.createElement("a");
    link.href = overlayUrl(record) || `/api/results/${record.id}`;
    link.target = "_blank";
    link.title = `${record.name}: score ${fmt(record.score)} at ${record.time}`;
    const img = document.createElement("img");
    img.alt = record.name;
    img.loading = "lazy";
    if (overlayUrl(record)) img.src = overlayUrl(record);
    const label = document.createElement("span");
    label.textContent = `#${record.id} `;
    const score = document.createElement("em");
    score.textContent = fmt(record.score, 3);
    label.append(score);
    link.append(img, label);
    item.append(link);
    list.append(item);
  }
  $("ng-empty").hidden = view.ng.length > 0;
}

function drawTrend() {
  const canvas = $("trend");
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth;
  const height = canvas.clientHeight;
  canvas.width = Math.round(width * ratio);
  canvas.height = Math.round(height * ratio);
  const g = canvas.getContext("2d");
  g.scale(ratio, ratio);
  g.clearRect(0, 0, width, height);
  const points = view.trend.filter((p) => Number.isFinite(p.score));
  $("trend-note").textContent = points.length ? `last ${points.length} parts` : "";
  const pad = { left: 48, right: 12, top: 10, bottom: 20 };
  const values = points.map((p) => p.score);
  const thresholds = points.map((p) => p.threshold).concat([view.threshold])
    .filter((t) => t !== null && t !== undefined && Number.isFinite(t));
  if (!values.length) {
    g.fillStyle = "#8a96a8";
    g.font = "13px system-ui, sans-serif";
    g.fillText("no scores yet", pad.left, height / 2);
    return;
  }
  let low = Math.min(...values, ...thresholds);
  let high = Math.max(...values, ...thresholds);
  const margin = (high - low) * 0.08 || Math.abs(high) * 0.1 || 1;
  low -= margin;
  high += margin;
  const x = (i) => pad.left + (points.length === 1 ? 0.5 : i / (points.length - 1))
    * (width - pad.left - pad.right);
  const y = (v) => pad.top + (1 - (v - low) / (high - low)) * (height - pad.top - pad.bottom);

  g.strokeStyle = "#263041";
  g.fillStyle = "#8a96a8";
  g.font = "11px system-ui, sans-serif";
  g.lineWidth = 1;
  for (let k = 0; k <= 4; k++) {
    const v = low + (k / 4) * (high - low);
    g.beginPath();
    g.moveTo(pad.left, y(v));
    g.lineTo(width - pad.right, y(v));
    g.stroke();
    g.fillText(v.toPrecision(3), 4, y(v) + 4);
  }

  // The threshold each part was judged by, as a dashed step line.
  g.strokeStyle = "#f2c14e";
  g.setLineDash([6, 4]);
  g.lineWidth = 1.5;
  g.beginPath();
  let drawing = false;
  points.forEach((p, i) => {
    if (p.threshold === null || p.threshold === undefined) { drawing = false; return; }
    const left = i === 0 ? pad.left : (x(i - 1) + x(i)) / 2;
    const right = i === points.length - 1 ? width - pad.right : (x(i) + x(i + 1)) / 2;
    if (drawing) g.lineTo(left, y(p.threshold)); else g.moveTo(left, y(p.threshold));
    g.lineTo(right, y(p.threshold));
    drawing = true;
  });
  g.stroke();
  g.setLineDash([]);
  if (view.threshold !== null && Number.isFinite(view.threshold)) {
    g.fillStyle = "#f2c14e";
    const label = `threshold ${fmt(view.threshold, 3)}`;
    g.fillText(label, width - pad.right - g.measureText(label).width, y(view.threshold) - 5);
  }

  g.strokeStyle = "#5d6b80";
  g.lineWidth = 1.5;
  g.beginPath();
  points.forEach((p, i) => (i ? g.lineTo(x(i), y(p.score)) : g.moveTo(x(i), y(p.score))));
  g.stroke();
  const colours = { OK: "#22a45d", NG: "#e0443e" };
  for (const [i, p] of points.entries()) {
    g.fillStyle = colours[p.decision] || "#c8d0dc";
    g.beginPath();
    g.arc(x(i), y(p.score), p.decision === "NG" ? 4.5 : 3, 0, 2 * Math.PI);
    g.fill();
  }
}

window.addEventListener("resize", drawTrend);
setInterval(renderFreshness, 1000);
function boot() {
  start().catch((error) => {
    setLive(false);
    $("latest-empty").textContent = String(error);
    setTimeout(boot, 3000);
  });
}
boot();
