// The hub's spawn page: GPUs free now and, per GPU count, where a request would stand in the
// GPU queue and how long it would wait (api/estimate.js, loaded just before this script, sets
// window.labgpu.estimate); the GPU choice in the form gets the same words, so the estimate is
// beside each choice before Start.
(function () {
  "use strict";
  const box = document.getElementById("labgpu-spawn");
  if (!box) return;
  const out = document.getElementById("labgpu-spawn-estimates");
  const loaded = window.labgpu && window.labgpu.estimate;
  (loaded ? Promise.resolve(loaded) : Promise.reject(new Error("api/estimate.js did not load")))
    .then((estimate) => {
      out.replaceChildren();
      const head = document.createElement("strong");
      head.id = "labgpu-free-now";
      head.textContent = `${estimate.free} GPU${estimate.free === 1 ? "" : "s"} free now` +
        (estimate.waiting ? `, ${estimate.waiting} spawn${estimate.waiting === 1 ? "" : "s"} waiting.` : ".");
      out.appendChild(head);
      const list = document.createElement("ul");
      list.className = "mb-0";
      for (const choice of estimate.choices) {
        const item = document.createElement("li");
        item.dataset.gpus = choice.gpus;
        item.textContent = choice.text;
        list.appendChild(item);
      }
      out.appendChild(list);
      const byCount = new Map(estimate.choices.map((c) => [String(c.gpus), c]));
      for (const option of document.querySelectorAll('select[name="gpus"] option, input[name="gpus"][type="radio"]')) {
        const choice = byCount.get(option.value);
        if (!choice) continue;
        const note = choice.starts_now ? "free now" : `#${choice.position} in queue, ${choice.estimated_wait_s === null ? "wait unknown" : "~" + Math.max(1, Math.round(choice.estimated_wait_s / 60)) + " min"}`;
        if (option.tagName === "OPTION") option.textContent = option.textContent.replace(/ — .*$/, "") + " — " + note;
        else if (option.labels && option.labels[0]) option.labels[0].append(" — " + note);
      }
    })
    .catch(() => { out.textContent = "(free GPUs and wait estimates unavailable)"; });
})();
