"""The API key stays on the server: after real runs it is in no history entry, no saved PNG, no
log line and no ledger file. Collected last (see conftest.py), so it covers every run of the
session; it also makes its own success and failure so that it holds when run alone."""

from __future__ import annotations

import json

from emulator import Fault
from PIL import Image


def test_the_key_appears_nowhere(comfyui, cometapi, text_to_image):
    ok = comfyui.run(text_to_image("secret_ok"))
    assert ok["status"]["status_str"] == "success", comfyui.problems(ok)
    # An error answer that quotes the key back, as a gateway's "invalid token" message may.
    echo = {"error": {"message": f"invalid token {comfyui.api_key}", "type": "comet_api_error", "code": ""}}
    cometapi.inject(Fault("status", status=401, body=json.dumps(echo)))
    failed = comfyui.run(text_to_image("secret_failed"))
    assert failed["status"]["status_str"] == "error"

    places = {"/history": comfyui.http.get("/history").text, "server log": comfyui.log_text()}
    pngs = sorted(comfyui.output_dir.rglob("*.png"))
    ledger = sorted(path for path in comfyui.ledger_dir.rglob("*") if path.is_file())
    assert pngs and ledger
    for png in pngs:
        with Image.open(png) as image:
            places[str(png)] = json.dumps(image.text)  # the prompt and workflow Save Image embeds
    for path in ledger:
        places[str(path)] = path.read_text(encoding="utf-8", errors="replace")

    # The last four characters are what the settings dialog shows; anything longer is a leak.
    secret = comfyui.api_key[:-4]
    assert [where for where, text in places.items() if secret in text] == []
    assert not [d.raw_target for d in cometapi.downloads if "authorization" in d.headers], "key sent to storage"
