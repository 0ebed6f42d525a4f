"""Benchmarks: the pack against ComfyUI-style baselines, side by side in one run.

    python benchmarks/bench.py            # everything, about a minute on 2 cores
    python benchmarks/bench.py --only references results

Prints each measurement and its ratio to the baseline or floor measured in the same run. The
baselines do what ComfyUI's own API-node helpers do: convert a tensor with torch ops and save PNG
at PIL's default compression one image at a time; download and decode results one after another,
then concatenate. No pass/fail here: the targets are in docs/performance.md.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import importlib.util
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("SEEDREAM_COMETAPI_CONFIG_DIR", tempfile.mkdtemp(prefix="seedream-bench-"))

KEY = "sk-benchmark-0123456789abcdef"
SIDE = 2048


def load_pack():
    spec = importlib.util.spec_from_file_location("seedream_pack_bench", ROOT / "__init__.py",
                                                  submodule_search_locations=[str(ROOT)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


pack = load_pack()
images = sys.modules["seedream_pack_bench.nodes.images"]
generation = sys.modules["seedream_pack_bench.nodes.generation"]
seedream = sys.modules["seedream_pack_bench.nodes.seedream"]
models = sys.modules["seedream_pack_bench.nodes.models"]
host = sys.modules["seedream_pack_bench.nodes.host"]


@contextlib.contextmanager
def emulator_process(time_scale: float = 0.0) -> Iterator[str]:
    """The emulator in a process of its own, as the real service is: in this process its server
    threads would compete with the pack for the GIL. Yields its base URL."""
    code = (
        f"import sys; sys.path.insert(0, {str(ROOT / 'tests')!r}); from emulator import SeedreamEmulator\n"
        f"with SeedreamEmulator(api_key={KEY!r}, time_scale={time_scale}) as server:\n"
        "    server.textured = True  # photo-like results: flat images decode unrealistically fast\n"
        "    print(server.base_url, flush=True)\n"
        "    sys.stdin.read()\n"
    )
    process = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        yield process.stdout.readline().strip()
    finally:
        process.stdin.close()
        process.wait(timeout=10)


def photo(seed: int, side: int = SIDE) -> torch.Tensor:
    """A photo-like IMAGE [1, H, W, 3]: smooth colour, textured luminance, sensor grain."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:side, 0:side].astype(np.float32) / side
    colour = np.stack([np.sin(3 * x + seed), np.cos(2 * y + seed), np.sin(2 * x * y + 2)], axis=-1) * 0.25 + 0.5
    texture = (np.sin(40 * x + 13 * np.sin(9 * y)) * 0.06)[..., None]
    grain = rng.normal(0, 0.012, (side, side, 1)).astype(np.float32)
    return torch.from_numpy(np.clip(colour + texture + grain, 0, 1).astype(np.float32)).unsqueeze(0)


def timed(function, repeat: int = 3) -> float:
    """Best of `repeat` wall times in seconds (the machine is shared: the minimum is the signal)."""
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - started)
    return best


def run_async(coroutine):
    """asyncio.run(coroutine), but what it returns is not left as the main task's result. On Python
    3.11 asyncio.run ends with signal.getsignal() on its SIGINT handler, a partial that holds the
    task, and a failed enum lookup formats its repr: tensors included, ~25 ms for 15 results,
    charged to the pack. ComfyUI never pays it (nodes run on its loop, not one asyncio.run each)."""
    box = []

    async def main() -> None:
        box.append(await coroutine)

    asyncio.run(main())
    return box[0]


def psnr(original: np.ndarray, data_uri: str) -> float:
    encoded = base64.b64decode(data_uri.partition(",")[2])
    decoded = np.asarray(Image.open(io.BytesIO(encoded)).convert("RGB"), np.float64)
    mse = np.mean((decoded - original.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


# --- baselines (ComfyUI-helper style) -----------------------------------------------------------


def baseline_reference(tensor: torch.Tensor) -> str:
    array = (tensor[0] * 255).clamp(0, 255).to(torch.uint8).cpu().numpy()
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def baseline_results(urls: list[str]) -> torch.Tensor:
    tensors = []
    with httpx.Client() as http:
        for url in urls:
            data = http.get(url).content
            array = np.array(Image.open(io.BytesIO(data)).convert("RGB")).astype(np.float32) / 255.0
            tensors.append(torch.from_numpy(array).unsqueeze(0))
    return torch.cat(tensors, dim=0)


def decode_and_convert(data: bytes) -> torch.Tensor:
    """The floor for one result: decode plus conversion to float, nothing else."""
    array = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    return torch.from_numpy(array).to(torch.float32).div_(255.0)


# --- measurements -----------------------------------------------------------------------------


def bench_references(report: dict) -> None:
    count = 14
    refs = [photo(seed) for seed in range(count)]
    limits = models.load_table().reference_limits
    sources = [images.frame_to_array(r[0]).copy() for r in refs]

    async def pack_encode(fmt: str):
        loop = asyncio.get_running_loop()
        return await asyncio.gather(*(
            loop.run_in_executor(images.WORKERS, images.encode_reference, r[0], limits, n, fmt)
            for n, r in enumerate(refs, start=1)
        ))

    base_time = timed(lambda: [baseline_reference(r) for r in refs], repeat=1)
    base_uris = [baseline_reference(r) for r in refs[:1]]
    base_bytes = len(base_uris[0]) * count  # same content statistics for every reference
    pack_time = timed(lambda: asyncio.run(pack_encode("jpeg")))
    encoded = asyncio.run(pack_encode("jpeg"))
    png_time = timed(lambda: asyncio.run(pack_encode("png")), repeat=1)
    pack_bytes = sum(len(e.data_uri) for e in encoded)
    floor = timed(lambda: [images.encode_reference(images.frame_to_array(refs[0][0]), limits, 1)], repeat=5)
    report["references"] = {
        "count": count,
        "size": f"{SIDE}x{SIDE}",
        "baseline_s": round(base_time, 3),
        "pack_jpeg_s": round(pack_time, 3),
        "speedup": round(base_time / pack_time, 1),
        "baseline_body_mb": round(base_bytes / 1e6, 1),
        "pack_body_mb": round(pack_bytes / 1e6, 1),
        "body_ratio": round(base_bytes / pack_bytes, 1),
        "psnr_db_min": round(min(psnr(s, e.data_uri) for s, e in zip(sources, encoded, strict=True)), 1),
        "pack_png_lossless_s": round(png_time, 3),
        "png_speedup": round(base_time / png_time, 1),
        "one_reference_convert_plus_jpeg_ms": round(floor * 1000, 1),
    }


def _group(base_url: str, count: int) -> list[dict]:
    body = {"model": "doubao-seedream-4-5-251128", "prompt": "benchmark group", "size": f"{SIDE}x{SIDE}",
            "sequential_image_generation": "auto", "sequential_image_generation_options": {"max_images": count},
            "watermark": False}
    answer = httpx.post(f"{base_url}/images/generations", json=body,
                        headers={"Authorization": f"Bearer {KEY}"}, timeout=120).json()
    return answer["data"]


def bench_results(report: dict, base_url: str) -> None:
    items = _group(base_url, 15)
    urls = [item["url"] for item in items]
    progress = host.Progress(None)

    async def pack_fetch():
        sources = {n: url for n, url in enumerate(urls)}
        collected, errors = await generation.fetch_images(sources, {n: i["size"] for n, i in enumerate(items)},
                                                          progress)
        assert not errors, errors
        return collected.finish()

    base_time = timed(lambda: baseline_results(urls), repeat=2)
    pack_time = timed(lambda: run_async(pack_fetch()), repeat=3)
    data = httpx.get(urls[0]).content
    floor = timed(lambda: decode_and_convert(data), repeat=5)
    batch, image_list, _ = run_async(pack_fetch())
    reference = baseline_results(urls[:2])
    report["results"] = {
        "count": len(urls),
        "size": f"{SIDE}x{SIDE}",
        "baseline_sequential_s": round(base_time, 3),
        "pack_s": round(pack_time, 3),
        "pack_over_baseline": round(pack_time / base_time, 2),
        "floor_decode_convert_ms": round(floor * 1000, 1),
        "pack_per_image_ms": round(pack_time / len(urls) * 1000, 1),
        "pack_per_image_over_floor": round(pack_time / len(urls) / floor, 2),
        "max_abs_difference_vs_baseline": float((batch[:2] - reference).abs().max()),
        "list_items_share_the_batch": all(
            t.untyped_storage().data_ptr() == batch.untyped_storage().data_ptr() for t in image_list),
    }


_MEMORY_CHILD = """
import asyncio, json, resource, sys
sys.argv = ["bench"]
sys.path.insert(0, {root!r} + "/benchmarks")
import bench
paths = {paths!r}
blobs = {{n: open(p, "rb").read() for n, p in enumerate(paths)}}
def peak():  # VmHWM, not ru_maxrss: ru_maxrss carries the parent's peak across exec
    status = open("/proc/self/status").read()
    return int(status.split("VmHWM:")[1].split()[0]) * 1024
def current():
    return int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize()
mode = {mode!r}
if mode == "pack":
    async def run():
        collected, errors = await bench.generation.fetch_images(blobs, {{n: "{side}x{side}" for n in blobs}},
                                                                bench.host.Progress(None))
        return collected.finish()[0]
else:
    import io, numpy as np, torch
    from PIL import Image
    async def run():
        tensors = [torch.from_numpy(np.array(Image.open(io.BytesIO(b)).convert("RGB")).astype(np.float32) / 255.0)
                   .unsqueeze(0) for b in blobs.values()]
        return torch.cat(tensors, dim=0)
before = current()
batch = asyncio.run(run())
print(json.dumps({{"before": before, "after": peak(), "final": batch.element_size() * batch.nelement()}}))
"""


def bench_memory(report: dict, base_url: str) -> None:
    items = _group(base_url, 15)
    folder = Path(tempfile.mkdtemp(prefix="seedream-bench-results-"))
    paths = []
    for n, item in enumerate(items):
        path = folder / f"{n}.jpeg"
        path.write_bytes(httpx.get(item["url"]).content)
        paths.append(str(path))
    figures = {}
    for mode in ("pack", "baseline"):
        code = _MEMORY_CHILD.format(root=str(ROOT), paths=paths, mode=mode, side=SIDE)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             env=os.environ | {"SEEDREAM_BENCH_CHILD": "1"})
        result = json.loads(out.stdout.strip().splitlines()[-1])
        figures[mode] = round((result["after"] - result["before"]) / result["final"], 2)
        figures["final_mb"] = round(result["final"] / 1e6)
    report["memory"] = {"images": len(paths), "final_tensor_mb": figures["final_mb"],
                        "pack_peak_over_final": figures["pack"], "baseline_peak_over_final": figures["baseline"]}


def bench_overhead(report: dict, base_url: str) -> None:
    node = seedream.SeedreamTextToImage()
    inputs = {"prompt": "overhead", "model": "doubao-seedream-4-5-251128", "size": f"{SIDE}x{SIDE} (1:1)",
              "width": SIDE, "height": SIDE, "seed": 0, "watermark": False}
    asyncio.run(node.run(**inputs))  # the emulator renders once; later answers come from its cache
    url = json.loads(asyncio.run(node.run(**inputs))[2])["images"][0]["url"]

    def floor():
        with httpx.Client() as http:
            decode_and_convert(http.get(url).content)

    runs = [timed(lambda: run_async(node.run(**inputs)), repeat=1) for _ in range(7)]
    floors = [timed(floor, repeat=1) for _ in range(7)]
    report["overhead"] = {
        "text_to_image_run_ms": round(statistics.median(runs) * 1000, 1),
        "download_decode_floor_ms": round(statistics.median(floors) * 1000, 1),
        "ratio": round(statistics.median(runs) / statistics.median(floors), 2),
    }


def bench_graphs(report: dict, base_url: str) -> None:
    node = seedream.SeedreamTextToImage()
    inputs = {"model": "doubao-seedream-4-5-251128", "size": f"{SIDE}x{SIDE} (1:1)", "width": SIDE, "height": SIDE,
              "seed": 0, "watermark": False}

    async def together(count: int) -> None:
        await asyncio.gather(*(node.run(prompt=f"graph node {n}", **inputs) for n in range(count)))

    with emulator_process(time_scale=0.05) as slow_url:  # one image takes 1 s, as a real one takes 20 s
        os.environ["COMETAPI_BASE_URL"] = slow_url
        one = timed(lambda: asyncio.run(together(1)), repeat=1)
        three = timed(lambda: asyncio.run(together(3)), repeat=1)
        eight = timed(lambda: asyncio.run(together(8)), repeat=1)
    os.environ["COMETAPI_BASE_URL"] = base_url
    report["graphs"] = {
        "one_request_s": round(one, 2),
        "three_nodes_at_once_s": round(three, 2),
        "three_over_slowest": round(three / one, 2),
        "list_of_8_prompts_s": round(eight, 2),
        "eight_over_slowest": round(eight / one, 2),
        "concurrency_limit": sys.modules["seedream_pack_bench.nodes.client"].MAX_CONCURRENT_REQUESTS,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=["references", "results", "memory", "overhead", "graphs"])
    args = parser.parse_args()
    report: dict = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                "torch": torch.__version__, "platform": platform.platform()}}
    with emulator_process() as base_url:
        os.environ["COMETAPI_KEY"] = KEY
        os.environ["COMETAPI_BASE_URL"] = base_url
        for name in args.only:
            started = time.perf_counter()
            if name == "references":
                bench_references(report)
            else:
                globals()[f"bench_{name}"](report, base_url)
            print(f"{name}: {json.dumps(report[name])}  ({time.perf_counter() - started:.0f} s)", flush=True)
    print(json.dumps(report, indent=2))


if __name__ == "__main__" and not os.environ.get("SEEDREAM_BENCH_CHILD"):
    main()
