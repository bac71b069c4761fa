"""The read-only live placement page served at /ui: one HTML document, inline CSS and JS, no framework.

Every `REFRESH_MS` it fetches `GET /admin/placement` (backends, their models most recently used first, states,
last use) and `GET /admin/stats` (this gateway's hits, misses, loads and evictions per minute, the latest loads
and evictions, and the server's clock, so idle ages don't depend on the browser's). The admin token comes from
`?token=` once, is kept in the tab's sessionStorage and removed from the address bar. Names are put in the page
as text nodes, never as HTML. Elements carry `data-backend`, `data-model` and `data-state` for tests.
"""

REFRESH_MS = 2000

UI_HTML = (
    """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>modelyard placement</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
:root{--bg:#f6f7f9;--card:#fff;--line:#dde1e6;--ink:#1d2329;--dim:#6b7480;--ok:#1a7f37;--warn:#b35900;--bad:#c62828}
*{box-sizing:border-box} body{font:14px/1.4 system-ui,-apple-system,Segoe UI,sans-serif;margin:0;background:var(--bg);
color:var(--ink)} header{display:flex;align-items:baseline;gap:1em;padding:.8em 1.2em;background:#20262e;color:#fff}
header h1{font-size:1.15em;margin:0} header .dim{color:#aab3bd} #status.err{color:#ff8a80;font-weight:600}
main{padding:1em 1.2em} .summary{display:flex;flex-wrap:wrap;gap:.6em;margin-bottom:1em}
.kpi{background:var(--card);border:1px solid var(--line);border-radius:6px;padding:.5em .8em;min-width:9em}
.kpi b{display:block;font-size:1.3em} .kpi span{color:var(--dim);font-size:.85em}
.grid{display:flex;flex-wrap:wrap;gap:1em;align-items:flex-start}
.card{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:.8em 1em;width:22em}
.card.unhealthy{border-color:var(--bad);box-shadow:0 0 0 1px var(--bad)} .card.draining{opacity:.75}
.card h2{font-size:1.05em;margin:0 0 .3em;display:flex;gap:.5em;align-items:center}
.pill{font-size:.75em;font-weight:600;border-radius:9px;padding:1px 7px;background:#e8f5e9;color:var(--ok)}
.pill.bad{background:#fdecea;color:var(--bad)} .pill.kind{background:#eef1f5;color:var(--dim)}
.pill.drain{background:#fff3e0;color:var(--warn)}
.bar{height:8px;background:#eef1f5;border-radius:4px;overflow:hidden;margin:.3em 0}
.bar i{display:block;height:100%;background:#3b82f6} .bar i.full{background:var(--warn)}
.meta{color:var(--dim);font-size:.85em;display:flex;justify-content:space-between;gap:.5em;flex-wrap:wrap}
.stats{display:grid;grid-template-columns:repeat(3,1fr);gap:.4em;margin:.5em 0 .2em;text-align:center}
.stats div{background:#f6f7f9;border-radius:5px;padding:.25em} .stats b{display:block;font-size:1.1em}
.stats span{color:var(--dim);font-size:.78em}
table{border-collapse:collapse;width:100%;margin-top:.5em;font-size:.9em}
th{text-align:left;color:var(--dim);font-weight:500;border-bottom:1px solid var(--line);padding:2px 4px}
td{padding:2px 4px;border-bottom:1px solid #f0f2f4} td.n{color:var(--dim);width:1.8em;text-align:right}
td.idle{text-align:right;white-space:nowrap;font-variant-numeric:tabular-nums}
.s-ready{color:var(--ok)} .s-loading{color:var(--warn)} .s-unloading{color:var(--dim)} .s-failed{color:var(--bad)}
tr.lru td{background:#fffbe6} .empty{color:var(--dim);font-style:italic;padding:.4em 0}
section.activity{margin-top:1.2em} section.activity h3{font-size:1em;margin:.2em 0}
ul.events{list-style:none;padding:0;margin:0;font-size:.9em} ul.events li{padding:1px 0}
ul.events .t{color:var(--dim);font-variant-numeric:tabular-nums;margin-right:.6em}
.hot{color:var(--bad);font-weight:600} .note{color:var(--dim);font-size:.85em;margin:.8em 0 0}
.banner{background:#fdecea;border:1px solid #f5c2c0;color:#8e1b1b;border-radius:6px;padding:.5em .8em;margin-bottom:1em}
.banner:empty{display:none}
</style></head><body>
<header><h1>modelyard placement</h1><span class="dim" id="gw"></span><span id="status" class="dim">loading...</span>
</header>
<main>
<div class="summary" id="summary"></div>
<div class="banner" id="banner"></div>
<div class="grid" id="backends"></div>
<p class="note">Models most recently used first. Highlighted: the least recently used ready copy of a full backend,
the next to be evicted when a cold model needs room (unless it is pinned or busy).</p>
<section class="activity"><h3>Recent loads and evictions (this gateway)</h3><ul class="events" id="events"></ul>
</section>
</main>
<script>
"use strict";
const REFRESH_MS = """
    + str(REFRESH_MS)
    + """;
const params = new URLSearchParams(location.search);
if (params.has("token")) {
  sessionStorage.setItem("modelyard-token", params.get("token"));
  params.delete("token");
  history.replaceState(null, "", location.pathname + (params.toString() ? "?" + params : ""));
}
const token = sessionStorage.getItem("modelyard-token") || "";

function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined) continue;
    if (k === "class") e.className = v; else e.setAttribute(k, v);
  }
  for (const k of kids) if (k !== null && k !== undefined) e.append(k instanceof Node ? k : String(k));
  return e;
}
function age(seconds) {
  if (seconds === null || seconds === undefined) return "never used";
  const s = Math.max(0, seconds);
  if (s < 60) return s.toFixed(s < 10 ? 1 : 0) + " s";
  if (s < 3600) return (s / 60).toFixed(1) + " min";
  if (s < 86400) return (s / 3600).toFixed(1) + " h";
  return (s / 86400).toFixed(1) + " d";
}
function pct(x) { return x === null || x === undefined ? "n/a" : (100 * x).toFixed(1) + " %"; }
function rate(x) { return (x || 0).toFixed(x >= 10 ? 0 : 1); }
function kpi(value, label, cls) {
  return el("div", {class: "kpi"}, el("b", {class: cls || null}, value), el("span", {}, label));
}
async function getJSON(path) {
  const r = await fetch(path, {headers: {Authorization: "Bearer " + token}, cache: "no-store"});
  if (!r.ok) {
    let why = "HTTP " + r.status;
    try { why += ": " + (await r.json()).error; } catch (e) {}
    throw new Error(why);
  }
  return r.json();
}

function render(placement, stats) {
  const now = stats.now, win = stats.window_seconds;
  const backends = Object.entries(placement.backends);
  let used = 0, cap = 0;
  const grid = el("div", {class: "grid", id: "backends"});
  for (const [id, b] of backends) {
    used += b.used.models; cap += b.capacity.models;
    const st = (stats.backends || {})[id] || {};
    const full = b.used.models >= b.capacity.models;
    const card = el("div", {class: "card" + (b.healthy ? "" : " unhealthy") + (b.draining ? " draining" : ""),
                            "data-backend": id});
    card.append(el("h2", {}, id, el("span", {class: "pill kind"}, b.kind),
      b.healthy ? el("span", {class: "pill"}, "healthy") : el("span", {class: "pill bad"}, "UNHEALTHY"),
      b.draining ? el("span", {class: "pill drain"}, "draining") : null));
    const bar = el("div", {class: "bar"}, el("i", {class: full ? "full" : "",
      style: "width:" + Math.min(100, 100 * b.used.models / Math.max(1, b.capacity.models)) + "%"}));
    let capText = b.used.models + " / " + b.capacity.models + " models";
    if (b.capacity.memory_bytes) capText += " \\u00b7 " + (b.used.memory_bytes / 2 ** 30).toFixed(2) + " / " +
      (b.capacity.memory_bytes / 2 ** 30).toFixed(2) + " GiB";
    card.append(el("div", {class: "meta"}, el("span", {"data-capacity": ""}, capText)), bar);
    const stat = (key, value, label, hot) =>
      el("div", {}, el("b", {"data-stat": key, class: hot ? "hot" : null}, value), el("span", {}, label));
    card.append(el("div", {class: "stats"},
      stat("hit_ratio", pct(st.hit_ratio), "hit ratio"),
      stat("loads_per_minute", rate(st.loads_per_minute), "loads / min"),
      stat("evictions_per_minute", rate(st.evictions_per_minute), "evictions / min", st.evictions_per_minute > 0)));
    if (!b.models.length) {
      card.append(el("div", {class: "empty"}, "no models"));
    } else {
      const table = el("table", {}, el("tr", {}, el("th", {}, "#"), el("th", {}, "model"), el("th", {}, "state"),
                                          el("th", {style: "text-align:right"}, "idle"),
                                          el("th", {style: "text-align:right"}, "score")));
      // Most recently used first; the last ready row is the next to go when room is needed (unless pinned).
      // With a policy score (the eviction policy's; higher is kept longer), the lowest ready one goes first.
      let lru = -1;
      b.models.forEach((m, i) => { if (m.state === "ready") lru = i; });
      b.models.forEach((m, i) => {
        if (m.state === "ready" && m.score != null && m.score < b.models[lru].score) lru = i;
      });
      b.models.forEach((m, i) => {
        table.append(el("tr", {class: i === lru && full ? "lru" : null, "data-model": m.name, "data-state": m.state},
          el("td", {class: "n"}, i + 1), el("td", {}, m.name),
          el("td", {class: "s-" + m.state}, m.state),
          el("td", {class: "idle"}, m.last_used ? age(now - m.last_used) : "never used"),
          el("td", {class: "idle", "data-score": ""}, m.score == null ? "" : m.score.toPrecision(4))));
      });
      card.append(table);
    }
    grid.append(card);
  }
  if (!backends.length) grid.append(el("div", {class: "empty"}, "no backends registered"));
  document.getElementById("backends").replaceWith(grid);

  const all = stats.all || {};
  const summary = el("div", {class: "summary", id: "summary"},
    kpi(used + " / " + cap, "models loaded / capacity"),
    kpi(stats.models_registered, "models registered"),
    kpi(pct(all.hit_ratio), "hit ratio (last " + Math.round(win) + " s)"),
    kpi(rate(all.loads_per_minute), "loads / min"),
    kpi(rate(all.evictions_per_minute), "evictions / min", all.evictions_per_minute > 0 ? "hot" : null),
    kpi(rate(all.load_failures_per_minute), "failed loads / min", all.load_failures_per_minute > 0 ? "hot" : null));
  document.getElementById("summary").replaceWith(summary);

  // Thrashing: most recent evictions took copies idle for less than a minute.
  const evictions = (stats.recent || []).filter(e => e.kind === "eviction");
  const quick = evictions.filter(e => e.idle_seconds < 60).length;
  document.getElementById("banner").textContent = evictions.length >= 4 && quick * 2 > evictions.length ?
    "Thrashing: " + quick + " of the last " + evictions.length + " evictions took a copy idle for less than a " +
    "minute. The models in use don't fit the capacity: add backends or capacity, or pin the busiest models." : "";

  const events = el("ul", {class: "events", id: "events"});
  for (const e of stats.recent || []) {
    const when = el("span", {class: "t"}, new Date(e.t * 1000).toLocaleTimeString());
    let text;
    if (e.kind === "eviction") {
      text = el("span", {class: e.idle_seconds < 60 ? "hot" : null},
                "evicted " + e.model + " from " + e.backend + " after " + age(e.idle_seconds) + " idle");
    } else if (e.kind === "load") {
      text = "loaded " + e.model + " on " + e.backend + " in " + age(e.seconds);
    } else {
      text = el("span", {class: "hot"}, "load of " + e.model + " on " + e.backend + " FAILED");
    }
    events.append(el("li", {"data-event": e.kind}, when, text));
  }
  if (!events.children.length) events.append(el("li", {class: "empty"}, "none yet"));
  document.getElementById("events").replaceWith(events);
}

let failures = 0;
async function tick() {
  const status = document.getElementById("status");
  try {
    const [placement, stats] = await Promise.all([getJSON("/admin/placement"), getJSON("/admin/stats")]);
    render(placement, stats);
    failures = 0;
    status.className = "dim";
    status.textContent = "updated " + new Date().toLocaleTimeString() + " \\u00b7 every " + REFRESH_MS / 1000 + " s";
  } catch (e) {
    failures += 1;
    status.className = "err";
    status.textContent = "STALE: " + e.message + " (retrying)";
  } finally {
    setTimeout(tick, failures ? Math.min(10000, REFRESH_MS * 2 ** failures) : REFRESH_MS);
  }
}
document.getElementById("gw").textContent = location.host;
tick();
</script></body></html>
"""
)
