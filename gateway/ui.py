"""The read-only live placement page served at /ui."""

UI_HTML = """<!doctype html>
<html><head><meta charset="utf-8"><title>modelyard placement</title>
<style>
body{font:14px system-ui,sans-serif;margin:1.5em;background:#fafafa;color:#222}
h1{font-size:1.3em} .b{display:inline-block;vertical-align:top;margin:0 1em 1em 0;padding:.8em;
background:#fff;border:1px solid #ddd;border-radius:6px;min-width:16em}
.bad{border-color:#c33} table{border-collapse:collapse} td{padding:1px 8px 1px 0}
.ready{color:#161} .loading{color:#a60} .unloading{color:#888} .failed{color:#c33}
</style></head><body>
<h1>modelyard placement <small id="t"></small></h1><div id="out">loading...</div>
<script>
const token = new URLSearchParams(location.search).get("token") || "";
function age(s){ if(!s) return "never"; const d = Date.now()/1000 - s;
  return d < 60 ? d.toFixed(1)+" s" : (d/60).toFixed(1)+" min"; }
async function tick(){
  try {
    const r = await fetch("/admin/placement", {headers: {Authorization: "Bearer " + token}});
    if (!r.ok) { document.getElementById("out").textContent = "HTTP " + r.status; return; }
    const data = await r.json(); let html = "";
    for (const [id, b] of Object.entries(data.backends)) {
      html += `<div class="b ${b.healthy ? "" : "bad"}"><b>${id}</b> (${b.kind}) ` +
        `${b.healthy ? "healthy" : "UNHEALTHY"}${b.draining ? ", draining" : ""}<br>` +
        `${b.used.models} / ${b.capacity.models} models<table>`;
      for (const m of b.models) html += `<tr><td class="${m.state}">${m.name}</td><td>${m.state}</td>` +
        `<td>idle ${age(m.last_used)}</td></tr>`;
      html += "</table></div>";
    }
    document.getElementById("out").innerHTML = html || "no backends registered";
    document.getElementById("t").textContent = new Date().toLocaleTimeString();
  } catch (e) { document.getElementById("out").textContent = String(e); }
}
tick(); setInterval(tick, 1000);
</script></body></html>
"""
