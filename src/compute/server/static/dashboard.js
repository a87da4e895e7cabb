// Compute dashboard: workers, queues, recent jobs with live progress, throughput.
// Plain browser JavaScript, no build step and nothing loaded from elsewhere. Reads the HTTP API
// (GET /, /workers, /queues, /jobs) every REFRESH_MS and the live stream (GET /events, SSE) for
// progress as it happens. Every value from the server is set with textContent, never as HTML.
"use strict";

(() => {
  const TOKEN_KEY = "compute.token";
  const REFRESH_MS = 2000;
  const RECONNECT_MS = 3000;
  const MAX_JOBS = 50;
  const BUCKET_MS = 10_000;
  const BUCKETS = 30;
  const TERMINAL = new Set(["completed", "failed", "cancelled"]);

  let token = sessionStorage.getItem(TOKEN_KEY) || "";
  let source = null;
  let refreshTimer = null;
  let reconnectTimer = null;
  /** job_id -> {job_id, task_type, status, progress, worker_id, created_at, ts} */
  const jobs = new Map();
  /** job_id -> {at, status}: jobs that finished, for the throughput chart */
  const finished = new Map();

  const $ = (selector) => document.querySelector(selector);

  class Unauthorized extends Error {}

  async function api(path) {
    const headers = token ? { Authorization: `Bearer ${token}` } : {};
    const response = await fetch(path, { headers, cache: "no-store" });
    if (response.status === 401 || response.status === 403) {
      let detail = `${response.status}`;
      try { detail = (await response.json()).detail || detail; } catch (_) { /* not JSON */ }
      throw new Unauthorized(detail);
    }
    if (!response.ok) {
      const error = new Error(`${path} answered ${response.status}`);
      error.status = response.status;
      throw error;
    }
    return response.json();
  }

  // -- helpers ---------------------------------------------------------------------------------

  function cell(text, className) {
    const td = document.createElement("td");
    td.textContent = text;
    if (className) td.className = className;
    return td;
  }

  function badge(text) {
    const span = document.createElement("span");
    span.className = `status ${text}`;
    span.textContent = text;
    return span;
  }

  function ago(ms) {
    if (ms === null || ms === undefined) return "";
    const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
    if (s < 60) return `${s} s ago`;
    if (s < 3600) return `${Math.floor(s / 60)} min ago`;
    return new Date(ms).toLocaleString();
  }

  function duration(ms) {
    if (ms === null || ms === undefined) return "";
    const s = Math.round(ms / 1000);
    return s < 120 ? `${s} s` : `${Math.round(s / 60)} min`;
  }

  function setState(state, text) {
    const el = $("#live-state");
    el.dataset.state = state;
    el.textContent = text || state;
  }

  function replaceRows(tbody, rows, empty) {
    tbody.replaceChildren(...rows);
    $(empty).hidden = rows.length > 0;
  }

  // -- workers and queues -----------------------------------------------------------------------

  async function loadWorkers() {
    let workers;
    try {
      workers = (await api("/workers")).workers;
    } catch (error) {
      if (error.status !== 404) throw error;
      // An older server without GET /workers: counts from /capabilities only.
      const caps = await api("/capabilities");
      workers = Object.entries(caps.capabilities).map(([task, idle]) => ({
        worker_id: `(${idle} idle)`, state: idle ? "idle" : "busy", tasks: [task], running_jobs: [],
      }));
    }
    const rows = workers.map((w) => {
      const tr = document.createElement("tr");
      tr.dataset.worker = w.worker_id;
      const state = document.createElement("td");
      state.append(badge(w.state));
      tr.append(cell(w.worker_id, "id"), state, cell(w.tasks.join(", "), "tasks"),
        cell((w.running_jobs || []).map((id) => id.slice(0, 8)).join(", "), "id"),
        cell(ago(w.last_heartbeat)));
      return tr;
    });
    $("#worker-count").textContent = `(${workers.length})`;
    replaceRows($("#workers tbody"), rows, "#workers-empty");
  }

  async function loadQueues() {
    const queues = await api("/queues");
    const rows = queues.map((q) => {
      const tr = document.createElement("tr");
      tr.dataset.task = q.task_type;
      tr.append(cell(q.task_type), cell(String(q.queued), "queued"), cell(String(q.running), "running"),
        cell(duration(q.oldest_queued_age_ms)));
      return tr;
    });
    replaceRows($("#queues tbody"), rows, "#queues-empty");
  }

  // -- jobs ---------------------------------------------------------------------------------------

  /** Merge what we learn about a job; an older report never undoes a newer one. */
  function learn(report) {
    // A live change knows no worker or creation time: what it leaves out is kept, not erased.
    const job = Object.fromEntries(Object.entries(report).filter(([, v]) => v !== undefined && v !== null));
    const known = jobs.get(job.job_id);
    if (known) {
      const stale = job.ts < known.ts || (TERMINAL.has(known.status) && !TERMINAL.has(job.status));
      if (!stale) Object.assign(known, job);
    } else {
      jobs.set(job.job_id, { ...job });
    }
    const now = jobs.get(job.job_id);
    if (TERMINAL.has(now.status) && !finished.has(now.job_id)) {
      finished.set(now.job_id, { at: now.ts || Date.now(), status: now.status });
    }
  }

  async function loadJobs() {
    let page;
    try {
      page = await api(`/jobs?limit=${MAX_JOBS}`);
    } catch (error) {
      if (error.status === 404 || error.status === 405) return; // an older server: live events only
      throw error;
    }
    for (const j of page.jobs) {
      learn({
        job_id: j.job_id, task_type: j.task_type, status: j.cancelled ? "cancelled" : j.status,
        progress: j.progress, worker_id: j.worker_id, created_at: j.created_at,
        ts: j.completed_at || j.updated_at || j.created_at,
      });
    }
  }

  function renderJobs() {
    const recent = [...jobs.values()].sort((a, b) => (b.created_at || 0) - (a.created_at || 0));
    for (const old of recent.slice(MAX_JOBS)) jobs.delete(old.job_id);
    const rows = recent.slice(0, MAX_JOBS).map((j) => {
      const tr = document.createElement("tr");
      tr.dataset.job = j.job_id;
      tr.dataset.status = j.status;
      const status = document.createElement("td");
      status.append(badge(j.status));
      const progress = document.createElement("td");
      const bar = document.createElement("span");
      bar.className = "bar";
      bar.setAttribute("role", "progressbar");
      bar.setAttribute("aria-valuemin", "0");
      bar.setAttribute("aria-valuemax", "100");
      bar.setAttribute("aria-valuenow", String(j.progress));
      bar.dataset.status = j.status;
      const fill = document.createElement("span");
      fill.style.width = `${Math.max(0, Math.min(100, j.progress))}%`;
      bar.append(fill);
      const pct = document.createElement("span");
      pct.className = "pct";
      pct.textContent = `${j.progress}%`;
      progress.append(bar, pct);
      tr.append(cell(j.job_id.slice(0, 8), "id"), cell(j.task_type || ""), status, progress,
        cell(j.worker_id || "", "id worker"), cell(ago(j.created_at)));
      tr.title = j.job_id;
      return tr;
    });
    replaceRows($("#jobs tbody"), rows, "#jobs-empty");
  }

  // -- throughput chart ---------------------------------------------------------------------------

  function renderChart() {
    const svg = $("#throughput");
    const ns = "http://www.w3.org/2000/svg";
    const end = Math.ceil(Date.now() / BUCKET_MS) * BUCKET_MS;
    const start = end - BUCKETS * BUCKET_MS;
    const counts = Array.from({ length: BUCKETS }, () => ({ completed: 0, failed: 0 }));
    for (const [id, f] of finished) {
      if (f.at < start - BUCKET_MS) { finished.delete(id); continue; }
      const i = Math.floor((f.at - start) / BUCKET_MS);
      if (i >= 0 && i < BUCKETS) counts[i][f.status === "completed" ? "completed" : "failed"] += 1;
    }
    const top = Math.max(1, ...counts.map((c) => c.completed + c.failed));
    const width = 300 / BUCKETS;
    const bars = [];
    counts.forEach((c, i) => {
      let y = 80;
      for (const kind of ["completed", "failed"]) {
        if (!c[kind]) continue;
        const h = (c[kind] / top) * 76;
        y -= h;
        const rect = document.createElementNS(ns, "rect");
        rect.setAttribute("x", String(i * width + 1));
        rect.setAttribute("y", String(y));
        rect.setAttribute("width", String(width - 2));
        rect.setAttribute("height", String(h));
        rect.setAttribute("class", kind);
        const title = document.createElementNS(ns, "title");
        title.textContent = `${c[kind]} ${kind}`;
        rect.append(title);
        bars.push(rect);
      }
    });
    svg.replaceChildren(...bars);
    const lastMinute = [...finished.values()].filter((f) => f.at >= Date.now() - 60_000).length;
    $("#throughput-rate").textContent = `(${lastMinute} in the last minute)`;
  }

  // -- live stream --------------------------------------------------------------------------------

  function connect() {
    if (source) source.close();
    clearTimeout(reconnectTimer);
    const query = token ? `?access_token=${encodeURIComponent(token)}` : "";
    source = new EventSource(`/events${query}`);
    source.onopen = () => setState("live");
    source.addEventListener("job", (event) => {
      const c = JSON.parse(event.data);
      learn({ job_id: c.job_id, task_type: c.task_type, status: c.status, progress: c.progress,
              ts: c.timestamp, created_at: c.status === "queued" && !jobs.has(c.job_id) ? c.timestamp : undefined });
      renderJobs();
      renderChart();
    });
    source.addEventListener("end", (event) => {
      // overflow: we fell behind and missed changes; shutdown: the server stops. Re-read, reconnect.
      setState("connecting", `reconnecting (${JSON.parse(event.data).reason})`);
    });
    source.onerror = () => {
      if (source.readyState === EventSource.CLOSED) {
        // Refused (401, 503) or gone: the next refresh says which; try again later.
        setState("error", "live view lost");
        reconnectTimer = setTimeout(connect, RECONNECT_MS);
      } else {
        setState("connecting", "reconnecting");
      }
    };
  }

  // -- refresh, token, start ------------------------------------------------------------------

  async function refresh() {
    try {
      await Promise.all([loadWorkers(), loadQueues(), loadJobs()]);
      renderJobs();
      renderChart();
    } catch (error) {
      if (error instanceof Unauthorized) {
        askForToken(token ? `The token was refused: ${error.message}` : "");
      } else {
        setState("error", String(error.message || error));
      }
    }
  }

  function stop() {
    clearInterval(refreshTimer);
    clearTimeout(reconnectTimer);
    if (source) source.close();
    source = null;
  }

  function askForToken(message) {
    stop();
    setState("error", "token needed");
    $("#token-form").hidden = false;
    $("#token-error").textContent = message || "";
    $("#token-input").focus();
  }

  $("#token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    token = $("#token-input").value.trim();
    sessionStorage.setItem(TOKEN_KEY, token);
    $("#token-input").value = "";
    $("#token-form").hidden = true;
    start();
  });

  $("#forget-token").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    token = "";
    start();
  });

  async function start() {
    stop();
    $("#forget-token").hidden = !token;
    let health;
    try {
      health = await api("/");
    } catch (error) {
      setState("error", `server does not answer: ${error.message}`);
      refreshTimer = setTimeout(start, RECONNECT_MS);
      return;
    }
    $("#version").textContent = `v${health.version}`;
    if (health.auth_required && !token && health.guestMode !== "on") {
      askForToken("");
      return;
    }
    await refresh();
    if (!$("#token-form").hidden) return; // refused: waiting for a token
    connect();
    refreshTimer = setInterval(refresh, REFRESH_MS);
  }

  start();
})();
