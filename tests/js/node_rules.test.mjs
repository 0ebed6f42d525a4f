import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";

import {
  describeRun, fallbackSize, hiddenWidgets, optimizeChoices, parseSize, priceEstimate, problems,
  referenceSlotCount, sizeChoices,
} from "../../web/lib/node_rules.js";

// The built-in table, merged with its defaults as the server's route serves it.
const raw = JSON.parse(readFileSync(new URL("../../nodes/models.json", import.meta.url)));
const spec = (id) => ({ id, label: id, ...raw.defaults, ...raw.models[id] });
const V45 = spec("doubao-seedream-4-5-251128");
const V40 = spec("doubao-seedream-4-0-250828");
const V30 = spec("bytedance-seedream-3.0-t2i");
const PRO = spec("seedream-5-0-pro-260628");
const LITE = spec("doubao-seedream-5-0-260128");
const CHOICES = ["2K", "1K", "3K", "4K", "2048x2048 (1:1)", "1024x1024 (1:1)", "6240x2656 (21:9)", "custom"];

test("sizes offered follow the model", () => {
  assert.deepEqual(sizeChoices(V45, CHOICES), ["2K", "4K", "2048x2048 (1:1)", "6240x2656 (21:9)", "custom"]);
  assert.deepEqual(sizeChoices(V30, CHOICES), ["2048x2048 (1:1)", "1024x1024 (1:1)", "custom"]);
  assert.deepEqual(sizeChoices(PRO, CHOICES), ["2K", "1K", "2048x2048 (1:1)", "1024x1024 (1:1)", "custom"]);
  assert.equal(fallbackSize(V45, CHOICES, "1K"), "2048x2048 (1:1)");
  assert.equal(fallbackSize(V40, CHOICES, "1K"), "1K");
  assert.deepEqual(parseSize("custom", "1000", 800), { width: 1000, height: 800 });
  assert.deepEqual(parseSize("3k", 0, 0), { preset: "3K" });
  assert.equal(parseSize("square", 0, 0), null);
});

test("width and height only with custom; ignored options hidden unless they hold a refused value", () => {
  const hidden = hiddenWidgets(V45, { size: "2K", web_search: false, optimize_prompt: "standard" });
  assert.deepEqual([...hidden].sort(), ["guidance_scale", "height", "output_format", "web_search", "width"]);
  assert.ok(!hiddenWidgets(V45, { size: "custom", web_search: true }).has("web_search"));
  assert.ok(!hiddenWidgets(V45, { size: "custom" }).has("width"));
  const v30 = hiddenWidgets(V30, { size: "custom", optimize_prompt: "standard" });
  assert.ok(!v30.has("guidance_scale") && v30.has("optimize_prompt") && v30.has("max_images"));
  assert.ok(!hiddenWidgets(LITE, { size: "2K", web_search: false }).has("output_format"));
  assert.deepEqual(optimizeChoices(V45), ["standard"]);
  assert.deepEqual(optimizeChoices(PRO), ["standard", "fast"]);
});

test("what would be rejected is said before queueing, in the server's words", () => {
  assert.deepEqual(problems(V45, { size: "2K", prompt: "a fox" }), []);
  assert.match(problems(V45, { size: "1K", prompt: "x" })[0], /does not accept size 1K\. Its presets: 2K, 4K/);
  assert.match(problems(V45, { size: "custom", width: 1024, height: 1024, prompt: "x" })[0],
    /1,048,576 pixels\) is outside .* 3,686,400 to 16,777,216 pixels/);
  assert.match(problems(V40, { size: "custom", width: 8192, height: 400, prompt: "x" })[0], /ratio of 20\.5; accepted: 1\/16 to 16/);
  assert.match(problems(V45, { size: "2K", prompt: "  " })[0], /prompt is empty/);
  assert.deepEqual(problems(V45, { size: undefined, prompt: undefined }), []); // linked inputs: checked at run time
  assert.match(problems(PRO, { size: "2K", prompt: "x" }, 11)[0], /11 reference images .* at most 10/);
  assert.match(problems(V45, { size: "2K", prompt: "x", max_images: 6 }, 10)[0], /10 references \+ max_images 6 = 16.*5 or fewer/);
  assert.match(problems(V45, { size: "2K", prompt: "x", web_search: true })[0], /no web search/);
  assert.match(problems(V45, { size: "2K", prompt: "x", optimize_prompt: "fast" })[0], /optimize_prompt 'fast'/);
});

test("price estimate per run", () => {
  assert.equal(priceEstimate(V45), "≈ $0.032 for 1 image ($0.032 each, estimate)");
  assert.equal(priceEstimate(V45, 4), "≈ $0.13 for up to 4 images ($0.032 each, estimate)");
  assert.match(priceEstimate(PRO), /price unknown .*seedream-5-0-pro-260628/);
});

test("reference sockets grow one free slot at a time up to the model's limit", () => {
  assert.equal(referenceSlotCount([], 14, 1), 1);
  assert.equal(referenceSlotCount([true], 14, 1), 2);
  assert.equal(referenceSlotCount([true, false, false, false], 14), 2);
  assert.equal(referenceSlotCount([true, false, true, false], 14), 4);
  assert.equal(referenceSlotCount(Array(10).fill(true), 10), 10);
  assert.equal(referenceSlotCount(Array(12).fill(true), 10), 12); // never drops a connected one
  assert.equal(referenceSlotCount(Array(14).fill(true), 14), 14);
});

test("the last run is described with links and their time left", () => {
  const now = Date.parse("2026-11-24T10:00:00Z");
  const text = describeRun({
    requested_images: 3, generated_images: 2, seconds: 47.2, estimated_cost_usd: 0.064,
    usage: { generated_images: 2, output_tokens: 32768 },
    images: [
      { index: 0, size: "2048x2048", url: "https://tos/a.jpeg?X-Tos-Signature=1", expires_at: "2026-11-25T09:30:00Z" },
      { index: 1, error: { code: "OutputImageSensitiveContentDetected", message: "" } },
      { index: 2, size: "2048x2048", url: "https://tos/c.jpeg", expires_at: "2026-11-24T09:00:00Z" },
    ],
    notes: ["Failed and not billed: image 2."], ledger_entry: "20261124-100000000-abc123",
  }, now);
  assert.equal(text.split("\n")[0], "Last run: 2 of 3 image(s) · 2048x2048 · 47.2 s · ≈ $0.064");
  assert.match(text, /Usage: generated images 2, output tokens 32,768/);
  assert.match(text, /Image 1 2048x2048, link until 2026-11-25T09:30:00Z \(23 h 30 min left\):\nhttps:\/\/tos\/a\.jpeg\?X-Tos-Signature=1/);
  assert.match(text, /Image 2: failed \(OutputImageSensitiveContentDetected\)/);
  assert.match(text, /\(expired\)/);
  assert.match(text, /Ledger entry: 20261124-100000000-abc123$/);
});
