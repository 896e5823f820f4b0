const h = (tag, attrs = {}, ...children) => {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) k === "class" ? (node.className = v) : node.setAttribute(k, v);
  node.append(...children.flat().map((c) => (c instanceof Node ? c : document.createTextNode(c ?? ""))));
  return node;
};
const bytes = (n) => (n == null ? "" : n >= 2 ** 30 ? (n / 2 ** 30).toFixed(1) + " GiB" : n >= 2 ** 20 ? (n / 2 ** 20).toFixed(1) + " MiB" : (n / 1024).toFixed(1) + " KiB");
const table = (heads, rows) => (rows.length ? h("table", {}, h("tr", {}, heads.map((x) => h("th", {}, x))), rows) : h("div", { class: "empty" }, "none"));
const fill = (id, content) => document.querySelector(`#${id} .body`).replaceChildren(content);

async function cancel(id) {
  await fetch(`/dashboard/requests/${encodeURIComponent(id)}/cancel`, { method: "POST", credentials: "same-origin" });
}

// What ComfyUI keeps loaded on a worker: one line per model, its files (or class) and bytes on the device.
const loaded = (models) => (models == null ? h("span", { class: "muted" }, "unknown")
  : models.length === 0 ? "none" : models.map((m) => h("div", {}, h("code", {}, (m.files || [m.class]).join(" + ")),
    h("span", { class: "muted" }, ` ${m.kind ?? ""} ${bytes(m.loaded_bytes)}`))));

function render(state) {
  fill("queue", table(["request", "endpoint", "status", "age", "position", ""], state.queue.map((r) =>
    h("tr", { "data-request": r.request_id }, h("td", {}, h("code", {}, r.request_id.slice(0, 8))), h("td", {}, r.endpoint),
      h("td", { class: r.status === "IN_PROGRESS" ? "ok" : "" }, r.status === "IN_PROGRESS" ? `running ${r.running_s}s` : "waiting"),
      h("td", {}, `${r.age_s}s`), h("td", {}, r.position ?? ""),
      h("td", {}, Object.assign(h("button", { class: "danger" }, "Cancel"), { onclick: () => cancel(r.request_id) }))))));
  fill("workers", table(["worker", "state", "device", "GPU memory", "models loaded", "last ran", "restarts", "speed"], state.workers.map((w) => [
    h("tr", { "data-worker": w.id }, h("td", {}, `#${w.id}`), h("td", { class: w.state === "ready" ? "ok" : "warn" }, w.state + (w.busy ? " (busy)" : "")),
      h("td", {}, w.device ?? ""), h("td", {}, w.gpu_memory_total_bytes ? `${bytes(w.gpu_memory_used_bytes)} / ${bytes(w.gpu_memory_total_bytes)}` : "—"),
      h("td", { class: "loaded" }, loaded(w.loaded_models)), h("td", {}, w.last_endpoint ?? "—"), h("td", {}, String(w.restarts ?? 0)),
      h("td", { class: "speed" }, Object.entries(w.speed ?? {}).map(([k, v]) => `${k}: ${v}`).join("; "))),
    h("tr", {}, h("td", { colspan: 8 }, h("pre", {}, (w.log || []).join("\n")))),
  ]).flat()));
  fill("models", table(["model", "file", "size", "sha256", ""], state.models.map((m) =>
    h("tr", {}, h("td", {}, m.name), h("td", {}, h("code", {}, m.file)), h("td", {}, bytes(m.size_bytes)),
      h("td", { class: { verified: "ok", mismatch: "bad", missing: "bad", checking: "warn" }[m.sha256] || "muted" }, m.sha256),
      h("td", {}, m.present || !m.fetch ? "" : h("code", {}, m.fetch))))));
  fill("node-packs", table(["pack", "commit", "state", "nodes", "problems"], state.node_packs.map((p) =>
    h("tr", { "data-pack": p.name }, h("td", {}, p.name), h("td", {}, h("code", {}, p.commit.slice(0, 12))),
      h("td", { class: { ok: "ok", failed: "bad" }[p.state] || "warn" }, p.state), h("td", {}, p.nodes.join(", ")),
      h("td", {}, p.problems.join("; "))))));
  fill("failures", table(["request", "endpoint", "status", "error"], state.failures.map((f) =>
    h("tr", {}, h("td", {}, h("code", {}, f.request_id.slice(0, 8))), h("td", {}, f.endpoint),
      h("td", { class: "bad" }, String(f.status)), h("td", {}, f.error || f.error_type || "")))));
  document.getElementById("live").textContent = `live · ${new Date(state.now * 1000).toLocaleTimeString()}`;
}

const stream = new EventSource("/dashboard/events");
stream.onmessage = (event) => render(JSON.parse(event.data));
stream.onerror = () => { document.getElementById("live").textContent = "reconnecting…"; };
