// darkroom's editor extension: "Publish to darkroom" and "Open a darkroom endpoint" (Workflow menu,
// keybindings, Settings > Keybinding). Publish opens a dialog that checks the name as it is typed
// against the server's pattern, says whether it is a new endpoint or a new version, and lists the request
// fields the input nodes will expose (the server's own reading of them, POST /workflows/check); then it
// sends the workflow (UI and API format) to POST /workflows and shows the endpoint's URL with curl,
// Python (fal_client) and JS snippets (darkroom's /static/snippets.js, the playground's too).
// A tab whose endpoint was unpublished says so (watch.js). A first visit opens the endpoint list, not
// ComfyUI's template browser.
import { app } from "../../scripts/app.js";
import { api, codeBlock, el, problemList, root, showDialog } from "./dialog.js";
import { chooseEndpoint, openEndpoint } from "./open.js";
import { checkEndpoint, checkQuietly, watchEndpoints } from "./watch.js";
import "./inputs.js";

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

// What a name would publish as: { ok, kind: "new" | "version" | "invalid" | "taken", text }.
export function nameVerdict(name, { pattern, reserved, published, builtin }) {
  if (!name) return { ok: false, kind: "invalid", text: "Type a name: owner/name, e.g. me/lighthouse." };
  if (!pattern.test(name)) {
    return { ok: false, kind: "invalid", text: `Not a name darkroom takes: owner/name in lower case (owner: a-z, 0-9, - ; name: a-z, 0-9, -, ., _; the owners ${reserved.join(" and ")} are reserved).` };
  }
  const clash = builtin.find((id) => name === id || id.startsWith(`${name}/`) || name.startsWith(`${id}/`));
  if (clash) return { ok: false, kind: "taken", text: `${clash} is a built-in endpoint: pick another name.` };
  const versions = published.get(name);
  if (versions) {
    return { ok: true, kind: "version", text: `New version of ${name}: version ${versions + 1} (it has ${versions}); ${name} will serve it, ${name}@${versions} stays as it is.` };
  }
  return { ok: true, kind: "new", text: `New endpoint ${name} (version 1).` };
}

function bounds(field) {
  const parts = [];
  if (field.ge !== undefined && field.le !== undefined) parts.push(`${field.ge} to ${field.le}`);
  else if (field.ge !== undefined) parts.push(`at least ${field.ge}`);
  else if (field.le !== undefined) parts.push(`at most ${field.le}`);
  if (field.multiple_of > 1) parts.push(`multiple of ${field.multiple_of}`);
  if (field.min_length) parts.push(`at least ${field.min_length} character${field.min_length > 1 ? "s" : ""}`);
  if (field.max_length !== undefined) parts.push(`${field.type === "loras" ? "up to" : "at most"} ${field.max_length}${field.type === "loras" ? "" : " characters"}`);
  if (field.choices) parts.push(`one of ${field.choices.join(", ")}`);
  return parts.join("; ");
}

function fieldTable(fields) {
  const head = el("tr", {}, ...["Field", "Type", "API default", "Bounds"].map((t) => el("th", { textContent: t })));
  const rows = fields.map((f) => el("tr", { data: { field: f.name } },
    el("td", {}, el("code", { textContent: f.name })),
    el("td", { textContent: f.type, data: { label: "Type" } }),
    el("td", { textContent: f.required ? "required (no default)" : f.default === null || f.default === undefined ? "none (random)" : JSON.stringify(f.default), data: { label: "API default" } }),
    el("td", { textContent: bounds(f), data: bounds(f) ? { label: "Bounds" } : {} })));
  return el("table", { className: "dr-table", id: "darkroom-publish-fields" }, el("thead", {}, head), el("tbody", {}, ...rows));
}

function suggestedName() {
  const mark = app.graph?.extra?.darkroom;
  if (lastName) return lastName;
  if (mark?.published) return mark.app_id;
  if (mark?.app_id) return `me/${mark.app_id.split("/").pop()}`;
  return "me/my-workflow";
}

// The Publish dialog: the name (checked as typed), new endpoint or version, the request fields.
export async function publishDialog() {
  const { workflow, output } = await app.graphToPrompt();
  const input = el("input", { type: "text", id: "darkroom-publish-name", value: suggestedName(), autocomplete: "off", spellcheck: false });
  const verdict = el("p", { className: "dr-hint", id: "darkroom-publish-verdict", role: "status" });
  const fields = el("div", { id: "darkroom-publish-check" }, el("p", { className: "dr-hint", textContent: "Reading the request fields…" }));
  const button = el("button", { type: "button", className: "dr-primary", textContent: "Publish", disabled: true, data: { publish: "" } });
  showDialog("Publish to darkroom", [
    el("label", { htmlFor: input.id, textContent: "Endpoint name (owner/name)" }), input, verdict,
    el("h3", { textContent: "Request fields", style: "margin:14px 0 0;font-size:15px" }), fields,
  ], [button]);
  let fieldsOk = false;
  let current = { ok: false };
  let names = { pattern: /$^/, reserved: [], published: new Map(), builtin: [] };
  const update = () => {
    current = nameVerdict(input.value.trim(), names);
    verdict.textContent = current.text;
    verdict.dataset.kind = current.kind;
    verdict.className = `dr-hint ${current.ok ? "dr-ok" : "dr-bad"}`;
    input.setAttribute("aria-invalid", String(!current.ok));
    button.disabled = !(current.ok && fieldsOk);
  };
  input.addEventListener("input", update);
  input.addEventListener("keydown", (event) => event.key === "Enter" && !button.disabled && button.click());
  button.onclick = () => publish(input.value.trim(), { workflow, output });
  try {
    const [listed, { endpoints }] = await Promise.all([api("/workflows"), api("/endpoints")]);
    names = { pattern: new RegExp(listed.name_pattern), reserved: listed.reserved_owners,
      published: new Map(listed.workflows.map((w) => [w.name, w.versions])),
      builtin: endpoints.filter((e) => !e.published).map((e) => e.app_id) };
  } catch (error) {
    verdict.textContent = `Cannot read the published names: ${error.message}`;
  }
  update();
  input.focus();
  input.select();
  try {
    const checked = await api("/workflows/check", { json: { prompt: output, workflow } });
    fieldsOk = true;
    fields.replaceChildren(
      el("p", { className: "dr-hint", textContent: `A request may send these fields (the endpoint answers ${checked.output === "video" ? "a video" : "images"}; sync_mode is always there too):` }),
      fieldTable(checked.fields));
  } catch (error) {
    fields.replaceChildren(el("p", { className: "dr-bad", textContent: "This workflow cannot be published yet:" }),
      error.body ? problemList(error.body) : el("p", { textContent: error.message }));
  }
  update();
}

// Publish as `name` (no questions: the dialog's button, or a script) and show the result.
export async function publish(name, graph) {
  if (!name) return publishDialog();
  lastName = name;
  const { workflow, output } = graph ?? (await app.graphToPrompt());
  let body;
  try {
    body = await api("/workflows", { json: { name, workflow, prompt: output } });
  } catch (error) {
    showDialog(`Not published (${error.status ?? "error"})`, [error.body ? problemList(error.body) : el("p", { textContent: error.message })]);
    return error.body ?? null;
  }
  app.graph.extra.darkroom = { app_id: body.name, published: true, version: body.version };
  const url = el("p", {}, "Endpoint: ", el("code", { textContent: body.urls.run, data: { endpoint: "" } }),
    ` (version ${body.version}; this version pinned: `, el("code", { textContent: body.pinned_urls.run }), ")");
  url.append(el("br"), el("a", { href: `${root()}/playground/${body.name}`, target: "_blank", textContent: "Try it in the playground" }));
  const { snippets } = await import(`${root()}/static/snippets.js`);
  const code = snippets(root(), body.name, exampleArguments(output));
  showDialog(`Published ${body.app_id}`, [url, codeBlock("curl", code.curl), codeBlock("Python", code.python), codeBlock("JavaScript", code.javascript)]);
  checkQuietly();
  return body;
}

let firstVisit = false;

app.registerExtension({
  name: "darkroom.publish",
  commands: [
    { id: "darkroom.publish", label: "Publish to darkroom", icon: "pi pi-upload", function: () => publishDialog() },
    { id: "darkroom.open", label: "Open a darkroom endpoint", icon: "pi pi-folder-open", function: () => chooseEndpoint() },
  ],
  menuCommands: [{ path: ["Workflow"], commands: ["darkroom.open", "darkroom.publish"] }],
  keybindings: [
    { combo: { key: "o", ctrl: true, alt: true }, commandId: "darkroom.open" },
    { combo: { key: "p", ctrl: true, alt: true }, commandId: "darkroom.publish" },
  ],
  async setup() {
    window.darkroom = { publish, publishDialog, openEndpoint, chooseEndpoint, checkEndpoint, nameVerdict };
    // A first visit: the endpoint list instead of ComfyUI's template browser (its templates need
    // models this server does not have); the templates stay on the side bar's Templates button.
    const settings = app.extensionManager.setting;
    if (!settings.get("Comfy.TutorialCompleted")) {
      firstVisit = true;
      await settings.set("Comfy.TutorialCompleted", true);
    }
    watchEndpoints();
  },
  afterConfigureGraph() {
    checkQuietly();
    if (firstVisit) {
      firstVisit = false;
      chooseEndpoint();
    }
  },
});
