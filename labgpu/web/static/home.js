// The hub's home page: each server's GPUs (or its place in the GPU queue) beside it, and my
// limits, from the labgpu web service's api/me.js (loaded just before this script; it sets
// window.labgpu.me: a fetch() from a /hub/ page could not carry the service's XSRF token).
(function () {
  "use strict";
  const box = document.getElementById("labgpu-home");
  if (!box) return;
  function minutes(s) { return s === null ? "unknown" : "about " + Math.max(1, Math.round(s / 60)) + " min"; }
  function describe(server) {
    if (server.queue) {
      return `#${server.queue.position} in the GPU queue for ${server.queue.gpus} GPU${server.queue.gpus === 1 ? "" : "s"}, ` +
        `wait ${minutes(server.queue.estimated_wait_s)}`;
    }
    const n = server.gpus.length;
    return `${n} GPU${n === 1 ? "" : "s"} (${server.gpus.join(", ")}) since ${(server.since || "").slice(11, 16)} UTC`;
  }
  function badge(text, cls) {
    const span = document.createElement("span");
    span.className = "badge ms-2 " + cls;
    span.textContent = text;
    return span;
  }
  const loaded = window.labgpu && window.labgpu.me;
  (loaded ? Promise.resolve(loaded) : Promise.reject(new Error("api/me.js did not load")))
    .then((me) => {
      const list = document.getElementById("labgpu-home-servers");
      list.replaceChildren();
      if (!me.servers.length) list.textContent = "None of your servers holds or waits for GPUs.";
      for (const server of me.servers) {
        const line = document.createElement("div");
        line.className = "labgpu-home-server";
        line.dataset.server = server.name;
        const name = document.createElement("strong");
        name.textContent = server.name || "My Server";
        line.append(name, ": " + describe(server));
        list.appendChild(line);
        const cls = server.queue ? "bg-warning text-dark" : "bg-primary";
        const text = server.queue ? `queued #${server.queue.position}` : `${server.gpus.length} GPU${server.gpus.length === 1 ? "" : "s"}`;
        const row = server.name ? document.querySelector(`tr.home-server-row[data-server-name="${CSS.escape(server.name)}"] td`) : document.getElementById("start");
        if (row) (server.name ? row : row.parentElement).appendChild(badge(text, cls));
      }
      if (me.limits) document.getElementById("labgpu-home-limits").textContent = "My limits: " + me.limits.text + ".";
    })
    .catch(() => { document.getElementById("labgpu-home-servers").textContent = "(GPU information unavailable)"; });
})();
