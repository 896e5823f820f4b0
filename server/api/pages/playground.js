// The playground for one endpoint: a form built from GET /endpoints/{app_id}, run through darkroom's
// queue over the live-events socket (/ws, with a token minted from the browser session), showing
// progress, previews and logs, then the images or the video. Runs are kept in localStorage to compare.
import { snippets } from "/static/snippets.js";

const APP = decodeURIComponent(location.pathname.replace(/^\/playground\//, ""));
const HISTORY_KEY = `darkroom.playground.${APP}`;
const HISTORY_MAX = 50;
const $ = (selector) => document.querySelector(selector);

function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (v === true) node.setAttribute(k, "");
    else if (v !== false && v != null) node.setAttribute(k, v);
  }
  node.append(...children.flat().map((c) => (c instanceof Node ? c : document.createTextNode(c ?? ""))));
  return node;
}

async function api(path, init = {}) {
  const response = await fetch(path, { credentials: "same-origin", ...init });
  const body = await response.json().catch(() => ({ detail: response.statusText }));
  if (!response.ok) throw Object.assign(new Error(String(body.detail)), { status: response.status, body });
  return body;
}

// ---- widgets: one per field type; get() is undefined when the field is left to its default ----

const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);
const orUndefined = (text) => (text === "" ? undefined : text);

function numberInput(field, value) {
  const step = field.type === "integer" ? field.multiple_of ?? 1 : "any";
  return h("input", { type: "number", name: field.name, min: field.ge, max: field.le, step, value: value ?? "" });
}

function plain(field, input, read) {
  return { node: input, get: () => read(input), set: (v) => { input.value = v ?? ""; } };
}

const WIDGETS = {
  string(field) {
    const multiline = field.name.includes("prompt") || (field.max_length ?? 0) > 200;
    const input = multiline ? h("textarea", { name: field.name, rows: 3 }) : h("input", { name: field.name });
    input.value = field.default ?? "";
    return plain(field, input, (i) => (field.required ? i.value : orUndefined(i.value)));
  },
  integer: (field) => plain(field, numberInput(field, field.default), (i) => (i.value === "" ? undefined : Number(i.value))),
  number: (field) => plain(field, numberInput(field, field.default), (i) => (i.value === "" ? undefined : Number(i.value))),
  boolean(field) {
    const input = h("input", { type: "checkbox", name: field.name, checked: Boolean(field.default) });
    return { node: input, get: () => input.checked, set: (v) => { input.checked = Boolean(v); } };
  },
  enum: (field) => select(field, field.choices),
  sampler: (field) => select(field, field.choices),
  scheduler: (field) => select(field, field.choices),
  seed(field) {
    const input = h("input", { type: "number", name: field.name, min: 0, step: 1, placeholder: "random" });
    const dice = h("button", { type: "button", title: "A new random seed", onclick: () => { input.value = Math.floor(Math.random() * 2 ** 31); input.dispatchEvent(new Event("input", { bubbles: true })); } }, "new");
    const clear = h("button", { type: "button", title: "Random each run", onclick: () => { input.value = ""; input.dispatchEvent(new Event("input", { bubbles: true })); } }, "random");
    return { node: h("div", { class: "row" }, input, dice, clear), get: () => (input.value === "" ? undefined : Number(input.value)), set: (v) => { input.value = v ?? ""; } };
  },
  image_size(field) {
    const presets = Object.keys(field.presets);
    const choice = h("select", { name: field.name }, [...presets, "custom"].map((p) => h("option", { value: p }, p === "custom" ? "custom size" : field.presets[p] ? `${p} (${field.presets[p].width}×${field.presets[p].height})` : `${p} (the input image's size)`)));
    const width = h("input", { type: "number", "aria-label": "width", min: field.ge, max: field.le, step: field.multiple_of ?? 1 });
    const height = h("input", { type: "number", "aria-label": "height", min: field.ge, max: field.le, step: field.multiple_of ?? 1 });
    const custom = h("div", { class: "row" }, width, h("span", { class: "narrow" }, "×"), height);
    const set = (v) => {
      const isPreset = typeof v === "string";
      choice.value = isPreset ? v : "custom";
      const size = (isPreset ? field.presets[v] : v) ?? { width: 1024, height: 1024 };
      width.value = size.width; height.value = size.height;
      custom.hidden = isPreset;
    };
    choice.addEventListener("change", () => set(choice.value === "custom" ? { width: Number(width.value), height: Number(height.value) } : choice.value));
    set(field.default);
    return { node: h("div", {}, choice, custom), get: () => (choice.value === "custom" ? { width: Number(width.value), height: Number(height.value) } : choice.value), set };
  },
  image_url: (field) => mediaInput(field, "image"),
  video_url: (field) => mediaInput(field, "video"),
  audio_url: (field) => mediaInput(field, "audio"),
  image_urls(field) {
    const rows = h("div", {});
    let items = [];
    const add = h("button", { type: "button" }, "Add image");
    const read = () => items.map((item) => item.get() ?? "");
    const render = (values) => {
      items = values.map((value) => { const item = mediaInput({ ...field, required: false }, "image"); item.set(value); return item; });
      rows.replaceChildren(...items.map((item, index) => h("div", { class: "list-row" }, item.node,
        h("button", { type: "button", class: "danger", title: "Remove", onclick: () => { render(read().filter((_, i) => i !== index)); rows.dispatchEvent(new Event("input", { bubbles: true })); } }, "✕"))));
      add.disabled = items.length >= (field.max_length ?? 1);
    };
    add.addEventListener("click", () => render([...read(), ""]));
    render([""]);
    return { node: h("div", {}, rows, add), get: () => read().filter(Boolean), set: (v) => render(v?.length ? v : [""]) };
  },
  loras(field) {
    const editor = listEditor(field, { path: "", scale: 1 }, loraRow);
    const files = h("datalist", { id: "lora-files" }, (field.files ?? []).map((name) => h("option", { value: name })));
    return { ...editor, node: h("div", {}, editor.node, files) };
  },
  model_blend: (field) => listEditor(field, { model: "", weight: 1 }, blendRow),
  sigmas(field) {
    const input = h("input", { name: field.name, placeholder: "e.g. 1, 0.75, 0.5, 0.25, 0" });
    const get = () => (input.value.trim() === "" ? undefined : input.value.split(/[\s,]+/).filter(Boolean).map(Number));
    return { node: input, get, set: (v) => { input.value = (v ?? []).join(", "); } };
  },
  model_file: (field) => plain(field, h("input", { name: field.name, placeholder: "manifest name or file" }), (i) => orUndefined(i.value.trim())),
  // One of fal's structured inputs (a ControlNet, an IP-Adapter): a JSON object, sent parsed (text that is
  // not JSON is sent as it is, and the server's 422 says what it expected).
  object(field) {
    const input = h("textarea", { name: field.name, rows: 2, placeholder: "a JSON object" });
    const parse = (text) => { try { return JSON.parse(text); } catch { return text; } };
    const get = () => (input.value.trim() === "" ? undefined : parse(input.value));
    return { node: input, get, set: (v) => { input.value = v == null ? "" : typeof v === "string" ? v : JSON.stringify(v); } };
  },
};

function select(field, choices) {
  const input = h("select", { name: field.name }, (choices ?? []).map((c) => h("option", { value: c }, c)));
  input.value = field.default ?? choices?.[0] ?? "";
  return plain(field, input, (i) => i.value);
}

// An image, video or audio file by URL, file chooser or drag-and-drop; files go through darkroom's storage
// API (fal's); a preview shows what the URL holds (a thumbnail, or a player).
const MEDIA = {
  image: { noun: "an image", preview: () => h("img", { alt: "" }) },
  video: { noun: "a video", preview: () => h("video", { controls: true, muted: true, preload: "metadata" }) },
  audio: { noun: "an audio file", preview: () => h("audio", { controls: true, preload: "metadata" }) },
};

function mediaInput(field, kind) {
  const url = h("input", { type: "url", name: field.name, placeholder: `https://… or drop ${MEDIA[kind].noun} here` });
  const file = h("input", { type: "file", accept: `${kind}/*`, "aria-label": `${field.name} file` });
  const thumb = MEDIA[kind].preview();
  thumb.hidden = true;
  const note = h("div", { class: "help" });
  const drop = h("div", { class: "drop" }, h("div", { class: "row" }, url, file), note, thumb);
  const show = () => { thumb.hidden = !url.value; if (url.value) thumb.src = url.value; };
  const upload = async (picked) => {
    note.textContent = `uploading ${picked.name}…`;
    const task = uploadFile(picked).then((fileUrl) => { url.value = fileUrl; note.textContent = `uploaded ${picked.name}`; show(); url.dispatchEvent(new Event("input", { bubbles: true })); })
      .catch((error) => { note.textContent = `upload failed: ${error.message}`; });
    pendingUploads.add(task);
    await task;
    pendingUploads.delete(task);
  };
  file.addEventListener("change", () => file.files[0] && upload(file.files[0]));
  url.addEventListener("change", show);
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault(); drop.classList.remove("over");
    const picked = event.dataTransfer.files[0];
    if (picked) upload(picked);
    else if (event.dataTransfer.getData("text/uri-list")) { url.value = event.dataTransfer.getData("text/uri-list").split("\n")[0]; show(); }
  });
  return { node: drop, get: () => (field.required ? url.value.trim() : orUndefined(url.value.trim())), set: (v) => { url.value = v ?? ""; show(); } };
}

const pendingUploads = new Set();

async function uploadFile(file) {
  const target = await api("/storage/upload/initiate?storage_type=fal-cdn-v3", {
    method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ content_type: file.type || "application/octet-stream", file_name: file.name }),
  });
  const put = await fetch(target.upload_url, { method: "PUT", body: file, headers: { "Content-Type": file.type || "application/octet-stream" } });
  if (!put.ok) throw new Error(`${put.status} ${(await put.text()).slice(0, 200)}`);
  return target.file_url;
}

function loraRow(entry) {
  const path = h("input", { placeholder: "file, https URL or hf://owner/repo/file", value: entry.path ?? "", "aria-label": "LoRA path", list: "lora-files" });
  const scale = h("input", { type: "number", step: "any", min: -8, max: 8, value: entry.scale ?? 1, "aria-label": "scale", title: "scale" });
  const te = h("input", { type: "number", step: "any", min: -8, max: 8, value: entry.text_encoder_scale ?? "", placeholder: "= scale", "aria-label": "text encoder scale", title: "text encoder scale" });
  const expert = h("select", { "aria-label": "expert", title: "Wan A14B: which expert" }, ["both", "high", "low"].map((e) => h("option", { value: e }, e)));
  expert.value = entry.expert ?? "both";
  const read = () => ({ path: path.value.trim(), scale: Number(scale.value), ...(te.value === "" ? {} : { text_encoder_scale: Number(te.value) }), ...(expert.value === "both" ? {} : { expert: expert.value }) });
  return { nodes: [path, scale, te, expert], read };
}

function blendRow(entry) {
  const model = h("input", { placeholder: "manifest name or file", value: entry.model ?? "", "aria-label": "model" });
  const weight = h("input", { type: "number", step: "any", min: 0, value: entry.weight ?? 1, "aria-label": "weight" });
  return { nodes: [model, weight], read: () => ({ model: model.value.trim(), weight: Number(weight.value) }), blend: true };
}

function listEditor(field, blank, makeRow) {
  const rows = h("div", {});
  let entries = [];
  const add = h("button", { type: "button" }, `Add ${field.type === "loras" ? "LoRA" : "model"}`);
  const render = (values) => {
    entries = values.map((value) => makeRow(value));
    rows.replaceChildren(...entries.map((row, index) => h("div", { class: `list-row${row.blend ? " blend" : ""}` }, row.nodes,
      h("button", { type: "button", class: "danger", title: "Remove", onclick: () => { render(read().filter((_, i) => i !== index)); rows.dispatchEvent(new Event("input", { bubbles: true })); } }, "✕"))));
    add.disabled = field.max_length != null && entries.length >= field.max_length;
  };
  const read = () => entries.map((row) => row.read());
  add.addEventListener("click", () => { render([...read(), blank]); rows.dispatchEvent(new Event("input", { bubbles: true })); });
  render(field.default ?? []);
  return { node: h("div", {}, rows, add), get: () => (entries.length ? read() : field.default === null ? undefined : []), set: (v) => render(v ?? []) };
}

// ---- the form ----

const widgets = new Map();
let endpoint;

function fieldNode(field) {
  const widget = (WIDGETS[field.type] ?? WIDGETS.string)(field);
  widgets.set(field.name, { field, widget });
  const label = field.type === "boolean"
    ? h("label", { class: "check" }, widget.node, field.name)
    : h("label", {}, field.name, field.required ? " *" : "", h("span", { class: "type" }, describeBounds(field)));
  return h("div", { class: "field", "data-field": field.name }, label, field.type === "boolean" ? "" : widget.node,
    field.description ? h("div", { class: "help" }, field.description) : "", h("div", { class: "error", role: "alert" }));
}

function describeBounds(field) {
  const range = field.ge != null || field.le != null ? ` ${field.ge ?? "…"}–${field.le ?? "…"}` : "";
  return field.type === "image_size" || field.type === "seed" ? field.type : field.type + (["integer", "number"].includes(field.type) ? range : "");
}

// The request: every field whose value is not its default (required ones always).
function collect() {
  const args = {};
  for (const [name, { field, widget }] of widgets) {
    const value = widget.get();
    if (value === undefined || (!field.required && same(value, field.default))) continue;
    args[name] = value;
  }
  return args;
}

function fill(input) {
  for (const [name, { field, widget }] of widgets) widget.set(name in input ? input[name] : field.default);
  refreshCode();
}

function showErrors(detail) {
  clearErrors();
  const problems = Array.isArray(detail) ? detail : [{ loc: [], msg: String(detail) }];
  const loose = [];
  for (const problem of problems) {
    const [where, name, ...rest] = problem.loc ?? [];
    const holder = where === "body" && name != null ? document.querySelector(`.field[data-field="${CSS.escape(String(name))}"]`) : null;
    if (!holder) { loose.push(problem.msg); continue; }
    holder.classList.add("invalid");
    const error = holder.querySelector(".error");
    error.textContent = [error.textContent, (rest.length ? `${rest.join(".")}: ` : "") + problem.msg].filter(Boolean).join("; ");
    if (holder.closest("#advanced")) $("#advanced").open = true;
  }
  $("#form-error").textContent = loose.join("; ");
  document.querySelector(".field.invalid")?.scrollIntoView({ block: "center" });
}

function clearErrors() {
  for (const holder of document.querySelectorAll(".field.invalid")) holder.classList.remove("invalid");
  for (const error of document.querySelectorAll(".field .error")) error.textContent = "";
  $("#form-error").textContent = "";
}

// ---- code: the request as JSON and as snippets; the last result ----

let tab = "request";
let lastResult = null;

function refreshCode() {
  const args = collect();
  const code = snippets(location.origin, APP, args);
  $("#code").textContent = tab === "request" ? JSON.stringify(args, null, 2) : tab === "response" ? (lastResult ? JSON.stringify(lastResult, null, 2) : "No result yet.") : code[tab];
  $("#code").dataset.tab = tab;
}

// ---- running: the socket, events, cancel ----

let socket = null;
let active = null; // {requestId, cancelUrl, input, submitted}

async function openSocket() {
  if (socket && socket.readyState <= WebSocket.OPEN) return socket;
  const [owner, alias] = APP.split("/");
  const token = await api("/tokens/", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ allowed_apps: [`${owner}/${alias}`], token_expiration: 3600 }) });
  const opened = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws?fal_jwt_token=${encodeURIComponent(token)}`);
  await new Promise((resolve, reject) => { opened.onopen = resolve; opened.onerror = () => reject(new Error("could not open the live-events socket")); });
  opened.onmessage = (message) => onEvent(JSON.parse(message.data));
  opened.onclose = () => { if (socket === opened) socket = null; if (active?.requestId) setTimeout(resubscribe, 500); };
  socket = opened;
  return opened;
}

async function resubscribe() {
  if (!active?.requestId) return;
  try {
    (await openSocket()).send(JSON.stringify({ action: "subscribe", request_ids: [active.requestId] }));
  } catch (error) {
    setStatus(`reconnecting… (${error.message})`);
    setTimeout(resubscribe, 2000);
  }
}

function setStatus(text, kind = "muted") { const s = $("#status"); s.textContent = text; s.className = kind; }

async function run(event) {
  event.preventDefault();
  if (active) return;
  clearErrors();
  if (pendingUploads.size) { setStatus("waiting for uploads…"); await Promise.all(pendingUploads); }
  const input = collect();
  active = { requestId: null, input, startedAt: performance.now() };
  running(true);
  $("#result").replaceChildren(); $("#logs").textContent = ""; $("#preview").hidden = true;
  $("#progress").value = 0; $("#steps").textContent = "";
  setStatus("submitting…");
  try {
    (await openSocket()).send(JSON.stringify({ action: "submit", app_id: APP, input, ref: "run" }));
  } catch (error) {
    finish(); showErrors(error.body?.detail ?? error.message); setStatus("not submitted", "bad");
  }
}

function onEvent(event) {
  if (event.type === "error") {
    if (event.ref === "run" || event.request_id === active?.requestId) {
      showErrors(event.detail);
      setStatus(`${event.status_code}: not run${Array.isArray(event.detail) ? " (see the marked fields)" : ""}`, "bad");
      finish();
    }
    return;
  }
  if (!active) return;
  if (event.type === "submitted") {
    Object.assign(active, { requestId: event.request_id, cancelUrl: event.cancel_url });
    $("#output-card").dataset.request = event.request_id;
    $("#cancel").disabled = false;
    setStatus(`queued (position ${event.queue_position})`);
    return;
  }
  if (event.request_id !== active.requestId) return;
  if (event.type === "queued") setStatus(`queued (position ${event.position})`);
  else if (event.type === "started") { active.startedAt = performance.now(); setStatus("running", "ok"); }
  else if (event.type === "progress") {
    $("#progress").value = event.fraction;
    $("#steps").textContent = `${event.class_type ?? "node"} step ${event.step}/${event.total} · ${Math.round(event.fraction * 100)}%`;
    setStatus("running", "ok");
  } else if (event.type === "preview") {
    const preview = $("#preview");
    preview.src = `data:${event.content_type};base64,${event.image}`;
    preview.hidden = false;
  } else if (event.type === "log") {
    $("#logs").textContent += `${event.timestamp ?? ""} ${event.level ?? ""} ${event.message}\n`;
  } else if (event.type === "completed") {
    $("#progress").value = 1;
    $("#preview").hidden = true;
    lastResult = event.result;
    showResult(event.result);
    const seconds = event.result.timings?.inference ?? (performance.now() - active.startedAt) / 1000;
    setStatus(`done in ${seconds.toFixed(2)} s · seed ${event.result.seed}`, "ok");
    remember("completed", event.result);
    finish();
  } else if (event.type === "failed") {
    const cancelled = event.error_type === "request_cancelled";
    setStatus(cancelled ? "cancelled" : `failed (${event.status_code}): ${typeof event.detail === "string" ? event.detail : event.error ?? ""}`, cancelled ? "warn" : "bad");
    if (Array.isArray(event.detail)) showErrors(event.detail);
    lastResult = { detail: event.detail, error_type: event.error_type };
    remember(cancelled ? "cancelled" : "failed", null, event.error ?? event.detail);
    finish();
  }
}

function running(on) { $("#run").disabled = on; $("#cancel").disabled = !on || !active?.requestId; }
function finish() { active = null; running(false); refreshCode(); }

async function cancel() {
  if (!active?.cancelUrl) return;
  $("#cancel").disabled = true;
  const cancelling = active;
  setStatus("cancelling…", "warn");
  try {
    await api(new URL(cancelling.cancelUrl).pathname, { method: "PUT" });
  } catch (error) {
    if (active === cancelling) setStatus(`cancel refused: ${error.message}`, "bad");
  }
}

// ---- results ----

function media(result, { controls = true } = {}) {
  if (result?.video) return [h("video", { src: result.video.url, controls, loop: true, muted: true, autoplay: true, playsinline: true })];
  return (result?.images ?? (result?.image ? [result.image] : [])).map((image) => h("img", { src: image.url, alt: `${image.width}×${image.height}`, width: image.width, height: image.height }));
}

function showResult(result) {
  const files = result.video ? [result.video] : result.images ?? (result.image ? [result.image] : []);
  const shown = media(result);
  const box = result.video ? h("div", {}, shown) : h("div", { class: "gallery" }, shown.map((img, i) => h("figure", {}, img,
    h("figcaption", {}, `${files[i].width}×${files[i].height}`, h("a", { href: files[i].url, download: files[i].file_name }, "Download")))));
  for (const img of box.querySelectorAll("img")) img.addEventListener("click", () => { $("#viewer img").src = img.src; $("#viewer").showModal(); });
  if (result.video) box.append(h("p", {}, h("a", { href: result.video.url, download: result.video.file_name }, "Download video")));
  $("#result").replaceChildren(box);
}

// ---- history: this browser's runs, to compare side by side ----

const history = () => JSON.parse(localStorage.getItem(HISTORY_KEY) || "[]");
const selected = new Set();

function remember(status, result, error) {
  const entry = { id: active.requestId, at: Date.now(), status, input: active.input, seed: result?.seed, error: error == null ? null : String(error).slice(0, 300) };
  if (result) entry.result = JSON.parse(JSON.stringify(result, (k, v) => (typeof v === "string" && v.startsWith("data:") ? undefined : v)));
  localStorage.setItem(HISTORY_KEY, JSON.stringify([entry, ...history()].slice(0, HISTORY_MAX)));
  renderHistory();
}

const clip = (text, length = 40) => (text.length > length ? `${text.slice(0, length - 1)}…` : text);

function summary(entry) {
  const parts = Object.entries(entry.input).filter(([k]) => k !== "prompt" && k !== "seed").map(([k, v]) => `${k}=${clip(typeof v === "object" ? JSON.stringify(v) : String(v))}`);
  return [entry.seed != null ? `seed=${entry.seed}` : "", ...parts].filter(Boolean).join(" · ");
}

function renderHistory() {
  const entries = history();
  $("#history").replaceChildren(...(entries.length ? entries.map((entry) => h("div", { class: "run", "data-run": entry.id },
    entry.result ? media(entry.result, { controls: false }).slice(0, 1) : h("div", { class: entry.status === "failed" ? "bad" : "warn" }, entry.status),
    h("div", { class: "meta" }, new Date(entry.at).toLocaleTimeString(), " · ", entry.input.prompt ?? "", h("br"), summary(entry)),
    h("div", { class: "row" },
      h("label", { class: "check" }, h("input", { type: "checkbox", checked: selected.has(entry.id), onchange: (e) => { e.target.checked ? selected.add(entry.id) : selected.delete(entry.id); $("#compare-button").disabled = selected.size < 2; } }), "compare"),
      h("button", { type: "button", title: "Load this run's request (with its seed) into the form", onclick: () => fill({ ...entry.input, ...(entry.seed != null ? { seed: entry.seed } : {}) }) }, "Use"))))
    : [h("div", { class: "empty" }, "Runs you make here are kept in this browser.")]));
  $("#compare-button").disabled = selected.size < 2;
}

function compare() {
  const entries = history().filter((entry) => selected.has(entry.id));
  const inputs = entries.map((entry) => ({ ...entry.input, seed: entry.seed ?? entry.input.seed }));
  const names = [...new Set(inputs.flatMap(Object.keys))].filter((name) => inputs.some((input) => !same(input[name], inputs[0][name])));
  $("#compare").replaceChildren(h("h2", {}, "Side by side"), h("div", { class: "compare" }, entries.map((entry, i) => h("div", { "data-compared": entry.id },
    entry.result ? media(entry.result) : h("div", { class: "bad" }, entry.status),
    h("table", {}, names.map((name) => h("tr", {}, h("td", { class: "muted" }, name), h("td", {}, JSON.stringify(inputs[i][name]) ?? "default"))))))));
}

// ---- start ----

async function start() {
  try {
    endpoint = await api(`/endpoints/${APP}`);
  } catch (error) {
    $("#title").textContent = APP;
    $("#form-error").append(error.message, " ", h("a", { href: "/playground/" }, "All endpoints"));
    $("#run").disabled = true;
    return;
  }
  document.title = `darkroom: ${APP}`;
  $("#title").textContent = APP;
  const missing = endpoint.models.filter((m) => !m.present);
  $("#models").replaceChildren(missing.length
    ? h("span", { class: "bad" }, `Missing model files: ${missing.map((m) => m.file).join(", ")}. `, missing.filter((m) => m.fetch).map((m) => h("code", {}, m.fetch, " ")))
    : h("span", { class: "ok" }, `${endpoint.output === "video" ? "Video" : "Image"} endpoint · model files present`));
  $("#fields").replaceChildren(...endpoint.fields.filter((f) => !f.advanced).map(fieldNode));
  const advanced = endpoint.fields.filter((f) => f.advanced);
  $("#advanced-fields").replaceChildren(...advanced.map(fieldNode));
  $("#advanced").hidden = advanced.length === 0;
  refreshCode();
  renderHistory();
}

$("#form").addEventListener("submit", run);
$("#form").addEventListener("input", refreshCode);
$("#form").addEventListener("change", refreshCode);
$("#form").addEventListener("reset", (event) => { event.preventDefault(); fill({}); clearErrors(); });
$("#cancel").addEventListener("click", cancel);
$("#copy").addEventListener("click", () => navigator.clipboard?.writeText($("#code").textContent));
$("#compare-button").addEventListener("click", compare);
$("#clear-history").addEventListener("click", () => { localStorage.removeItem(HISTORY_KEY); selected.clear(); renderHistory(); $("#compare").replaceChildren(); });
for (const button of document.querySelectorAll(".tabs [data-tab]")) {
  button.addEventListener("click", () => {
    tab = button.dataset.tab;
    for (const other of document.querySelectorAll(".tabs [data-tab]")) other.setAttribute("aria-selected", String(other === button));
    refreshCode();
  });
}
start();
