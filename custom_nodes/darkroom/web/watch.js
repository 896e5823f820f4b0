// A tab whose workflow is a published endpoint (opened from the list or published from here: the graph's
// extra.darkroom says which) tells when that endpoint is gone. The network check runs when a workflow is
// opened or published, on focus and every 15 s; a notice that is not the open tab's goes at once.
import { app } from "../../scripts/app.js";
import { api, el } from "./dialog.js";

const NOTICE = "darkroom-endpoint-notice";
const mark = () => app.graph?.extra?.darkroom;

function stale() {
  const notice = document.getElementById(NOTICE);
  if (notice && (!mark()?.published || notice.dataset.appId !== mark().app_id)) notice.remove();
}

// Whether the open tab's endpoint is still published (null: the tab is not a published endpoint).
export async function checkEndpoint() {
  const current = mark();
  stale();
  if (!current?.published) return null;
  const { workflows } = await api("/workflows");
  const live = workflows.some((w) => w.name === current.app_id);
  if (live || mark() !== current) {
    document.getElementById(NOTICE)?.remove();
    return live;
  }
  const text = `${current.app_id} is no longer published: its endpoint was unpublished. Publish this workflow to serve it again (as version 1).`;
  document.getElementById(NOTICE)?.remove();
  document.body.append(el("div", { id: NOTICE, role: "status", textContent: text, data: { appId: current.app_id } }));
  return false;
}

const quiet = (promise) => promise.catch((error) => console.warn("darkroom:", error.message));
export const checkQuietly = () => quiet(checkEndpoint());

export function watchEndpoints() {
  setInterval(stale, 1000);
  setInterval(() => !document.hidden && checkQuietly(), 15_000);
  window.addEventListener("focus", checkQuietly);
}
