// Plain logic of the key settings, without the DOM or ComfyUI: tested with `node --test`.

export const SETTINGS_ROUTE = "/seedream_cometapi/settings";
export const KEY_ROUTE = `${SETTINGS_ROUTE}/key`;

/** One line for the settings dialog: where the key comes from, never the key itself. */
export function describeKeyStatus(status) {
  if (!status || !status.configured) {
    return "No key configured: paste your CometAPI key and press Save.";
  }
  const ending = status.ends_with ? `, ends in …${status.ends_with}` : "";
  if (status.source === "environment") {
    return `Configured by the COMETAPI_KEY environment variable${ending} (it wins over a saved key).`;
  }
  return `Configured${ending}. Stored on the server in ${status.key_file}.`;
}

/** What to send when the user presses Save: null when there is nothing to save. */
export function keyRequestBody(typed) {
  const key = (typed ?? "").trim();
  return key ? { api_key: key } : null;
}

/** The base URL line: the environment variable wins over the saved one. */
export function describeBaseUrl(status) {
  if (!status) return "";
  return status.base_url_source === "environment"
    ? `${status.base_url} (set by COMETAPI_BASE_URL)`
    : status.base_url;
}
