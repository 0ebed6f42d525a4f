// The Seedream nodes adapt to the chosen model: sizes it accepts, width/height only for 'custom',
// options it ignores hidden, reference sockets that grow one at a time up to its limit. Under the
// widgets a status box says what the service would reject and what the run should cost, and after
// a run what came back (sizes, usage, cost, the links and when they expire; selectable to copy).
// The rules live in ./lib/node_rules.js; this file only applies them to LiteGraph nodes.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import {
  MODELS_ROUTE, describeRun, fallbackSize, hiddenWidgets, optimizeChoices, priceEstimate, problems,
  referenceSlotCount, sizeChoices,
} from "./lib/node_rules.js";

const GENERATORS = new Set([
  "CometAPISeedreamTextToImage", "CometAPISeedreamImageToImage", "CometAPISeedreamSequential",
]);
const LEDGER = "CometAPISeedreamLedger"; // shows the last run only
// Reference sockets each node must always show (image_1 is required on Image to Image).
const REFERENCE_NODES = { CometAPISeedreamImageToImage: 1, CometAPISeedreamSequential: 0 };
// Widgets whose values the checks read: a change to any of them refreshes the node.
const CHECKED_WIDGETS = ["prompt", "size", "width", "height", "max_images", "web_search", "optimize_prompt"];
const ADAPTIVE_WIDGETS = ["width", "height", "guidance_scale", "output_format", "web_search", "optimize_prompt", "max_images"];
const STATUS_WIDGET = "seedream_status";
const REFERENCE = /^image_(\d+)$/;

let table = null;

async function loadTable() {
  try {
    const response = await api.fetchApi(MODELS_ROUTE);
    table = await response.json();
  } catch (error) {
    table = { error: `the model table could not be loaded (${error.message})` };
  }
  for (const node of app.graph?._nodes ?? []) {
    if (GENERATORS.has(node.comfyClass)) refresh(node);
  }
}

const widget = (node, name) => node.widgets?.find((w) => w.name === name);
const isLinked = (node, name) => node.inputs?.some((input) => input.widget?.name === name && input.link != null);
/** A widget's value, or undefined when it comes by a link (known only when the node runs). */
const valueOf = (node, name) => (widget(node, name) && !isLinked(node, name) ? widget(node, name).value : undefined);

// LiteGraph 1.27 skips hidden widgets when drawing but still lays them out: a zero height keeps
// them from leaving a gap (the classic approach, also right for older frontends).
function setHidden(target, hidden) {
  if (!target || Boolean(target.hidden) === hidden) return;
  target.hidden = hidden;
  if (hidden) {
    target.seedreamComputeSize = target.computeSize;
    target.computeSize = () => [0, -4];
  } else {
    target.computeSize = target.seedreamComputeSize;
    delete target.seedreamComputeSize;
  }
}

function addStatusWidget(node) {
  const box = document.createElement("textarea");
  box.className = "comfy-multiline-input";
  box.readOnly = true;
  box.spellcheck = false;
  box.style.fontSize = "11px";
  box.style.whiteSpace = "pre-wrap";
  const status = node.addDOMWidget(STATUS_WIDGET, "seedream_status", box, {
    getValue: () => box.value,
    setValue: (text) => { box.value = text; },
    getMinHeight: () => (node.seedreamLastRun ? 140 : 56),
    getMaxHeight: () => 240,
    serialize: false, // not part of the prompt sent to the server
  });
  status.serialize = false; // nor of the saved workflow: it holds links and is rebuilt on load
  status.box = box;
  return status;
}

function referenceSockets(node) {
  return (node.inputs ?? [])
    .map((input, slot) => ({ input, slot, number: Number(REFERENCE.exec(input.name)?.[1]) }))
    .filter(({ number }) => number > 0);
}

/** Show image_1..image_n, where n follows what is connected and the model's limit. */
function fitReferenceSockets(node, spec) {
  if (!(node.comfyClass in REFERENCE_NODES)) return;
  const sockets = referenceSockets(node);
  const connected = [];
  for (const { input, number } of sockets) connected[number - 1] = input.link != null;
  const wanted = referenceSlotCount(Array.from(connected, Boolean), spec.max_references, REFERENCE_NODES[node.comfyClass]);
  for (const { slot, number, input } of sockets.reverse()) {
    if (number > wanted && input.link == null) node.removeInput(slot);
  }
  const present = new Set(referenceSockets(node).map(({ number }) => number));
  for (let number = 1; number <= wanted; number++) {
    if (!present.has(number)) node.addInput(`image_${number}`, "IMAGE");
  }
}

function connectedReferences(node) {
  return referenceSockets(node).filter(({ input }) => input.link != null).length;
}

/** Apply the model's rules to the node. `modelChanged`: the user just picked another model. */
function refresh(node, modelChanged = false) {
  const status = widget(node, STATUS_WIDGET);
  if (status && node.comfyClass === LEDGER) status.value = node.seedreamLastRun ?? "";
  if (!status || !table || !GENERATORS.has(node.comfyClass)) return;
  if (table.error) {
    status.value = `Seedream: ${table.error}`;
    return;
  }
  const model = valueOf(node, "model");
  const spec = table.models?.[model];
  if (!spec) {
    status.value = model === undefined ? "" : `Unknown model ${model}: add it to your models.json (see README).`;
    return;
  }
  const size = widget(node, "size");
  size.seedreamAllChoices ??= [...size.options.values];
  const sizes = sizeChoices(spec, size.seedreamAllChoices);
  if (modelChanged) size.value = fallbackSize(spec, size.seedreamAllChoices, size.value);
  // A value saved in an old workflow stays selectable (and is reported below), never changed.
  size.options.values = sizes.includes(size.value) ? sizes : [...sizes, size.value];
  const optimize = widget(node, "optimize_prompt");
  if (optimize) {
    const modes = optimizeChoices(spec);
    if (modelChanged && !modes.includes(optimize.value)) optimize.value = "standard";
    optimize.options.values = modes.includes(optimize.value) ? modes : [...modes, optimize.value];
  }
  const webSearch = widget(node, "web_search");
  if (modelChanged && webSearch && !spec.web_search) webSearch.value = false;

  const values = Object.fromEntries(CHECKED_WIDGETS.map((name) => [name, valueOf(node, name)]));
  const hidden = hiddenWidgets(spec, { ...values, size: size.value });
  for (const name of ADAPTIVE_WIDGETS) setHidden(widget(node, name), hidden.has(name) && !isLinked(node, name));
  fitReferenceSockets(node, spec);

  const found = problems(spec, values, connectedReferences(node));
  const lines = [...found.map((problem) => `⚠ ${problem}`), priceEstimate(spec, values.max_images)];
  status.value = [lines.join("\n"), node.seedreamLastRun].filter(Boolean).join("\n\n");
  status.box.style.color = found.length ? "var(--error-text, #ff6b6b)" : "";
  node.setSize([node.size[0], Math.max(node.computeSize()[1], node.size[1])]);
  node.setDirtyCanvas?.(true, true);
}

function watch(node, name, modelChanged = false) {
  const target = widget(node, name);
  if (!target) return;
  const callback = target.callback;
  target.callback = function (...args) {
    const result = callback?.apply(this, args);
    refresh(node, modelChanged);
    return result;
  };
}

app.registerExtension({
  name: "SeedreamCometAPI.Nodes",
  setup: loadTable,
  beforeRegisterNodeDef(nodeType, nodeData) {
    if (!GENERATORS.has(nodeData.name) && nodeData.name !== LEDGER) return;
    const { onNodeCreated, onConfigure, onConnectionsChange, onExecuted } = nodeType.prototype;

    nodeType.prototype.onNodeCreated = function (...args) {
      const result = onNodeCreated?.apply(this, args);
      addStatusWidget(this);
      watch(this, "model", true);
      for (const name of CHECKED_WIDGETS) watch(this, name);
      // Inputs are final only after a saved workflow's values and sockets are applied.
      queueMicrotask(() => refresh(this));
      return result;
    };
    nodeType.prototype.onConfigure = function (...args) {
      const result = onConfigure?.apply(this, args);
      refresh(this);
      return result;
    };
    nodeType.prototype.onConnectionsChange = function (...args) {
      const result = onConnectionsChange?.apply(this, args);
      // While a workflow loads, sockets are being restored one by one: refresh once it is done.
      if (!app.configuringGraph) queueMicrotask(() => refresh(this));
      return result;
    };
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, [message]);
      const summary = message?.seedream?.[0];
      if (summary) {
        this.seedreamLastRun = describeRun(summary);
        refresh(this);
      }
    };
  },
});
