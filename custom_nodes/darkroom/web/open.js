// "Open a darkroom endpoint": a searchable list of this server's endpoints (built-in and published, with
// their versions, output kind and whether their model files are here), and the opened workflow laid
// out: the request fields' input nodes in a "Request fields" group beside the nodes they feed (required
// ones first), in view.
import { app } from "../../scripts/app.js";
import { api, el, showDialog } from "./dialog.js";
import { apiFace } from "./inputs.js";
import { checkQuietly } from "./watch.js";

export const GROUP_TITLE = "Request fields";
const GAP = 40; // between nodes and columns (canvas units)
const PAD = 20; // inside the group

const isInput = (node) => String(node.type).startsWith("DarkroomInput");

// Every endpoint a client can call, with the published ones' version counts.
export async function endpointList() {
  const [{ endpoints }, { workflows }] = await Promise.all([api("/endpoints"), api("/workflows")]);
  const versions = new Map(workflows.map((w) => [w.name, w.versions]));
  return endpoints.map((e) => ({ ...e, versions: versions.get(e.app_id) ?? 0 }));
}

function badges(entry) {
  const missing = entry.models.filter((m) => !m.present);
  const models = missing.length
    ? el("span", { className: "dr-badge dr-bad", textContent: `${missing.length} model file${missing.length > 1 ? "s" : ""} missing`,
      title: missing.map((m) => `${m.name}${m.fetch ? `: ${m.fetch}` : ""}`).join("\n") })
    : el("span", { className: "dr-badge", textContent: entry.models.length ? "models here" : "no model files" });
  const origin = entry.published
    ? `published · ${entry.versions} version${entry.versions === 1 ? "" : "s"}`
    : "built-in";
  return [el("span", { className: "dr-badge", textContent: origin }),
    el("span", { className: "dr-badge", textContent: entry.output }), models];
}

// The words a search matches against.
const haystack = (e) =>
  `${e.app_id} ${e.output} ${e.published ? "published" : "built-in builtin"} ${e.ready ? "ready" : "missing"}`.toLowerCase();

export async function chooseEndpoint() {
  const search = el("input", { type: "search", id: "darkroom-open-search", placeholder: "Search: a name, image, video, published, missing…",
    autocomplete: "off", spellcheck: false });
  search.setAttribute("aria-label", "Search endpoints");
  const count = el("p", { className: "dr-hint", id: "darkroom-open-count" });
  const list = el("ul", { className: "dr-list", id: "darkroom-open-list", role: "listbox" });
  const { overlay } = showDialog("Open a darkroom endpoint", [
    el("p", { className: "dr-hint", textContent: "Its workflow opens in a new tab, its request fields as input nodes: change it, run it, publish it under your own name." }),
    search, count, list,
  ]);
  let entries;
  try {
    entries = await endpointList();
  } catch (error) {
    list.replaceWith(el("p", { className: "dr-bad", textContent: `Cannot list the endpoints: ${error.message}` }));
    return null;
  }
  let shown = [];
  let selected = 0;
  const open = (entry, version) => {
    overlay.remove();
    return openEndpoint(version ? `${entry.app_id}@${version}` : entry.app_id);
  };
  const row = (entry, index) => {
    const item = el("li", { className: "dr-item", role: "option", data: { appId: entry.app_id } },
      el("strong", { textContent: entry.app_id }), ...badges(entry));
    if (entry.versions > 1) {
      const pick = el("select", { data: { versions: "" } },
        el("option", { value: "", textContent: `latest (v${entry.versions})` }),
        ...Array.from({ length: entry.versions }, (_, i) => el("option", { value: String(entry.versions - i), textContent: `v${entry.versions - i}` })));
      pick.setAttribute("aria-label", `Version of ${entry.app_id}`);
      pick.addEventListener("click", (event) => event.stopPropagation());
      pick.addEventListener("change", () => open(entry, pick.value));
      item.append(pick);
    }
    item.setAttribute("aria-selected", String(index === selected));
    item.onclick = () => open(entry);
    return item;
  };
  const render = () => {
    const words = search.value.toLowerCase().split(/\s+/).filter(Boolean);
    shown = entries.filter((e) => words.every((w) => haystack(e).includes(w)));
    selected = Math.min(selected, Math.max(0, shown.length - 1));
    list.replaceChildren(...shown.map(row));
    count.textContent = shown.length
      ? `${shown.length} of ${entries.length} endpoints${shown.length > 1 ? " (↑/↓ choose, Enter opens)" : ""}`
      : `No endpoint matches “${search.value}”: try a shorter part of a name, or image, video, published, missing.`;
  };
  search.addEventListener("input", () => { selected = 0; render(); });
  search.addEventListener("keydown", (event) => {
    if (event.key === "ArrowDown" || event.key === "ArrowUp") {
      selected = (selected + (event.key === "ArrowDown" ? 1 : -1) + shown.length) % Math.max(1, shown.length);
      render();
      list.children[selected]?.scrollIntoView({ block: "nearest" });
      event.preventDefault();
    } else if (event.key === "Enter" && shown[selected]) {
      open(shown[selected]);
    }
  });
  render();
  search.focus();
  return { overlay, entries };
}

// Any darkroom endpoint (built-in or published; `name@n` for one version) as a workflow in a new tab.
export async function openEndpoint(appId) {
  let body;
  try {
    body = await api(`/endpoints/${appId}/workflow`);
  } catch (error) {
    showDialog(`Cannot open ${appId}`, [el("p", { textContent: error.message })]);
    return null;
  }
  // The tab's title keeps the owner ("/" cannot be in a workflow's file name).
  await app.loadApiJson(body.prompt, body.app_id.replace("/", " · "));
  app.graph.extra.darkroom = { app_id: body.name, published: body.published, version: body.version ?? null };
  const group = arrangeRequestFields(app.graph);
  if (group) frame(group);
  app.graph.setDirtyCanvas(true, true);
  app.extensionManager.workflow?.activeWorkflow?.changeTracker?.checkState?.();
  checkQuietly();
  return body;
}

const linkOf = (graph, id) => (graph.getLink ? graph.getLink(id) : graph.links[id]);

// The nodes an input node's outputs feed.
function fedBy(graph, node) {
  const ids = (node.outputs || []).flatMap((o) => o.links || []);
  return ids.map((id) => linkOf(graph, id)).filter(Boolean).map((l) => graph.getNodeById(l.target_id)).filter(Boolean);
}

// Input nodes in a "Request fields" group just left of the leftmost node they feed (nodes from there on
// move right to make room), ordered by where what they feed sits; returns the group (null: no inputs).
export function arrangeRequestFields(graph) {
  const inputs = graph._nodes.filter(isInput);
  if (!inputs.length) return null;
  for (const old of (graph._groups || []).filter((g) => g.title === GROUP_TITLE)) graph.remove(old);
  const others = graph._nodes.filter((n) => !isInput(n));
  const fed = new Map(inputs.map((n) => [n, fedBy(graph, n)]));
  const targets = [...new Set([...fed.values()].flat())];
  const anchor = (targets.length ? targets : others.length ? others : inputs);
  const left = Math.min(...anchor.map((n) => n.pos[0]));
  const top = Math.min(...anchor.map((n) => n.pos[1]));
  // Required fields first, then by where what they feed sits.
  const key = (n) => {
    const first = fed.get(n)[0];
    return [apiFace(n)?.required ? 0 : 1, ...(first ? [first.pos[1], first.pos[0]] : [Infinity, 0])];
  };
  inputs.sort((a, b) => key(a)[0] - key(b)[0] || key(a)[1] - key(b)[1] || key(a)[2] - key(b)[2] || a.id - b.id);

  const columns = inputs.length > 4 ? 2 : 1;
  const width = Math.max(...inputs.map((n) => n.size[0]));
  const groupWidth = columns * width + (columns - 1) * GAP + 2 * PAD;
  const before = others.filter((n) => n.pos[0] < left);
  const start = before.length ? Math.max(...before.map((n) => n.pos[0] + n.size[0])) + GAP : left - GAP - groupWidth;
  const shift = start + groupWidth + GAP - left;
  if (shift > 0) for (const n of others) if (n.pos[0] >= left) n.pos[0] += shift;

  const title = LiteGraph.NODE_TITLE_HEIGHT; // a node's title bar sits above its pos; the group's too
  let y = top + title + PAD;
  for (let i = 0; i < inputs.length; i += columns) {
    const row = inputs.slice(i, i + columns);
    row.forEach((n, c) => { n.pos[0] = start + PAD + c * (width + GAP); n.pos[1] = y + title; });
    y += title + Math.max(...row.map((n) => n.size[1])) + GAP;
  }
  const group = new LiteGraph.LGraphGroup(GROUP_TITLE);
  graph.add(group);
  group.pos = [start, top];
  group.size = [groupWidth, y - GAP + PAD - top];
  return group;
}

// The view on the group: its top left in view (clear of the side bar and tabs), at a readable scale.
export function frame(group) {
  const canvas = app.canvas;
  const [[x, y], [w, h]] = [group.pos, group.size];
  const [marginLeft, marginTop] = [70, 104];
  const [width, height] = [canvas.canvas.clientWidth - marginLeft - 24, canvas.canvas.clientHeight - marginTop - 60];
  // Below 0.6 ComfyUI draws nodes without their text: fit what fits at a scale that stays readable.
  const scale = Math.min(1, Math.max(0.65, Math.min(width / w, height / h)));
  canvas.ds.scale = scale;
  canvas.ds.offset[0] = marginLeft / scale - x;
  canvas.ds.offset[1] = marginTop / scale - y;
  canvas.setDirty(true, true);
}
