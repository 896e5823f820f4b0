// darkroom's editor dialogs: one shell (a title, a body that scrolls, a footer whose Close is always in
// view), code blocks, and darkroom's JSON API from the editor's page (same origin, the browser's session).

const EDITOR_PREFIX = "/editor/";
export const root = () =>
  location.origin + location.pathname.slice(0, Math.max(0, location.pathname.indexOf(EDITOR_PREFIX)));

export const DIALOG_ID = "darkroom-dialog";

// An element with properties (className, textContent, ...), data-* from `data`, and children.
export function el(tag, props = {}, ...children) {
  const { data = {}, ...rest } = props;
  const node = Object.assign(document.createElement(tag), rest);
  for (const [key, value] of Object.entries(data)) node.dataset[key] = value;
  node.append(...children.filter((child) => child !== null && child !== undefined));
  return node;
}

// darkroom's JSON answer, or an Error carrying the status and the server's detail.
export async function api(path, options = {}) {
  const init = { credentials: "same-origin", ...options };
  if (options.json !== undefined) {
    init.method = init.method ?? "POST";
    init.headers = { "Content-Type": "application/json" };
    init.body = JSON.stringify(options.json);
  }
  const response = await fetch(root() + path, init);
  const body = await response.json().catch(() => ({ detail: response.statusText }));
  if (!response.ok) throw Object.assign(new Error(detailText(body.detail)), { status: response.status, body });
  return body;
}

export function detailText(detail) {
  if (!Array.isArray(detail)) return String(detail);
  return detail.map((problem) => problem.msg).join("; ");
}

// The server's 422 problems as a list, each naming its node where it has one.
export function problemList(body) {
  const problems = Array.isArray(body?.detail) ? body.detail : [{ msg: String(body?.detail), loc: [] }];
  return el("ul", { className: "dr-problems" }, ...problems.map((problem) => {
    const node = (problem.loc || []).slice(2).join(".");
    return el("li", { textContent: (node ? `node ${node}: ` : "") + problem.msg });
  }));
}

const STYLE = `
.dr-overlay{position:fixed;inset:0;z-index:10000;display:flex;align-items:center;justify-content:center;
  padding:12px;box-sizing:border-box;background:rgba(0,0,0,.5)}
.dr-card{display:flex;flex-direction:column;box-sizing:border-box;width:min(780px,100%);max-height:100%;min-width:0;
  background:var(--comfy-menu-bg,#222);color:var(--fg-color,#eee);border:1px solid var(--border-color,#444);
  border-radius:10px;font:14px/1.45 system-ui,sans-serif;box-shadow:0 10px 40px rgba(0,0,0,.5)}
.dr-card h2{margin:0;padding:16px 18px 8px;font-size:18px;overflow-wrap:anywhere}
.dr-body{flex:1 1 auto;min-height:0;overflow:auto;padding:0 18px 8px;overflow-wrap:anywhere}
.dr-foot{flex:none;display:flex;flex-wrap:wrap;gap:8px;justify-content:flex-end;padding:10px 18px 14px;
  border-top:1px solid var(--border-color,#444)}
.dr-card pre{white-space:pre-wrap;overflow-wrap:anywhere;word-break:break-word;max-width:100%;box-sizing:border-box;
  background:rgba(127,127,127,.15);padding:10px;border-radius:6px;margin:6px 0 0;font-size:12.5px}
.dr-card code{overflow-wrap:anywhere}
.dr-card p{margin:8px 0}
.dr-card button,.dr-card select{font:inherit;padding:5px 12px;border-radius:6px;border:1px solid var(--border-color,#555);
  background:var(--comfy-input-bg,#333);color:inherit;cursor:pointer}
.dr-card button.dr-primary{background:#3b5bdb;border-color:#3b5bdb;color:#fff}
.dr-card button:disabled{opacity:.45;cursor:not-allowed}
.dr-card input[type=text],.dr-card input[type=search]{width:100%;box-sizing:border-box;padding:8px 10px;font:inherit;
  border-radius:6px;border:1px solid var(--border-color,#555);background:var(--comfy-input-bg,#333);color:inherit}
.dr-card input[aria-invalid=true]{border-color:#ff8787}
.dr-card label{display:block;margin:4px 0}
.dr-hint{font-size:13px;opacity:.85}
.dr-ok{color:#8ce99a}.dr-bad{color:#ff8787}
.dr-list{list-style:none;margin:8px 0;padding:0}
.dr-item{display:flex;flex-wrap:wrap;gap:4px 8px;align-items:center;padding:7px 9px;border-radius:6px;cursor:pointer;
  border:1px solid transparent}
.dr-item:hover{background:rgba(127,127,127,.12)}
.dr-item[aria-selected=true]{border-color:#5c7cfa;background:rgba(92,124,250,.18)}
.dr-item strong{flex:1 1 220px;min-width:0;overflow-wrap:anywhere}
.dr-badge{font-size:12px;padding:1px 8px;border-radius:10px;background:rgba(127,127,127,.25);white-space:nowrap}
.dr-badge.dr-bad{background:rgba(255,107,107,.22);color:inherit}
.dr-table{width:100%;border-collapse:collapse;font-size:13px;margin:6px 0}
.dr-table th,.dr-table td{text-align:left;padding:4px 6px;border-bottom:1px solid var(--border-color,#444);
  vertical-align:top;overflow-wrap:break-word}
@media (max-width:560px){.dr-table thead{display:none}.dr-table tr{display:block;padding:6px 0;
  border-bottom:1px solid var(--border-color,#444)}.dr-table td{display:block;border:0;padding:1px 4px}
  .dr-table td[data-label]::before{content:attr(data-label) ": ";opacity:.7}}
.dr-problems{margin:6px 0;padding-left:20px}
#darkroom-endpoint-notice{position:fixed;top:100px;left:50%;transform:translateX(-50%);z-index:1001;
  max-width:min(640px,calc(100vw - 24px));box-sizing:border-box;padding:8px 14px;border-radius:8px;
  background:#862e2e;color:#fff;font:14px/1.4 system-ui,sans-serif;box-shadow:0 4px 16px rgba(0,0,0,.4)}
`;

function addStyle() {
  if (document.getElementById("darkroom-dialog-style")) return;
  document.head.append(el("style", { id: "darkroom-dialog-style", textContent: STYLE }));
}

// Opens the dialog (replacing any open one): `body` nodes scroll, `actions` buttons sit beside Close.
export function showDialog(title, body, actions = []) {
  addStyle();
  document.getElementById(DIALOG_ID)?.remove();
  const heading = el("h2", { id: `${DIALOG_ID}-title`, textContent: title });
  const close = el("button", { textContent: "Close", type: "button", data: { close: "" } });
  const content = el("div", { className: "dr-body" }, ...body);
  const card = el("div", { className: "dr-card" }, heading, content, el("div", { className: "dr-foot" }, ...actions, close));
  const overlay = el("div", { id: DIALOG_ID, className: "dr-overlay" }, card);
  overlay.setAttribute("role", "dialog");
  overlay.setAttribute("aria-modal", "true");
  overlay.setAttribute("aria-labelledby", heading.id);
  const dismiss = () => overlay.remove();
  close.onclick = dismiss;
  overlay.addEventListener("click", (event) => event.target === overlay && dismiss());
  // Keys typed here are the dialog's, not the canvas's shortcuts.
  overlay.addEventListener("keydown", (event) => {
    if (event.key === "Escape") dismiss();
    event.stopPropagation();
  });
  document.body.append(overlay);
  return { overlay, heading, content, close };
}

export function codeBlock(label, text) {
  const copy = el("button", { textContent: "Copy", type: "button" });
  copy.onclick = () => navigator.clipboard?.writeText(text);
  const head = el("div", { style: "display:flex;justify-content:space-between;align-items:center;margin-top:10px" },
    el("strong", { textContent: label }), copy);
  return el("div", {}, head, el("pre", { textContent: text, data: { snippet: label } }));
}
