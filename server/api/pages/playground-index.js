const h = (tag, attrs = {}, ...children) => {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) k === "class" ? (node.className = v) : node.setAttribute(k, v);
  node.append(...children.flat().map((c) => (c instanceof Node ? c : document.createTextNode(c ?? ""))));
  return node;
};
const list = document.getElementById("endpoints");
const response = await fetch("/endpoints", { credentials: "same-origin" });
const body = await response.json();
if (!response.ok) {
  list.replaceChildren(h("p", { class: "bad" }, String(body.detail)));
} else {
  list.replaceChildren(...body.endpoints.map((e) => {
    const missing = e.models.filter((m) => !m.present);
    return h("a", { class: "endpoint", href: `/playground/${e.app_id}`, "data-app": e.app_id },
      h("h3", {}, e.app_id),
      h("span", { class: "badge muted" }, e.output === "video" ? "video" : "images"), " ",
      e.published ? h("span", { class: "badge muted" }, "published") : "", " ",
      h("span", { class: `badge ${e.ready ? "ok" : "bad"}` }, e.ready ? "models present" : `${missing.length} model file(s) missing`),
      missing.length ? h("ul", {}, missing.map((m) => h("li", {}, m.file, m.fetch ? [" — ", h("code", {}, m.fetch)] : ""))) : "");
  }));
}
document.getElementById("filter").addEventListener("input", (event) => {
  const needle = event.target.value.toLowerCase();
  for (const card of list.children) card.hidden = !card.dataset.app.toLowerCase().includes(needle);
});
