// The usage page: /usage per day (a bar plot of GPU-seconds), per endpoint (cost per output next to
// fal's list price) and per key. A key that is not an admin sees its own usage; the server leaves the
// nav links its role may not open out of the page (server/api/page_nav.py).
const h = (tag, attrs = {}, ...children) => {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) k === "class" ? (node.className = v) : node.setAttribute(k, v);
  node.append(...children.flat().map((c) => (c instanceof Node ? c : document.createTextNode(c ?? ""))));
  return node;
};
const SVG = "http://www.w3.org/2000/svg";
const svg = (tag, attrs) => Object.entries(attrs).reduce((n, [k, v]) => (n.setAttribute(k, v), n), document.createElementNS(SVG, tag));
const table = (heads, rows) => (rows.length ? h("table", {}, h("tr", {}, heads.map((x) => h("th", {}, x))), rows) : h("div", { class: "empty" }, "no usage yet"));
const fill = (id, content) => document.querySelector(`#${id} .body`).replaceChildren(content);
const usd = (n) => (n == null ? "—" : "$" + (n < 0.01 ? n.toFixed(5) : n.toFixed(2)));
const num = (n, digits = 1) => (n == null ? "—" : Number(n).toFixed(digits));

async function get(query) {
  const response = await fetch(`/usage?${query}`, { credentials: "same-origin" });
  if (!response.ok) throw new Error(`/usage answered ${response.status}`);
  return response.json();
}

function plot(rows) {
  const width = 600, height = 200, head = 18, top = Math.max(...rows.map((r) => r.gpu_s), 1e-9);
  const chart = svg("svg", { viewBox: `0 ${-head} ${width} ${height + head + 20}`, role: "img", "aria-label": "GPU-seconds per day" });
  const step = width / Math.max(rows.length, 1);
  rows.forEach((r, i) => {
    const bar = (r.gpu_s / top) * height;
    chart.append(svg("rect", { x: i * step + 2, y: height - bar, width: Math.max(step - 4, 1), height: bar, "data-day": r.day }));
    chart.append(Object.assign(svg("text", { x: i * step + 2, y: height + 14 }), { textContent: r.day.slice(5) }));
  });
  chart.append(Object.assign(svg("text", { x: 4, y: -6 }), { textContent: `highest: ${num(top, 2)} GPU-s` }));
  fill("plot", rows.length ? chart : h("div", { class: "empty" }, "no usage yet"));
}

// Cost per output unit here and on fal, for the endpoints fal_prices lists.
function endpoints(body) {
  let saving = 0;
  fill("endpoints", table(["endpoint", "requests", "failed", "GPU-s", "megapixels", "video s", "cost", "cost / unit", "fal / unit", "saving"],
    body.rows.map((r) => {
      const fal = body.fal_prices[r.endpoint];
      const units = fal ? ({ megapixel: r.megapixels, "video second": r.video_s }[fal.per] ?? 0) : 0;
      const falCost = fal && units ? fal.usd * units : null;
      if (falCost != null) saving += falCost - r.cost_usd;
      return h("tr", { "data-endpoint": r.endpoint }, h("td", {}, r.endpoint), h("td", {}, String(r.requests)), h("td", {}, String(r.failed)),
        h("td", {}, num(r.gpu_s, 2)), h("td", {}, num(r.megapixels, 3)), h("td", {}, num(r.video_s, 2)), h("td", { class: "cost" }, usd(r.cost_usd)),
        h("td", {}, units ? usd(r.cost_usd / units) + ` / ${fal.per}` : "—"),
        h("td", {}, fal ? h("a", { href: fal.source, title: `seen ${fal.as_of}${fal.note ? ": " + fal.note : ""}`, rel: "noreferrer" }, `${usd(fal.usd)} / ${fal.per}`) : "—"),
        h("td", {}, falCost == null ? "—" : usd(falCost - r.cost_usd)));
    })));
  const prices = Object.entries(body.gpu_hourly_usd).map(([k, v]) => `${k === "*" ? "any device" : k} $${v}/h`).join(", ");
  document.getElementById("saving").textContent = `At ${prices || "no price set (DARKROOM_GPU_HOURLY_USD)"}: `
    + `saving against fal's list prices this month ${usd(saving)}, on the endpoints fal's table lists. `
    + "Cost counts measured worker seconds only; idle workers are not counted.";
}

function keys(body) {
  fill("keys", table(["key", "requests", "failed", "GPU-s", "cost"], body.rows.map((r) =>
    h("tr", { "data-key": r.key }, h("td", {}, r.key), h("td", {}, String(r.requests)), h("td", {}, String(r.failed)),
      h("td", {}, num(r.gpu_s, 2)), h("td", {}, usd(r.cost_usd))))));
}

async function load() {
  const [days, perEndpoint, perKey] = await Promise.all([get("group_by=day"), get("group_by=endpoint"), get("group_by=key")]);
  plot(days.rows);
  endpoints(perEndpoint);
  keys(perKey);
  document.getElementById("live").textContent = `${days.key ?? "every key"} · ${new Date().toLocaleTimeString()}`;
}

load().catch((e) => { document.getElementById("live").textContent = String(e); });
