// fal's JS realtime client, unmodified, against darkroom. It dials `wss://fal.run/...` itself (no
// middleware reaches the WebSocket), so this script wraps the global WebSocket to rewrite that one
// host to ours, as a DNS entry would; its token call goes through requestMiddleware like sdk_check.mjs.
// Usage: node --experimental-websocket realtime_check.mjs <https base>; prints one line "RESULT <json>".
import { fal } from "@fal-ai/client";

const [base] = process.argv.slice(2);
const FAL_WSS = "wss://fal.run/";
const Native = globalThis.WebSocket;
if (Native === undefined) throw new Error("no global WebSocket: run node >= 22 or pass --experimental-websocket");
const dialed = [];
globalThis.WebSocket = class extends Native {
  constructor(url, protocols) {
    const target = String(url);
    if (!target.startsWith(FAL_WSS)) throw new Error(`refusing to dial ${target}`);
    dialed.push(target.split("?")[0]);
    super(`${base.replace(/^https:/, "wss:")}/run/${target.slice(FAL_WSS.length)}`, protocols);
  }
};

fal.config({
  requestMiddleware: async (request) => {
    const REST = "https://rest.fal.ai/";
    if (request.url.startsWith(REST)) return { ...request, url: `${base}/${request.url.slice(REST.length)}` };
    if (!request.url.startsWith(base)) throw new Error(`refusing to call ${request.url}`);
    return request;
  },
});

// One bad input (an error that must not close the socket), then a good one; resolve on its result.
const outcome = await new Promise((resolve, reject) => {
  const errors = [];
  const timer = setTimeout(() => reject(new Error("no realtime result in 120 s")), 120_000);
  const connection = fal.realtime.connect("darkroom/demo-flux-2", {
    throttleInterval: 0,
    maxBuffering: 4,
    onResult(result) {
      clearTimeout(timer);
      connection.close();
      resolve({ result, errors, dialed });
    },
    onError(error) {
      errors.push({ status: error.status, message: error.message, body: error.body ?? null });
      if (errors.length === 1) {
        connection.send({ prompt: "js realtime", seed: 11, image_size: { width: 48, height: 32 }, request_id: "js-2" });
      }
    },
  });
  connection.send({ prompt: "x", num_inference_steps: 500, request_id: "js-1" });
});
console.log("RESULT " + JSON.stringify(outcome));
process.exit(0);
