// darkroom's input nodes say on their face what a request gets: whether the field is required and its API
// default (a required text's value is only the editor's, for its runs and the snippets' examples). A
// drawn line under the node's widgets, read from the widgets as they change; never part of the prompt.
import { app } from "../../scripts/app.js";

export const FACE = "darkroom_api";
const HEIGHT = 22;

const shown = (value) => (typeof value === "number" && !Number.isInteger(value) ? String(Number(value.toFixed(4))) : String(value));
const quoted = (text) => {
  const one = String(text ?? "").replace(/\s+/g, " ");
  return `“${one.length > 40 ? `${one.slice(0, 39)}…` : one}”`;
};

// What a request gets from this input node: { required, text }.
export function apiFace(node) {
  const v = (name) => node.widgets?.find((w) => w.name === name)?.value;
  const optional = (text) => ({ required: false, text: `optional · API default ${text}` });
  switch (node.comfyClass ?? node.type) {
    case "DarkroomInputText":
      return v("required")
        ? { required: true, text: "required · no API default (this text is for editor runs)" }
        : optional(quoted(v("value")));
    case "DarkroomInputInt":
    case "DarkroomInputFloat":
      return optional(`${shown(v("value"))} (${shown(v("min"))} to ${shown(v("max"))})`);
    case "DarkroomInputBoolean":
      return optional(String(v("value")));
    case "DarkroomInputChoice":
      return optional(quoted(v("value")));
    case "DarkroomInputSeed":
      return { required: false, text: "optional · random unless the request sends one" };
    case "DarkroomInputImage":
      return { required: true, text: "required · an image URL (this image is for editor runs)" };
    case "DarkroomInputImageSize":
      return optional(`${v("width")}×${v("height")}`);
    case "DarkroomInputLoras":
      return optional(v("value") || "[]");
    default:
      return null;
  }
}

function fit(ctx, text, width) {
  if (ctx.measureText(text).width <= width) return text;
  let cut = text.length;
  while (cut > 1 && ctx.measureText(`${text.slice(0, cut)}…`).width > width) cut -= 1;
  return `${text.slice(0, cut)}…`;
}

function addFace(node) {
  if (node.widgets?.some((w) => w.name === FACE)) return;
  node.addCustomWidget({
    name: FACE,
    type: FACE,
    value: "",
    options: { serialize: false }, // not an input of the node: kept out of the prompt
    serialize: false,
    face: () => apiFace(node),
    computeSize: (width) => [width, HEIGHT],
    draw(ctx, _node, width, y) {
      const face = apiFace(node);
      if (!face) return;
      ctx.save();
      ctx.font = "12px system-ui, sans-serif";
      ctx.textBaseline = "middle";
      ctx.fillStyle = face.required ? "#ffc078" : "#8ce99a";
      ctx.fillText(fit(ctx, face.text, width - 30), 15, y + HEIGHT / 2);
      ctx.restore();
    },
  });
  const [, height] = node.computeSize();
  if (node.size[1] < height) node.setSize([node.size[0], height]);
}

app.registerExtension({
  name: "darkroom.inputs",
  nodeCreated(node) {
    if (String(node.comfyClass ?? node.type).startsWith("DarkroomInput")) addFace(node);
  },
});
