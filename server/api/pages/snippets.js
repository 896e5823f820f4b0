// The same request as curl, Python (fal_client) and JavaScript (@fal-ai/client), each runnable as shown
// against this server. Shared by the playground and the editor's "Publish to darkroom" dialog, which
// loads it from /static/snippets.js. `root` is the server's origin (and path prefix, if any). Over https
// each says how to trust a self-signed certificate (the server's cert.pem): curl's --cacert, Python's
// SSL_CERT_FILE, Node's NODE_EXTRA_CA_CERTS.

// A JSON value as a Python literal (True/False/None; JSON's string escapes are valid Python).
function python(value, indent = "") {
  const inner = indent + "    ";
  if (value === null || value === undefined) return "None";
  if (value === true) return "True";
  if (value === false) return "False";
  if (typeof value !== "object") return JSON.stringify(value);
  const items = Array.isArray(value)
    ? value.map((v) => python(v, inner))
    : Object.entries(value).map(([k, v]) => `${JSON.stringify(k)}: ${python(v, inner)}`);
  if (items.length === 0) return Array.isArray(value) ? "[]" : "{}";
  const [open, close] = Array.isArray(value) ? ["[", "]"] : ["{", "}"];
  return `${open}\n${items.map((item) => inner + item).join(",\n")},\n${indent}${close}`;
}

// A string as one shell word in single quotes.
const shellQuote = (text) => `'${text.replace(/'/g, `'\\''`)}'`;

export function snippets(root, appId, args) {
  const host = new URL(root).host + new URL(root).pathname.replace(/\/$/, "");
  const json = JSON.stringify(args, null, 2);
  const tls = new URL(root).protocol === "https:";
  const trust = (how) => (tls ? `${how} (only for a self-signed certificate: the server's cert.pem)\n` : "");
  return {
    curl:
      trust("# add --cacert cert.pem") +
      `curl -X POST ${root}/run/${appId} \\\n  -H "Authorization: Key $FAL_KEY" -H "Content-Type: application/json" \\\n` +
      `  -d ${shellQuote(JSON.stringify(args))}`,
    python:
      `# FAL_KEY=<key> FAL_RUN_HOST=${host}/run FAL_QUEUE_RUN_HOST=${host}/queue python app.py\n` +
      trust("# and SSL_CERT_FILE=cert.pem") +
      `import fal_client\n\nresult = fal_client.subscribe("${appId}", arguments=${python(args)})\nprint(result)`,
    javascript:
      `// FAL_KEY=<key> node app.mjs\n` +
      trust("// and NODE_EXTRA_CA_CERTS=cert.pem") +
      `import { fal } from "@fal-ai/client";\n\n` +
      `// Send fal's hosts to darkroom (see darkroom's README: requestMiddleware).\n` +
      `const HOSTS = [["https://queue.fal.run/", "${root}/queue/"], ["https://fal.run/", "${root}/run/"], ["https://rest.fal.ai/", "${root}/"]];\n` +
      `fal.config({\n  requestMiddleware: async (request) => {\n` +
      `    const [from, to] = HOSTS.find(([from]) => request.url.startsWith(from)) ?? ["", ""];\n` +
      `    return { ...request, url: to + request.url.slice(from.length) };\n  },\n});\n` +
      `const result = await fal.subscribe("${appId}", { input: ${json} });\nconsole.log(JSON.stringify(result.data));`,
  };
}
