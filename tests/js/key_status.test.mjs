import assert from "node:assert/strict";
import { test } from "node:test";

import { describeBaseUrl, describeKeyStatus, keyRequestBody } from "../../web/lib/key_status.js";

test("the status line never needs the key", () => {
  assert.match(describeKeyStatus({ configured: false }), /No key configured/);
  assert.equal(
    describeKeyStatus({ configured: true, source: "file", ends_with: "cdef", key_file: "/home/u/.config/k" }),
    "Configured, ends in …cdef. Stored on the server in /home/u/.config/k.",
  );
  assert.match(describeKeyStatus({ configured: true, source: "environment", ends_with: "9999" }), /environment.*…9999/);
});

test("only a non-empty key is sent", () => {
  assert.equal(keyRequestBody("   "), null);
  assert.equal(keyRequestBody(undefined), null);
  assert.deepEqual(keyRequestBody(" sk-abc \n"), { api_key: "sk-abc" });
});

test("the base URL says when the environment sets it", () => {
  assert.equal(describeBaseUrl({ base_url: "https://x/v1", base_url_source: "settings" }), "https://x/v1");
  assert.match(describeBaseUrl({ base_url: "https://y/v1", base_url_source: "environment" }), /COMETAPI_BASE_URL/);
});
