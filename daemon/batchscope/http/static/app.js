// batchscope status page. No framework, no build step, nothing from elsewhere.
//
// Safety: everything shown comes from upstreams (batch ids, types, error messages) and is
// hostile until proven otherwise. This file never assigns innerHTML/outerHTML or uses
// insertAdjacentHTML: every string reaches the page through textContent or a plain
// attribute, and an upstream link is used only when it is an http(s) URL. The server's
// Content-Security-Policy forbids inline and foreign script on top of that.
//
// Liveness: Server-Sent Events *and* fetches, each for what it does best.
// - /api/v1/events/stream (EventSource) pushes every transition the moment the daemon
//   decides it, with no polling cost while nothing happens; the browser reconnects by
//   itself and resumes after the last event id, and the events list is fed from it.
// - Job progress and target health are not events (a batch at 40% then 41% emits
//   nothing), so the visible slice of the batch list and the targets are re-read from the
//   paged JSON API: at once (debounced) after an event, and every REFRESH_MS while the tab
//   is visible. The API is the single source of truth; the stream only says "look now".
"use strict";

(function () {
  const PAGE = 100; // rows per "show more"
  const REFRESH_MS = 5000;
  const MAX_EVENTS = 60;
  // Problems first: what an operator must act on is at the top of the list.
  const ORDER = ["failed", "stalled", "suspended", "vanished", "cancelled", "in_progress",
    "none", "skipped", "passed"];
  const STATE_INFO = {
    failed: { icon: "✗", label: "failed" },
    stalled: { icon: "⚠", label: "stalled" },
    suspended: { icon: "‖", label: "suspended" },
    vanished: { icon: "?", label: "vanished" },
    cancelled: { icon: "⊘", label: "cancelled" },
    in_progress: { icon: "▶", label: "in progress" },
    skipped: { icon: "↷", label: "skipped" },
    passed: { icon: "✓", label: "passed" },
    none: { icon: "…", label: "not seen yet" },
  };
  const PROBLEMS = new Set(["failed", "stalled", "vanished", "cancelled"]);

  const $ = (id) => document.getElementById(id);
  const rowsEl = $("batch-rows");
  const rowByKey = new Map();
  let targets = [];
  let shownWanted = PAGE;
  let exhausted = true;
  let refreshTimer = null;
  let loading = null;
  let pending = false;
  let firstRender = true;
  const started = performance.now();

  // ------------------------------------------------------------------ DOM helpers

  function el(tag, props, children) {
    const node = document.createElement(tag);
    if (props) {
      for (const [k, v] of Object.entries(props)) {
        if (v === null || v === undefined) continue;
        if (k === "text") node.textContent = String(v);
        else if (k === "class") node.className = v;
        else if (k === "data") Object.assign(node.dataset, v);
        else node.setAttribute(k, String(v));
      }
    }
    for (const child of children || []) if (child) node.appendChild(child);
    return node;
  }

  function setText(node, text) {
    const value = text === null || text === undefined ? "" : String(text);
    if (node.textContent !== value) node.textContent = value;
  }

  function safeUrl(link) {
    if (typeof link !== "string") return null;
    try {
      const url = new URL(link, location.href);
      return url.protocol === "https:" || url.protocol === "http:" ? url.href : null;
    } catch (e) {
      return null;
    }
  }

  function stateBadge(state) {
    const info = STATE_INFO[state] || { icon: "•", label: String(state) };
    return el("span", { class: "state", data: { state: String(state) } }, [
      el("span", { class: "icon", "aria-hidden": "true", text: info.icon }),
      el("span", { class: "label", text: info.label }),
    ]);
  }

  function ago(epoch) {
    if (typeof epoch !== "number") return "never";
    return span(Date.now() / 1000 - epoch) + " ago";
  }

  function span(seconds) {
    const s = Math.max(0, Math.round(seconds));
    if (s < 60) return s + "s";
    const m = Math.floor(s / 60);
    if (m < 60) return m + "m";
    const h = Math.floor(m / 60);
    if (h < 48) return h + "h " + (m % 60) + "m";
    return Math.floor(h / 24) + "d " + (h % 24) + "h";
  }

  function isoTime(epoch) {
    return typeof epoch === "number" ? new Date(epoch * 1000).toISOString() : "";
  }

  // ------------------------------------------------------------------ filters (URL)

  const filterEls = { source: $("f-source"), target: $("f-target"), state: $("f-state") };
  for (const state of ORDER) {
    filterEls.state.appendChild(el("option", { value: state, text: STATE_INFO[state].label }));
  }

  function filters() {
    const q = new URLSearchParams(location.search);
    return { source: q.get("source") || "", target: q.get("target") || "",
      state: q.get("state") || "" };
  }

  function setFilters(next) {
    const q = new URLSearchParams();
    for (const k of ["source", "target", "state"]) if (next[k]) q.set(k, next[k]);
    const search = q.toString();
    history.pushState(null, "", search ? "?" + search : location.pathname);
    applyFilters();
  }

  function syncFilterControls() {
    const f = filters();
    ensureOption(filterEls.target, f.target);
    for (const k of Object.keys(filterEls)) filterEls[k].value = f[k];
  }

  function ensureOption(select, value) {
    if (!value) return;
    for (const o of select.options) if (o.value === value) return;
    select.appendChild(el("option", { value: value, text: value }));
  }

  function applyFilters() {
    syncFilterControls();
    shownWanted = PAGE;
    clearRows();
    renderSummary();
    scheduleRefresh(0);
  }

  for (const [k, select] of Object.entries(filterEls)) {
    select.addEventListener("change", () => setFilters({ ...filters(), [k]: select.value }));
  }
  $("f-clear").addEventListener("click", () => setFilters({}));
  window.addEventListener("popstate", applyFilters);

  // ------------------------------------------------------------------ API

  async function getJson(url) {
    const resp = await fetch(url, { headers: { Accept: "application/json" } });
    if (!resp.ok) throw new Error(url + ": HTTP " + resp.status);
    return { body: await resp.json(), next: nextLink(resp.headers.get("Link")) };
  }

  function nextLink(header) {
    if (!header) return null;
    const m = /<([^>]*)>\s*;\s*rel="next"/.exec(header);
    return m ? m[1] : null;
  }

  function matches(f, source, target) {
    return (!f.source || f.source === source) && (!f.target || f.target === target);
  }

  // How many batches of each state the filters select, from /api/v1/targets.
  function stateCounts(f) {
    const counts = {};
    for (const t of targets) {
      if (!matches(f, t.source, t.target)) continue;
      for (const [state, n] of Object.entries(t.tracked || {})) {
        counts[state] = (counts[state] || 0) + n;
      }
    }
    return counts;
  }

  // The first `want` rows in ORDER, walking each state's pages with the API's cursor.
  async function loadRows(f, want) {
    const counts = stateCounts(f);
    const states = f.state ? [f.state] : ORDER.filter((s) => (counts[s] || 0) > 0);
    const rows = [];
    let more = false;
    for (const state of states) {
      let url = "/api/v1/batches?" + new URLSearchParams({
        ...(f.source ? { source: f.source } : {}), ...(f.target ? { target: f.target } : {}),
        state: state, limit: String(Math.min(10000, Math.max(1, want - rows.length))),
      }).toString();
      while (url && rows.length < want) {
        const page = await getJson(url);
        rows.push(...page.body);
        url = page.next;
      }
      if (rows.length >= want) {
        more = Boolean(url) || states.indexOf(state) < states.length - 1;
        break;
      }
    }
    return { rows: rows.slice(0, want), more: more };
  }

  // ------------------------------------------------------------------ refresh

  function scheduleRefresh(delay) {
    if (refreshTimer !== null) clearTimeout(refreshTimer);
    refreshTimer = setTimeout(refresh, delay);
  }

  async function refresh() {
    refreshTimer = null;
    if (loading) {
      pending = true;
      return;
    }
    loading = (async () => {
      try {
        targets = (await getJson("/api/v1/targets")).body;
        renderTargets();
        renderSummary();
        const f = filters();
        const t0 = performance.now();
        const { rows, more } = await loadRows(f, shownWanted);
        if (!sameFilters(f, filters())) return; // the filters changed meanwhile
        renderRows(rows, more);
        markRendered(t0);
        setStale(false);
      } catch (e) {
        setStale(true, String(e.message || e));
      }
    })();
    await loading;
    loading = null;
    if (pending) {
      pending = false;
      scheduleRefresh(0);
    } else if (refreshTimer === null) {
      scheduleRefresh(REFRESH_MS);
    }
  }

  function sameFilters(a, b) {
    return a.source === b.source && a.target === b.target && a.state === b.state;
  }

  function markRendered(t0) {
    const body = document.body;
    body.dataset.listMs = String(Math.round(performance.now() - t0));
    if (firstRender) {
      firstRender = false;
      body.dataset.renderMs = String(Math.round(performance.now() - started));
      body.dataset.ready = "true";
    }
    body.dataset.refreshes = String(Number(body.dataset.refreshes || 0) + 1);
  }

  document.addEventListener("visibilitychange", () => {
    if (!document.hidden) scheduleRefresh(0);
  });
  setInterval(() => {
    if (!document.hidden) renderAges();
  }, 1000);

  // ------------------------------------------------------------------ rendering

  function clearRows() {
    rowsEl.replaceChildren();
    rowByKey.clear();
  }

  function rowKey(b) {
    return b.source + "/" + b.target + "/" + b.batch_id;
  }

  function progress(b) {
    const c = b.counts || {};
    if (typeof c.total_jobs === "number") {
      return { done: c.completed_jobs || 0, total: c.total_jobs, unit: "jobs" };
    }
    if (typeof c.results_total === "number") {
      return { done: (c.results_passed || 0) + (c.results_failed || 0),
        total: c.results_total, unit: "results" };
    }
    return null;
  }

  function failedCount(b) {
    const c = b.counts || {};
    if (typeof c.failed_jobs === "number") return c.failed_jobs;
    if (typeof c.results_failed === "number") return c.results_failed;
    return null;
  }

  function newRow() {
    const tr = el("tr");
    tr.cells_ = {
      state: el("td", { class: "c-state", "data-label": "State" }),
      batch: el("td", { class: "c-batch", "data-label": "Batch" }),
      progress: el("td", { class: "c-progress", "data-label": "Progress" }),
      failed: el("td", { class: "c-failed num", "data-label": "Failed" }),
      why: el("td", { class: "c-why", "data-label": "Why" }),
      age: el("td", { class: "c-age", "data-label": "Age" }),
      link: el("td", { class: "c-link" }),
    };
    const id = el("span", { class: "batch-id" });
    const type = el("span", { class: "batch-type" });
    const where = el("span", { class: "where" });
    const more = el("button", { type: "button", class: "details-toggle link-button",
      "aria-expanded": "false", text: "details" });
    more.addEventListener("click", () => toggleDetail(tr));
    where.append(" · ", more);
    const whereText = el("span");
    where.prepend(whereText);
    tr.cells_.batch.append(type, id, where);
    const bar = el("progress", { max: "100", value: "0" });
    const ptext = el("span", { class: "ptext" });
    tr.cells_.progress.append(bar, ptext);
    const reason = el("span", { class: "reason" });
    const msg = el("span", { class: "message" });
    tr.cells_.why.append(reason, msg);
    tr.parts_ = { id, type, where: whereText, bar, ptext, reason, msg, more };
    for (const td of Object.values(tr.cells_)) tr.appendChild(td);
    return tr;
  }

  function updateRow(tr, b) {
    const p = tr.parts_;
    if (tr.dataset.state !== b.state) {
      if (tr.dataset.state) flash(tr);
      tr.dataset.state = b.state;
      tr.cells_.state.replaceChildren(stateBadge(b.state));
    }
    tr.classList.toggle("problem", PROBLEMS.has(b.state));
    setText(p.type, b.batch_type);
    setText(p.id, b.batch_id);
    p.id.title = b.batch_id;
    setText(p.where, b.source + " · " + b.target);
    const pr = progress(b);
    if (pr && pr.total > 0) {
      const pct = Math.min(100, Math.round((100 * pr.done) / pr.total));
      p.bar.hidden = false;
      p.bar.value = pct;
      p.bar.setAttribute("aria-label", pct + "% of " + pr.unit + " done");
      setText(p.ptext, pr.done + " / " + pr.total + " " + pr.unit);
    } else {
      p.bar.hidden = true;
      setText(p.ptext, pr ? "0 " + pr.unit : "—");
    }
    const failed = failedCount(b);
    setText(tr.cells_.failed, failed === null ? "" : String(failed));
    tr.cells_.failed.classList.toggle("bad", Boolean(failed));
    tr.cells_.failed.classList.toggle("none", failed === 0);
    setText(p.reason, b.reason ? b.reason.replace(/_/g, " ") : "");
    p.reason.hidden = !b.reason;
    setText(p.msg, b.message || "");
    p.msg.title = b.message || "";
    tr.dataset.firstSeen = String(b.first_seen);
    tr.cells_.age.title = "first seen " + isoTime(b.first_seen) + "; " + b.state +
      " since " + isoTime(b.state_since);
    setText(tr.cells_.age, span(Date.now() / 1000 - b.first_seen));
    const href = safeUrl(b.link);
    if ((tr.dataset.link || null) !== href) {
      tr.cells_.link.replaceChildren();
      if (href) {
        tr.cells_.link.appendChild(el("a", { href: href, target: "_blank",
          rel: "noopener noreferrer", class: "upstream", text: "open ↗",
          title: "in " + (b.source === "engine" ? "Cockpit" : "Datadog") }));
        tr.dataset.link = href;
      } else {
        delete tr.dataset.link;
      }
    }
  }

  function flash(tr) {
    tr.classList.remove("changed");
    void tr.offsetWidth; // restart the animation
    tr.classList.add("changed");
  }

  function renderRows(rows, more) {
    const seen = new Set();
    const frag = document.createDocumentFragment();
    for (const b of rows) {
      const key = rowKey(b);
      seen.add(key);
      let tr = rowByKey.get(key);
      if (!tr) {
        tr = newRow();
        tr.dataset.key = key;
        rowByKey.set(key, tr);
      }
      updateRow(tr, b);
      frag.appendChild(tr);
      if (tr.detail_) {
        frag.appendChild(tr.detail_);
        loadDetail(tr);
      }
    }
    for (const [key, tr] of rowByKey) {
      if (!seen.has(key)) {
        tr.remove();
        if (tr.detail_) tr.detail_.remove();
        rowByKey.delete(key);
      }
    }
    rowsEl.appendChild(frag); // moves kept rows into the new order in one go
    exhausted = !more;
    $("more").hidden = !more;
    $("empty").hidden = rows.length > 0;
    const total = Object.values(stateCounts(filters())).reduce((a, n) => a + n, 0);
    const f = filters();
    const matching = f.state ? (stateCounts(f)[f.state] || 0) : total;
    setText($("shown"), rows.length < matching ? "showing " + rows.length + " of " + matching
      : "");
    setText($("batch-count"), "(" + matching + ")");
  }

  function renderAges() {
    const now = Date.now() / 1000;
    for (const tr of rowByKey.values()) {
      setText(tr.cells_.age, span(now - Number(tr.dataset.firstSeen)));
    }
    for (const li of $("targets").children) {
      const poll = li.querySelector(".polled");
      if (poll && poll.dataset.at) setText(poll, "polled " + ago(Number(poll.dataset.at)));
    }
  }

  function renderSummary() {
    const f = filters();
    const counts = stateCounts({ ...f, state: "" });
    const ul = $("summary");
    ul.replaceChildren();
    for (const state of ORDER) {
      const n = counts[state] || 0;
      if (!n && !PROBLEMS.has(state) && state !== "in_progress") continue;
      const button = el("button", {
        type: "button", class: "chip" + (f.state === state ? " active" : ""),
        data: { state: state }, "aria-pressed": f.state === state ? "true" : "false",
        title: f.state === state ? "show every state" : "show only " + STATE_INFO[state].label,
      }, [
        el("span", { class: "n", text: String(n) }),
        stateBadge(state),
      ]);
      if (!n) button.classList.add("zero");
      button.addEventListener("click", () =>
        setFilters({ ...filters(), state: filters().state === state ? "" : state }));
      ul.appendChild(el("li", null, [button]));
    }
  }

  function renderTargets() {
    const ul = $("targets");
    ul.replaceChildren();
    const targetSelect = filterEls.target;
    const current = filters().target;
    const names = new Set();
    for (const t of targets) {
      const status = t.up === true ? "up" : t.up === false ? "down" : "pending";
      const tracked = Object.values(t.tracked || {}).reduce((a, n) => a + n, 0);
      const problems = Object.entries(t.tracked || {})
        .filter(([s, n]) => PROBLEMS.has(s) && n > 0)
        .map(([s, n]) => n + " " + STATE_INFO[s].label);
      const li = el("li", { class: "target", data: { status: status, target: t.target,
        source: t.source } }, [
        el("div", { class: "t-head" }, [
          el("span", { class: "health", data: { status: status } }, [
            el("span", { class: "icon", "aria-hidden": "true",
              text: status === "up" ? "✓" : status === "down" ? "✗" : "…" }),
            el("span", { text: status === "up" ? "UP" : status === "down" ? "DOWN"
              : "not polled yet" }),
          ]),
          el("span", { class: "t-name", text: t.target }),
          el("span", { class: "t-source", text: t.source }),
        ]),
        el("div", { class: "t-meta" }, [
          el("span", { class: "polled", data: { at: t.last_poll === null ? "" :
            String(t.last_poll) }, title: isoTime(t.last_poll),
          text: t.last_poll === null ? "not polled yet" : "polled " + ago(t.last_poll) }),
          el("span", { text: " · " + tracked + " tracked" +
            (problems.length ? " · " + problems.join(", ") : "") }),
        ]),
        t.last_error ? el("div", { class: "t-error" }, [
          el("span", { class: "reason", text: t.last_error.reason.replace(/_/g, " ") }),
          el("span", { class: "detail", text: t.last_error.detail, title: t.last_error.detail }),
          el("span", { class: "muted", text: t.last_success === null ? " · never succeeded"
            : " · last success " + ago(t.last_success) }),
        ]) : null,
      ]);
      ul.appendChild(li);
      names.add(t.target);
    }
    // The target filter offers every configured target (and keeps an unknown one from the
    // URL selected, so a shared link is not silently widened).
    const keep = Array.from(targetSelect.options).filter((o) => o.value === "");
    targetSelect.replaceChildren(...keep);
    for (const name of names) targetSelect.appendChild(el("option", { value: name, text: name }));
    ensureOption(targetSelect, current);
    targetSelect.value = current;
  }

  // ------------------------------------------------------------------ batch detail

  function toggleDetail(tr) {
    if (tr.detail_) {
      tr.detail_.remove();
      tr.detail_ = null;
      tr.parts_.more.setAttribute("aria-expanded", "false");
      setText(tr.parts_.more, "details");
      return;
    }
    const td = el("td", { colspan: "7", class: "detail-cell" }, [
      el("p", { class: "muted", text: "loading…" })]);
    tr.detail_ = el("tr", { class: "detail", data: { for: tr.dataset.key } }, [td]);
    tr.after(tr.detail_);
    tr.parts_.more.setAttribute("aria-expanded", "true");
    setText(tr.parts_.more, "hide details");
    loadDetail(tr);
  }

  async function loadDetail(tr) {
    const detailRow = tr.detail_;
    if (!detailRow) return;
    const [source, target, ...rest] = tr.dataset.key.split("/");
    const url = "/api/v1/batches/" + [source, target, rest.join("/")]
      .map(encodeURIComponent).join("/");
    let content;
    try {
      content = renderDetail((await getJson(url)).body);
    } catch (e) {
      content = el("p", { class: "muted", text: "no longer tracked (" + e.message + ")" });
    }
    if (tr.detail_ === detailRow) detailRow.firstChild.replaceChildren(content);
  }

  function renderDetail(d) {
    const box = el("div", { class: "detail-box" });
    const failure = d.failure || {};
    if (Array.isArray(failure.messages) && failure.messages.length) {
      box.appendChild(el("h3", { text: "Failure messages (" + failure.messages.length +
        " distinct among " + failure.sampled + " failed jobs read)" }));
      const ul = el("ul", { class: "messages" });
      for (const m of failure.messages) {
        const ids = [];
        if (m.process_instance_ids && m.process_instance_ids.length) {
          ids.push("process instances: " + m.process_instance_ids.join(", "));
        }
        if (m.activity_ids && m.activity_ids.length) {
          ids.push("activities: " + m.activity_ids.join(", "));
        }
        if (m.job_ids && m.job_ids.length) ids.push("jobs: " + m.job_ids.join(", "));
        ul.appendChild(el("li", null, [
          el("span", { class: "count", text: "×" + m.count }),
          el("pre", { class: "msg", text: m.message || "(no message)" }),
          ids.length ? el("span", { class: "ids", text: ids.join(" · ") }) : null,
        ]));
      }
      box.appendChild(ul);
    }
    if (Array.isArray(d.results)) {
      box.appendChild(el("h3", { text: "Results (" + d.results.length + ")" }));
      const table = el("table", { class: "results" });
      table.appendChild(el("thead", null, [el("tr", null, ["State", "Test", "Location",
        "Device", "Rule", "Retries", "Duration", ""].map((h) => el("th", { text: h })))]));
      const body = el("tbody");
      for (const r of d.results) {
        const href = safeUrl(r.link);
        body.appendChild(el("tr", { data: { state: r.state } }, [
          el("td", null, [stateBadge(r.state)]),
          el("td", { text: (r.test_name || "") + " (" + (r.test_public_id || "?") + ")" }),
          el("td", { text: r.location || "" }),
          el("td", { text: r.device || "" }),
          el("td", { text: r.execution_rule || "" }),
          el("td", { class: "num", text: r.retries === null ? "" : String(r.retries) }),
          el("td", { class: "num", text: typeof r.duration_ms === "number"
            ? (r.duration_ms / 1000).toFixed(1) + " s" : "" }),
          el("td", null, [href ? el("a", { href: href, target: "_blank",
            rel: "noopener noreferrer", text: "open ↗" }) : null]),
        ]));
      }
      table.appendChild(body);
      box.appendChild(el("div", { class: "results-wrap" }, [table]));
    }
    if (!box.children.length) {
      box.appendChild(el("p", { class: "muted", text: d.reason
        ? "Reason: " + d.reason.replace(/_/g, " ") + " (no further evidence)"
        : "Nothing wrong is known about this batch." }));
    }
    return box;
  }

  // ------------------------------------------------------------------ events (SSE)

  function eventItem(e) {
    const isResult = e.event === "ci_result.transition";
    const time = new Date(e.timestamp);
    const what = isResult
      ? (e.test_name || e.test_public_id) + (e.location ? " @ " + e.location : "")
      : e.batch_type;
    return el("li", { class: "event", data: { seq: String(e.seq), level: e.level } }, [
      el("time", { datetime: e.timestamp, title: e.timestamp,
        text: isNaN(time) ? "" : time.toLocaleTimeString() }),
      el("span", { class: "transition" }, e.from_state === "none" ? [
        el("span", { class: "new", text: "new" }), stateBadge(e.to_state),
      ] : [
        stateBadge(e.from_state), el("span", { class: "arrow", text: "→", "aria-label": "to" }),
        stateBadge(e.to_state),
      ]),
      el("span", { class: "e-what", text: (isResult ? "result: " : "") + what }),
      el("span", { class: "e-id", text: e.target + " · " + e.batch_id }),
      e.reason ? el("span", { class: "reason", text: e.reason.replace(/_/g, " ") }) : null,
    ]);
  }

  function addEvents(events) {
    const ol = $("events");
    for (const e of events) {
      if (ol.querySelector('[data-seq="' + Number(e.seq) + '"]')) continue;
      ol.insertBefore(eventItem(e), ol.firstChild);
    }
    while (ol.children.length > MAX_EVENTS) ol.lastChild.remove();
    setText($("events-h"), "Recent events");
  }

  function setLive(state, text) {
    $("live").dataset.live = state;
    setText($("live-text"), text);
  }

  function setStale(stale, why) {
    if (stale) setLive("error", "cannot reach the daemon: " + why);
    else if ($("live").dataset.live === "error") setLive(streamState(), streamText());
  }

  let source = null;
  function streamState() {
    return source && source.readyState === EventSource.OPEN ? "live" : "connecting";
  }
  function streamText() {
    return streamState() === "live" ? "live" : "reconnecting…";
  }

  async function connect() {
    let after = 0;
    try {
      const recent = (await getJson("/api/v1/events?last=" + MAX_EVENTS)).body;
      addEvents(recent);
      if (recent.length) after = recent[recent.length - 1].seq;
    } catch (e) {
      setLive("error", "cannot reach the daemon");
    }
    source = new EventSource("/api/v1/events/stream?after=" + after);
    source.onopen = () => {
      setLive("live", "live");
      scheduleRefresh(0); // anything missed while disconnected
    };
    source.onerror = () => setLive("connecting", "reconnecting…");
    source.onmessage = (msg) => {
      let e;
      try {
        e = JSON.parse(msg.data);
      } catch (err) {
        return;
      }
      addEvents([e]);
      document.body.dataset.lastSeq = String(e.seq);
      scheduleRefresh(150); // coalesce a burst of events into one re-read
    };
  }

  $("more").addEventListener("click", () => {
    shownWanted += PAGE;
    scheduleRefresh(0);
  });

  syncFilterControls();
  scheduleRefresh(0);
  connect();
})();
