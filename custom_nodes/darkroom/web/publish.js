// darkroom's editor extension: "Publish to darkroom" (Workflow menu and command palette).
// Sends the open workflow (UI and API format) to darkroom's POST /workflows with the browser's
// session, then shows the endpoint's URL with curl, Python (fal_client) and JS snippets (darkroom's own
// /static/snippets.js, which the playground uses too: the editor is served from darkroom's origin).
import { app } from "../../scripts/app.js";

const EDITOR_PREFIX = "/editor/";
const root = () => location.origin + location.pathname.slice(0, Math.max(0, location.pathname.indexOf(EDITOR_PREFIX)));
let lastName = "";

function exampleArguments(prompt) {
  const args = {};
  for (const node of Object.values(prompt)) {
    const inputs = node.inputs || {};
    if (!String(node.class_type).startsWith("DarkroomInput") || typeof inputs.field !== "string") continue;
    if (node.class_type === "DarkroomInputImage") args[inputs.field] = "https://example.com/image.png";
    else if (node.class_type === "DarkroomInputImageSize") args[inputs.field] = { width: inputs.width, height: inputs.height };
    else if (node.class_type === "DarkroomInputLoras") args[inputs.field] = [];
    else if (node.class_type !== "DarkroomInputSeed") args[inputs.field] = inputs.value;
  }
  return args;
}

function dialog(title, bodyNodes) {
  document.getElementById("darkroom-publish-dialog")?.remove();
  const overlay = document.createElement("div");
  overlay.id = "darkroom-publish-dialog";
  overlay.setAttribute("role", "dialog");
  overlay.style.cssText = "position:fixed;inset:0;z-index:10000;display:grid;place-items:center;background:rgba(0,0,0,.45)";
  const card = document.createElement("div");
  card.style.cssText = "background:var(--comfy-menu-bg,#222);color:var(--fg-color,#eee);border:1px solid var(--border-color,#444);" +
    "border-radius:10px;padding:20px;width:min(760px,92vw);max-height:88vh;overflow:auto;font:14px system-ui,sans-serif";
  const heading = document.createElement("h2");
  heading.textContent = title;
  heading.style.cssText = "margin:0 0 12px;font-size:18px";
  const close = document.createElement("button");
  close.textContent = "Close";
  close.onclick = () => overlay.remove();
  close.style.cssText = "margin-top:12px";
  card.append(heading, ...bodyNodes, close);
  overlay.append(card);
  overlay.addEventListener("click", (event) => event.target === overlay && overlay.remove());
  document.body.append(overlay);
  return overlay;
}

function codeBlock(label, text) {
  const wrap = document.createElement("div");
  const head = document.createElement("div");
  head.style.cssText = "display:flex;justify-content:space-between;align-items:center;margin-top:10px";
  const name = document.createElement("strong");
  name.textContent = label;
  const copy = document.createElement("button");
  copy.textContent = "Copy";
  copy.onclick = () => navigator.clipboard?.writeText(text);
  head.append(name, copy);
  const pre = document.createElement("pre");
  pre.dataset.snippet = label;
  pre.textContent = text;
  pre.style.cssText = "white-space:pre-wrap;background:rgba(127,127,127,.15);padding:10px;border-radius:6px;margin:6px 0 0";
  wrap.append(head, pre);
  return wrap;
}

export async function publish(name) {
  name = name ?? window.prompt("Publish this workflow to darkroom as (owner/name):", lastName || "me/my-workflow");
  if (!name) return null;
  lastName = name;
  const { workflow, output } = await app.graphToPrompt();
  const response = await fetch(`${root()}/workflows`, {
    method: "POST",
    credentials: "same-origin",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ name, workflow, prompt: output }),
  });
  const body = await response.json().catch(() => ({ detail: response.statusText }));
  if (response.status !== 201) {
    const problems = Array.isArray(body.detail) ? body.detail : [{ msg: String(body.detail), loc: [] }];
    const list = document.createElement("ul");
    for (const problem of problems) {
      const item = document.createElement("li");
      const node = (problem.loc || []).slice(2).join(".");
      item.textContent = (node ? `node ${node}: ` : "") + problem.msg;
      list.append(item);
    }
    dialog(`Not published (${response.status})`, [list]);
    return body;
  }
  const url = document.createElement("p");
  url.innerHTML = "Endpoint: <code data-endpoint></code> (version <span data-version></span>; pinned: <code data-pinned></code>)";
  url.querySelector("[data-endpoint]").textContent = body.urls.run;
  url.querySelector("[data-version]").textContent = body.version;
  url.querySelector("[data-pinned]").textContent = body.pinned_urls.run;
  const playground = Object.assign(document.createElement("a"), { href: `${root()}/playground/${body.name}`, target: "_blank", textContent: "Try it in the playground" });
  url.append(document.createElement("br"), playground);
  const { snippets } = await import(`${root()}/static/snippets.js`);
  const code = snippets(root(), body.name, exampleArguments(output));
  dialog(`Published ${body.app_id}`, [url, codeBlock("curl", code.curl), codeBlock("Python", code.python), codeBlock("JavaScript", code.javascript)]);
  return body;
}

// Any darkroom endpoint (built-in or published) as a workflow: change it, publish it under a new name.
export async function openEndpoint(appId) {
  appId = appId ?? window.prompt("Open which darkroom endpoint (e.g. darkroom/demo-flux-2)?", "darkroom/demo-flux-2");
  if (!appId) return null;
  const response = await fetch(`${root()}/endpoints/${appId}/workflow`, { credentials: "same-origin" });
  const body = await response.json();
  if (!response.ok) {
    dialog(`Cannot open ${appId} (${response.status})`, [Object.assign(document.createElement("p"), { textContent: String(body.detail) })]);
    return null;
  }
  await app.loadApiJson(body.prompt, appId);
  return body;
}

app.registerExtension({
  name: "darkroom.publish",
  commands: [
    { id: "darkroom.publish", label: "Publish to darkroom", icon: "pi pi-upload", function: () => publish() },
    { id: "darkroom.open", label: "Open a darkroom endpoint", icon: "pi pi-folder-open", function: () => openEndpoint() },
  ],
  menuCommands: [{ path: ["Workflow"], commands: ["darkroom.open", "darkroom.publish"] }],
  setup() {
    window.darkroom = { publish, openEndpoint };
  },
});
