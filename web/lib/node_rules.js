// What a Seedream node shows for the chosen model, without the DOM or ComfyUI: the sizes offered,
// the widgets hidden, what the service would reject, the estimated price, the reference sockets
// and the summary of the last run. The model table comes from the pack's route (the same table
// the server checks against), so no limit is written down twice. Tested with `node --test`.

export const MODELS_ROUTE = "/seedream_cometapi/models";
export const CUSTOM_SIZE = "custom";
export const DEFAULT_SIZE = "2048x2048 (1:1)";
export const MAX_REFERENCE_INPUTS = 14;

/** Widgets shown only when the model uses them (or when they hold a value the model refuses). */
const OPTIONAL_WIDGETS = {
  guidance_scale: (spec) => spec.guidance_scale,
  output_format: (spec) => spec.output_format,
  web_search: (spec) => spec.web_search,
  optimize_prompt: (spec) => spec.optimize_prompt_modes.length > 0,
  max_images: (spec) => spec.sequential,
};
const HARMLESS_VALUES = { web_search: [false], optimize_prompt: ["standard"] };

/** A `size` widget value as {preset} or {width, height}; null when not understood. */
export function parseSize(choice, width, height) {
  const text = String(choice ?? "").trim();
  if (text === CUSTOM_SIZE) return { width: Number(width), height: Number(height) };
  const head = text.split(" ")[0];
  const exact = /^(\d+)x(\d+)$/.exec(head);
  if (exact) return { width: Number(exact[1]), height: Number(exact[2]) };
  if (/^\d+K$/i.test(head)) return { preset: head.toUpperCase() };
  return null;
}

const number = (value) => Number(value).toLocaleString("en-US");
const ratio = (value) => (value < 1 ? `1/${+(1 / value).toPrecision(3)}` : `${+value.toPrecision(3)}`);

/** Why `spec` refuses this size, or null. Mirrors nodes/request.py. */
export function sizeProblem(spec, size) {
  if (!size) return "The size is not understood: choose a preset, a WxH size or 'custom'.";
  if (size.preset) {
    if (spec.size_presets.includes(size.preset)) return null;
    const accepted = spec.size_presets.join(", ") || "none (choose an exact size)";
    return `${spec.label} does not accept size ${size.preset}. Its presets: ${accepted}.`;
  }
  const { width, height } = size;
  if (!(width > 0 && height > 0)) return "With size 'custom', set width and height.";
  const pixels = width * height;
  const where = `Size ${width}x${height} (${number(pixels)} pixels)`;
  if (pixels < spec.min_pixels || pixels > spec.max_pixels) {
    return `${where} is outside what ${spec.label} accepts: ${number(spec.min_pixels)} to ${number(spec.max_pixels)} pixels.`;
  }
  if (Math.min(width, height) < spec.min_side || Math.max(width, height) > spec.max_side) {
    return `${where}: ${spec.label} takes width and height from ${spec.min_side} to ${spec.max_side}.`;
  }
  const aspect = width / height;
  if (aspect < spec.min_aspect || aspect > spec.max_aspect) {
    return `${where} has a width/height ratio of ${+aspect.toPrecision(3)}; accepted: ${ratio(spec.min_aspect)} to ${ratio(spec.max_aspect)}.`;
  }
  return null;
}

/** The `size` choices this model accepts, in the widget's order ('custom' always). */
export function sizeChoices(spec, allChoices) {
  return allChoices.filter(
    (choice) => choice === CUSTOM_SIZE || sizeProblem(spec, parseSize(choice, 0, 0)) === null,
  );
}

/** The size to switch to when the user picks a model that refuses the current one. */
export function fallbackSize(spec, allChoices, current) {
  const allowed = sizeChoices(spec, allChoices);
  if (allowed.includes(current)) return current;
  return [DEFAULT_SIZE, "2K"].find((choice) => allowed.includes(choice)) ?? allowed[0];
}

/** Names of the widgets to hide: width/height unless 'custom', options the model ignores. */
export function hiddenWidgets(spec, values) {
  const hidden = new Set();
  if (values.size !== CUSTOM_SIZE) {
    hidden.add("width");
    hidden.add("height");
  }
  for (const [name, used] of Object.entries(OPTIONAL_WIDGETS)) {
    const harmless = HARMLESS_VALUES[name];
    if (!used(spec) && (!harmless || harmless.includes(values[name]))) hidden.add(name);
  }
  return hidden;
}

/** The optimize_prompt choices this model offers ('standard' always). */
export function optimizeChoices(spec) {
  return ["standard", ...spec.optimize_prompt_modes.filter((mode) => mode !== "standard")];
}

/**
 * What the service would reject, before anything is queued. `values` holds the widget values
 * (undefined for an input that comes by a link); `references` counts connected image inputs (a
 * batch counts as several, which is only known when the node runs).
 */
export function problems(spec, values, references = 0) {
  const found = [];
  if (values.size !== undefined) {
    const problem = sizeProblem(spec, parseSize(values.size, values.width, values.height));
    if (problem) found.push(problem);
  }
  if (values.prompt !== undefined && !String(values.prompt).trim()) {
    found.push("The prompt is empty: describe the image to generate.");
  }
  if (references > spec.max_references) {
    found.push(
      spec.max_references === 0
        ? `${spec.label} takes no reference images: disconnect them or choose another model.`
        : `${references} reference images are connected, but ${spec.label} takes at most ${spec.max_references}.`,
    );
  }
  if (values.max_images !== undefined) {
    if (!spec.sequential) found.push(`${spec.label} cannot generate image sequences.`);
    const total = references + Number(values.max_images);
    if (total > spec.max_images_total) {
      found.push(
        `${references} references + max_images ${values.max_images} = ${total}, but together they may be at most ` +
          `${spec.max_images_total}: set max_images to ${Math.max(spec.max_images_total - references, 0)} or fewer.`,
      );
    }
  }
  if (values.web_search === true && !spec.web_search) found.push(`${spec.label} has no web search: turn web_search off.`);
  if (values.optimize_prompt !== undefined && !optimizeChoices(spec).includes(values.optimize_prompt)) {
    found.push(`${spec.label} does not offer optimize_prompt '${values.optimize_prompt}': set it to 'standard'.`);
  }
  return found;
}

const dollars = (amount) => `$${amount < 0.1 ? amount.toFixed(3) : amount.toFixed(2)}`;

/** The estimated price line for one run. */
export function priceEstimate(spec, maxImages) {
  const images = maxImages ?? 1;
  const what = maxImages === undefined ? "1 image" : `up to ${images} image${images === 1 ? "" : "s"}`;
  if (spec.price_per_image == null) {
    return `${what} · price unknown (set price_per_image for ${spec.id} in your models.json)`;
  }
  return `≈ ${dollars(spec.price_per_image * images)} for ${what} (${dollars(spec.price_per_image)} each, estimate)`;
}

/**
 * How many reference sockets to show: every one up to the last connected, plus one free slot,
 * never fewer than `required`, never more than the model's limit (unless more are connected).
 */
export function referenceSlotCount(connected, limit, required = 0) {
  const last = connected.lastIndexOf(true) + 1;
  const wanted = Math.max(required, Math.min(last + 1, Math.min(limit, MAX_REFERENCE_INPUTS)));
  return Math.max(last, wanted, 1);
}

function remaining(expiresAt, now) {
  const seconds = (Date.parse(expiresAt) - now) / 1000;
  if (!(seconds > 0)) return "expired";
  const hours = Math.floor(seconds / 3600);
  const minutes = Math.floor((seconds % 3600) / 60);
  return hours ? `${hours} h ${minutes} min left` : `${minutes} min left`;
}

/** The text shown on the node after a run, from the node's `ui.seedream` summary. */
export function describeRun(summary, now = Date.now()) {
  const images = summary.images ?? [];
  const sizes = [...new Set(images.filter((image) => image.size && !image.error).map((image) => image.size))];
  const cost = summary.estimated_cost_usd == null ? "price unknown" : `≈ ${dollars(summary.estimated_cost_usd)}`;
  const lines = [
    `Last run: ${summary.generated_images} of ${summary.requested_images} image(s)` +
      `${sizes.length ? ` · ${sizes.join(", ")}` : ""} · ${summary.seconds} s · ${cost}`,
  ];
  const usage = summary.usage ?? {};
  const parts = Object.entries(usage)
    .filter(([, value]) => typeof value === "number")
    .map(([key, value]) => `${key.replaceAll("_", " ")} ${number(value)}`);
  if (parts.length) lines.push(`Usage: ${parts.join(", ")}`);
  for (const image of images) {
    if (image.error) {
      lines.push(`Image ${image.index + 1}: failed (${image.error.code}${image.error.message ? `: ${image.error.message}` : ""})`);
    } else if (image.url) {
      lines.push(`Image ${image.index + 1} ${image.size ?? ""}, link until ${image.expires_at} (${remaining(image.expires_at, now)}):`);
      lines.push(image.url);
    }
  }
  for (const note of summary.notes ?? []) lines.push(`Note: ${note}`);
  if (summary.ledger_entry) lines.push(`Ledger entry: ${summary.ledger_entry}`);
  return lines.join("\n");
}
