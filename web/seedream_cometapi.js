// Seedream (CometAPI) settings: the key is typed here once and posted to the pack's own server
// route, which stores it in a file only the server's user can read. The key is never kept in
// ComfyUI's settings (those live in user/default/comfy.settings.json, readable by any browser
// user) and never sent back: the dialog only shows where it comes from and its last 4 characters.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import { KEY_ROUTE, SETTINGS_ROUTE, describeBaseUrl, describeKeyStatus, keyRequestBody } from "./lib/key_status.js";

function toast(severity, summary, detail) {
  app.extensionManager?.toast?.add({ severity, summary, detail, life: 5000 });
}

async function request(method, path, body) {
  const response = await api.fetchApi(path, {
    method,
    headers: body ? { "Content-Type": "application/json" } : undefined,
    body: body ? JSON.stringify(body) : undefined,
  });
  const answer = await response.json();
  if (!response.ok) throw new Error(answer.error || `HTTP ${response.status}`);
  return answer;
}

function element(tag, properties = {}, children = []) {
  const node = Object.assign(document.createElement(tag), properties);
  node.append(...children);
  return node;
}

function keyEditor() {
  // A long status (it names the key file) wraps inside the editor instead of squeezing the label.
  const status = element("div", {
    className: "seedream-key-status", textContent: "…", style: "max-width: 26em; overflow-wrap: anywhere",
  });
  const input = element("input", {
    type: "password", placeholder: "sk-…", autocomplete: "off", className: "p-inputtext",
    style: "width: 18em",
  });
  const show = (answer) => { status.textContent = describeKeyStatus(answer); };
  const save = element("button", { textContent: "Save", className: "p-button p-button-sm" });
  const remove = element("button", { textContent: "Remove", className: "p-button p-button-sm p-button-secondary" });
  save.onclick = async () => {
    const body = keyRequestBody(input.value);
    if (!body) return;
    try {
      show(await request("POST", SETTINGS_ROUTE, body));
      toast("success", "CometAPI key saved", "Stored on the server; it is not kept in the browser.");
    } catch (error) {
      toast("error", "CometAPI key not saved", error.message);
    }
    input.value = "";
  };
  remove.onclick = async () => {
    try {
      show(await request("DELETE", KEY_ROUTE));
    } catch (error) {
      toast("error", "CometAPI key not removed", error.message);
    }
  };
  request("GET", SETTINGS_ROUTE).then(show, (error) => { status.textContent = error.message; });
  return element("div", { style: "display: flex; flex-direction: column; gap: 0.4em" }, [
    status, element("div", { style: "display: flex; gap: 0.4em" }, [input, save, remove]),
  ]);
}

function baseUrlEditor() {
  const current = element("div", { textContent: "…" });
  const input = element("input", {
    type: "url", placeholder: "https://api.cometapi.com/v1", className: "p-inputtext", style: "width: 18em",
  });
  const show = (answer) => { current.textContent = describeBaseUrl(answer); };
  const save = element("button", { textContent: "Save", className: "p-button p-button-sm" });
  save.onclick = async () => {
    try {
      show(await request("POST", SETTINGS_ROUTE, { base_url: input.value.trim() || null }));
      input.value = "";
    } catch (error) {
      toast("error", "Base URL not saved", error.message);
    }
  };
  request("GET", SETTINGS_ROUTE).then(show, () => {});
  return element("div", { style: "display: flex; flex-direction: column; gap: 0.4em" }, [
    current, element("div", { style: "display: flex; gap: 0.4em" }, [input, save]),
  ]);
}

// Each run is billed: a newly added node starts with its seed "fixed" (rerun = cached, no cost)
// instead of the frontend's default "randomize" (a new, billed image on every Run). Saved
// workflows keep whatever they were saved with: their values are applied after this.
const SEEDED_NODES = new Set([
  "CometAPISeedreamTextToImage", "CometAPISeedreamImageToImage", "CometAPISeedreamSequential",
]);

function fixSeedControl(node) {
  if (!SEEDED_NODES.has(node.comfyClass)) return;
  const seed = node.widgets?.find((widget) => widget.name === "seed");
  const control = seed?.linkedWidgets?.find((widget) => widget.name === "control_after_generate");
  if (control) control.value = "fixed";
}

app.registerExtension({
  name: "SeedreamCometAPI.Settings",
  nodeCreated: fixSeedControl,
  settings: [
    {
      id: "SeedreamCometAPI.ApiKey",
      category: ["Seedream (CometAPI)", "Account", "API key"],
      name: "CometAPI key",
      tooltip: "Stored on the ComfyUI server, never in the browser or in workflows.",
      sortOrder: 10, // the dialog lists higher first: the key above the base URL
      type: () => keyEditor(),
      defaultValue: "",
    },
    {
      id: "SeedreamCometAPI.BaseUrl",
      category: ["Seedream (CometAPI)", "Account", "Base URL"],
      name: "CometAPI base URL",
      tooltip: "Leave empty for https://api.cometapi.com/v1.",
      type: () => baseUrlEditor(),
      defaultValue: "",
    },
  ],
});
