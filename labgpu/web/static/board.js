// The GPU board updates itself: every 5 s it reads the same JSON API (api/gpus) and redraws the
// rows' holders, utilization, memory and sparklines, the queue and the reclaim warnings.
// Text goes in with textContent only (names come from users).
(function () {
  "use strict";
  const api = new URL("api/gpus", window.location.href.replace(/gpus([?#].*)?$/, "")).toString();
  const NS = "http://www.w3.org/2000/svg";
  const xsrf = (document.querySelector('meta[name="labgpu-xsrf"]') || {}).content || "";

  function el(tag, text, cls) {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = text;
    if (cls) e.className = cls;
    return e;
  }
  function gib(bytes) { return bytes === null ? "–" : (bytes / 1024 ** 3).toFixed(1) + " GiB"; }
  function stamp(iso) { return iso ? iso.slice(0, 16).replace("T", " ") + " UTC" : ""; }
  function spark(values, label) {
    const w = 120, h = 24, svg = document.createElementNS(NS, "svg");
    svg.setAttribute("class", "labgpu-spark"); svg.setAttribute("width", w); svg.setAttribute("height", h);
    svg.setAttribute("viewBox", `0 0 ${w} ${h}`); svg.setAttribute("role", "img"); svg.setAttribute("aria-label", label);
    const title = document.createElementNS(NS, "title"); title.textContent = label; svg.appendChild(title);
    const step = w / Math.max(1, values.length - 1);
    const pts = values.map((v, i) => v === null ? null : `${(i * step).toFixed(1)},${(h - 1 - (h - 2) * Math.min(v, 100) / 100).toFixed(1)}`).filter(Boolean);
    if (pts.length > 1) {
      const line = document.createElementNS(NS, "polyline");
      line.setAttribute("fill", "none"); line.setAttribute("stroke", "#0072B2"); line.setAttribute("stroke-width", "1.5");
      line.setAttribute("points", pts.join(" ")); svg.appendChild(line);
    }
    return svg;
  }
  function holder(cell, g) {
    cell.replaceChildren();
    if (g.held_by) {
      cell.appendChild(el("span", g.held_by.mine ? "you" : g.held_by.user, "badge labgpu-badge-held"));
      if (g.held_by.server) { cell.append(" "); cell.appendChild(el("small", g.held_by.server)); }
    } else if (g.free) {
      cell.appendChild(el("span", "free", "badge labgpu-badge-free"));
    } else { cell.textContent = "–"; }
  }
  function render(board) {
    document.getElementById("labgpu-free").textContent = board.free;
    document.getElementById("labgpu-updated").textContent = stamp(board.now);
    for (const g of board.gpus) {
      const row = document.querySelector(`#labgpu-gpus tr[data-uuid="${CSS.escape(g.uuid)}"]`);
      if (!row) { window.location.reload(); return; }  // the inventory changed
      row.classList.toggle("table-info", Boolean(g.held_by && g.held_by.mine));
      holder(row.querySelector(".holder"), g);
      row.querySelector(".since").textContent = g.held_by ? stamp(g.held_by.since) : "";
      row.querySelector(".util").textContent = g.util === null ? "–" : g.util + "%";
      row.querySelector(".memnow").textContent = gib(g.memory_used);
      row.querySelector(".spark").replaceChildren(spark(g.util_last_hour, `GPU ${g.label} utilization over the last hour`));
    }
    const body = document.querySelector("#labgpu-queue tbody");
    body.replaceChildren();
    if (!board.queue.length) {
      const tr = el("tr", null, "empty"), td = el("td", "Nobody is waiting."); td.colSpan = 7; tr.appendChild(td); body.appendChild(tr);
    }
    for (const q of board.queue) {
      const tr = el("tr", null, q.mine ? "table-info" : "");
      const wait = q.estimated_wait_s === null ? "unknown" : Math.max(1, Math.round(q.estimated_wait_s / 60)) + " min";
      for (const [text, cls] of [[q.position, "num"], [q.mine ? "you" : q.user], [q.server], [q.gpus, "num"],
                                 [q.waiting_for], [Math.floor(q.waited_s / 60) + " min", "num"], [wait, "num"]]) {
        tr.appendChild(el("td", text, cls));
      }
      body.appendChild(tr);
    }
    const warnings = document.getElementById("labgpu-warnings");
    warnings.replaceChildren();
    for (const w of board.reclaim_warnings) {
      const div = el("div", null, "alert " + (w.mine ? "alert-danger" : "alert-warning"));
      div.setAttribute("role", "alert"); div.dataset.user = w.user;
      if (w.mine) { div.appendChild(el("strong", `Your server ${w.server || "(default)"}`)); div.append(": " + w.message); }
      else { div.textContent = `${w.user}'s server (${w.gpus} GPU${w.gpus === 1 ? "" : "s"}) is idle and will be reclaimed at ${stamp(w.reclaim_at)}`; }
      warnings.appendChild(div);
    }
    document.body.dataset.labgpuPolled = String(Date.now());
  }
  async function poll() {
    try {
      // A fetch() is authenticated by the service's cookie only with its XSRF token (JupyterHub's rule).
      const r = await fetch(api, { credentials: "same-origin", headers: { Accept: "application/json", "X-XSRFToken": xsrf } });
      if (r.ok) render(await r.json());
    } catch (e) { /* the next poll tries again */ }
  }
  setInterval(poll, 5000);
})();
