// fal's JS client, unmodified, pointed at darkroom with requestMiddleware (fal-api.md section 1).
// Usage: node sdk_check.mjs <https base> <scenario>; prints one line "RESULT <json>".
// Trust for the self-signed certificate comes from NODE_EXTRA_CA_CERTS; the key from FAL_KEY.
import { createHash } from "node:crypto";
import { ApiError, ValidationError, fal } from "@fal-ai/client";

const [base, scenario] = process.argv.slice(2);
const HOSTS = [
  ["https://queue.fal.run/", `${base}/queue/`],
  ["https://fal.run/", `${base}/run/`],
  ["https://rest.fal.ai/", `${base}/`],
];

fal.config({
  requestMiddleware: async (request) => {
    for (const [from, to] of HOSTS) {
      if (request.url.startsWith(from)) return { ...request, url: to + request.url.slice(from.length) };
    }
    if (!request.url.startsWith(base)) throw new Error(`refusing to call ${request.url}`);
    return request;
  },
});

const APP = "darkroom/demo-flux-2";

async function apiError(call) {
  try {
    await call();
  } catch (error) {
    if (!(error instanceof ApiError)) throw error;
    return {
      status: error.status,
      kind: error instanceof ValidationError ? "ValidationError" : "ApiError",
      body: error.body,
      requestId: error.requestId ?? null,
    };
  }
  throw new Error("expected an ApiError");
}

const scenarios = {
  async run() {
    const input = { prompt: "a red cube", seed: 8, image_size: { width: 48, height: 64 } };
    const { data, requestId } = await fal.run(APP, { input });
    return { data, requestId };
  },
  async errors() {
    return {
      invalid: await apiError(() => fal.run(APP, { input: { prompt: "x", num_inference_steps: 500 } })),
      unknown: await apiError(() => fal.run("darkroom/no-such-app", { input: { prompt: "x" } })),
    };
  },
  async edit() {
    // fal-ai/flux-2/edit's and fal-ai/z-image/turbo's twins with an image uploaded through the client's
    // storage (argv: its path).
    const { readFile } = await import("node:fs/promises");
    const image = new File([await readFile(process.argv[4])], "tall.png", { type: "image/png" });
    const url = await fal.storage.upload(image);
    const input = { prompt: "make it blue", seed: 4, image_urls: [url] };
    const { data, requestId } = await fal.run("darkroom/demo-flux-2-edit", { input });
    // fal-ai/z-image/turbo's twins: text-to-image, and image-to-image from the same upload.
    const z = { prompt: "a fox", seed: 6, num_inference_steps: 2 };
    const turbo = await fal.run("darkroom/demo-z-image-turbo", { input: { ...z, image_size: { width: 64, height: 48 } } });
    const i2i = await fal.run("darkroom/demo-z-image-turbo-i2i", { input: { ...z, image_url: url } });
    return { data, requestId, zImage: { turbo: turbo.data, i2i: i2i.data } };
  },
  async upload() {
    const blob = new Blob(["hello from js"], { type: "text/plain" });
    return { url: await fal.storage.upload(blob) };
  },
  async uploadBig() {
    // Just over the client's own 90 MB threshold: initiate-multipart, 10 MB parts, then complete.
    const size = 90 * 1024 * 1024 + 4099;
    const bytes = new Uint8Array(size);
    for (let i = 0; i < size; i += 65536) crypto.getRandomValues(bytes.subarray(i, i + 65536));
    const sha256 = createHash("sha256").update(bytes).digest("hex");
    const url = await fal.storage.upload(new File([bytes], "big.bin", { type: "application/octet-stream" }));
    return { url, sha256, size };
  },
  async subscribe() {
    const updates = [];
    const { data, requestId } = await fal.subscribe(APP, {
      input: { prompt: "js queue", seed: 9 },
      logs: true,
      pollInterval: 100,
      onQueueUpdate: (update) => updates.push(update.status),
    });
    return { data, requestId, updates };
  },
  async stream() {
    const stream = await fal.stream(APP, { input: { prompt: "js stream", seed: 10 } });
    const events = [];
    for await (const event of stream) events.push(event);
    return { events, done: await stream.done() };
  },
};

const result = await scenarios[scenario]();
console.log(`RESULT ${JSON.stringify(result)}`);
