"""Performance benchmark (issues: foundation and performance). All ratios are taken within one run.

    python bench/perf.py --out bench/results/perf.json            # everything (about 30-40 min)
    python bench/perf.py --only trunk startup --out /tmp/p.json   # a subset

Parts:
* ``trunk``: images/s of the frozen pass for batch sizes 1, 16, 64: occ's default engine (onnxruntime
  on the int8 graph, one image per run so features never depend on the batch), the torch fp32 engine,
  and a bare onnxruntime session on the unmodified int8 graph (the reference for this machine);
  plus the 500-image folder ratio (occ trunk / bare session) and the end-to-end rate with decoding.
* ``cache``: cold vs cached feature extraction of 500 images.
* ``enroll``: ``occ enroll`` wall time for 5, 10, 25 shots, with a cold cache and with the negatives
  cached.
* ``attribute``: ``occ attribute`` over 300 images with 1, 10 and 100 enrolled sources (the 100 are
  copies of 10 real verifiers, made with export/import: per-source cost does not depend on content),
  with a cold and a warm feature cache; first vs second run.
* ``memory``: peak RSS of ``occ attribute`` over 200 and 2,000 images (10 sources, cold cache).
* ``startup``: ``occ --help`` and ``occ sources``.
* ``cached`` (issue 14): ``occ attribute`` over 150 new images, then the same 150 again (features
  cached), with 1 and 100 sources; which heavy modules the cached run imported.
* ``serve`` (issue 14): ``occ serve`` on a free loopback port; latency of ``POST /v1/attribute`` with one
  image (p50/p95 over 100 requests), cached and new images, with 1 and 100 sources.
* ``ray`` (issue 14): ``occ attribute --engine ray`` with 1 and 2 workers against the plain CLI (1 and 2
  threads), 100 and 500 new images each (a fresh feature cache per run), in the same run.
* ``threads`` (issue 14): a 10-shot ``occ enroll`` (negatives cached) alone, beside another CPU-bound
  process (default threads, and ``--threads 2``), and two such enrolls at once.
* ``serve_ray`` (issue 26): requests per second through HTTP of ``occ serve --engine ray`` with 1 and 2
  replicas (``POST /v1/attribute``, one cached image, 8 concurrent clients, 400 requests), and of the plain
  ``occ serve``: ``python bench/perf.py --only serve_ray --out bench/results/serve_ray.json``.

Every part records the 1-minute load average before and after it (the machine is shared).

Images come from ``../shared/data/devset`` (read in place, never copied into the repo).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from occ.testing import devset as D

ROOT = Path(__file__).resolve().parent.parent
DEVSET = D.DEVSET
OCC = [sys.executable, "-m", "occ.cli"]


def devset_images(n: int, start: int = 0) -> list[Path]:

    rows = D.manifest(DEVSET)
    paths = [DEVSET / r["path"] for r in rows]
    # interleave labels so every slice mixes generators and photos
    paths.sort(key=lambda p: (hash(p.name) % 9973, p.name))
    out = (paths * (1 + (start + n) // len(paths)))[start:start + n]
    return out


def link_folder(paths: list[Path], folder: Path) -> Path:
    """A folder of symlinks (distinct names) to ``paths``."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, p in enumerate(paths):
        os.symlink(p, folder / f"{i:05d}{p.suffix}")
    return folder


def timed(cmd: list[str], env: dict) -> float:
    """Wall seconds of a child process (exit codes 0 and 1 are fine: 1 = some inputs unreadable)."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - start
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
    return wall


def child_rss(cmd: list[str], env: dict) -> float:
    """Peak RSS (MB) of one child process: its VmHWM from /proc, read until it exits. (The rusage
    maxrss of a child is useless here: Linux carries the parent's high-water mark across fork and exec,
    so a child of this benchmark process would report this process's size.)"""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peak = 0
    while proc.poll() is None:
        try:
            with open(f"/proc/{proc.pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        peak = max(peak, int(line.split()[1]))
        except OSError:
            pass
        time.sleep(0.05)
    return peak / 1024


def rate(fn, n: int, repeat: int = 1) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return n / best


def default_blocks(backbone) -> tuple[int, ...]:
    """The blocks whose patch keys/values the default verifier needs from the trunk."""
    from occ.verifier import Verifier

    return Verifier().kv_blocks(backbone)


def part_trunk(report: dict) -> None:
    import numpy as np
    import onnxruntime as ort
    import torch

    from occ.backbones import load_backbone
    from occ.backbones.embedded import embedded_dir
    from occ.features import FeatureExtractor
    from occ.images import load_image

    onnx_backbone = load_backbone(engine="onnx-int8")
    torch_backbone = load_backbone(engine="torch-fp32")
    paths = devset_images(64)
    pixels = onnx_backbone.preprocess([load_image(p).image for p in paths])
    options = ort.SessionOptions()
    options.log_severity_level = 3
    bare = ort.InferenceSession(str(embedded_dir() / "clip_encoder.int8.onnx"), options,
                                providers=["CPUExecutionProvider"])
    onnx_backbone.trunk(pixels[:1])  # session start-up is not throughput
    blocks = default_blocks(onnx_backbone)
    out = {"kv_blocks": list(blocks)}
    for batch in (1, 16, 64):
        n = 64 if batch > 1 else 16
        x = pixels[:n]

        def run_bare(x=x, batch=batch):
            for i in range(0, len(x), batch):
                bare.run(["image_embeds"], {"pixel_values": x[i:i + batch].numpy()})

        def run_occ(x=x, batch=batch, backbone=onnx_backbone):
            for i in range(0, len(x), batch):
                backbone.trunk(x[i:i + batch], blocks)

        def run_torch(x=x, batch=batch):
            for i in range(0, len(x), batch):
                torch_backbone.trunk(x[i:i + batch], blocks)

        out[f"batch_{batch}"] = {
            "bare_onnxruntime_int8": round(rate(run_bare, n), 2),
            "occ_onnx_int8": round(rate(run_occ, n), 2),
            "occ_torch_fp32": round(rate(run_torch, min(n, 16) if batch == 1 else n), 2),
        }
        print("trunk", batch, out[f"batch_{batch}"], flush=True)
    # the 500-image folder: occ's trunk vs the bare session, same pixels, one image per run for both
    folder_paths = devset_images(500)
    decode_start = time.perf_counter()
    folder_pixels = [onnx_backbone.preprocess([load_image(p).image]) for p in folder_paths]
    decode_rate = len(folder_paths) / (time.perf_counter() - decode_start)
    bare_rate = rate(lambda: [bare.run(["image_embeds"], {"pixel_values": x.numpy()}) for x in folder_pixels], 500)
    occ_rate = rate(lambda: [onnx_backbone.trunk(x, blocks) for x in folder_pixels], 500)
    with tempfile.TemporaryDirectory() as tmp:
        extractor = FeatureExtractor(onnx_backbone, cache_root=tmp)
        start = time.perf_counter()
        extractor.load(folder_paths, blocks)
        end_to_end = 500 / (time.perf_counter() - start)
    out["folder_500"] = {"bare_onnxruntime_int8": round(bare_rate, 2), "occ_trunk": round(occ_rate, 2),
                         "ratio_occ_over_bare": round(occ_rate / bare_rate, 3),
                         "decode_and_preprocess": round(decode_rate, 2),
                         "end_to_end_with_decode_and_cache_writes": round(end_to_end, 2)}
    out["torch_threads"] = torch.get_num_threads()
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    report["trunk"] = out
    print("trunk", out["folder_500"], flush=True)
    del np


def part_cache(report: dict) -> None:
    from occ.backbones import load_backbone
    from occ.features import FeatureExtractor

    backbone = load_backbone()
    blocks = default_blocks(backbone)
    paths = devset_images(500)
    with tempfile.TemporaryDirectory() as tmp:
        extractor = FeatureExtractor(backbone, cache_root=tmp)
        start = time.perf_counter()
        extractor.load(paths, blocks)
        cold = time.perf_counter() - start
        start = time.perf_counter()
        extractor.load(paths, blocks)
        warm = time.perf_counter() - start
        size = sum(f.stat().st_size for f in Path(tmp).rglob("*.safetensors"))
    report["cache"] = {"images": 500, "cold_s": round(cold, 2), "cached_s": round(warm, 2),
                       "speedup": round(cold / warm, 1), "cache_mb_per_image": round(size / 500 / 2**20, 3)}
    print("cache", report["cache"], flush=True)


def _env(cache: Path, registry: Path) -> dict:
    env = dict(os.environ)
    env.update(OCC_CACHE_DIR=str(cache), OCC_REGISTRY=str(registry))
    return env


def _seed_backbone(cache: Path) -> None:
    """Give a fresh cache the already-built embedded backbone (so 'cold' means cold features): a link to
    the built folder, which is only read."""
    from occ.backbones.embedded import embedded_dir, ensure_embedded

    ensure_embedded()  # a fresh machine: fetch and build it once, into the default cache
    target = cache / "backbones"
    target.mkdir(parents=True, exist_ok=True)
    if not (target / embedded_dir().name).exists():
        os.symlink(embedded_dir(), target / embedded_dir().name)


def part_enroll(report: dict, work: Path) -> None:

    rows = [r for r in D.manifest(DEVSET) if r["label"] == "sdcheat-sd15"]
    out = {}
    for shots in (5, 10, 25):
        folder = link_folder([DEVSET / r["path"] for r in rows[:shots]], work / f"shots{shots}")
        cache, registry = work / f"cache-enroll-{shots}", work / f"registry-enroll-{shots}"
        _seed_backbone(cache)
        env = _env(cache, registry)
        cold = timed(OCC + ["enroll", "src", str(folder)], env)
        warm = timed(OCC + ["enroll", "src", str(folder), "--replace", "--seed", "1"], env)
        out[f"shots_{shots}"] = {"cold_cache_s": round(cold, 1), "negatives_cached_s": round(warm, 1)}
        print("enroll", shots, out[f"shots_{shots}"], flush=True)
    report["enroll"] = out


LABELS = ["sdcheat-sd15", "cpondoc-dalle2", "imagen-disco", "imagen-dmin", "imagen-glid3", "imagen-ldif",
          "cnndet-biggan", "cnndet-gaugan", "cnndet-stylegan", "dif-mj"]


def _ten_sources(work: Path) -> tuple[Path, Path, dict, list[str]]:
    """A registry with 10 sources enrolled from 6 images each (the default method, lda)."""

    cache, registry = work / "cache-attr", work / "registry-attr"
    env = _env(cache, registry)
    if not registry.exists():
        rows = D.manifest(DEVSET)
        _seed_backbone(cache)
        for label in LABELS:
            shots = [DEVSET / r["path"] for r in rows if r["label"] == label][:6]
            folder = link_folder(shots, work / "shots" / label)
            subprocess.run(OCC + ["enroll", label, str(folder)], env=env, check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return cache, registry, env, LABELS


def part_attribute(report: dict, work: Path) -> None:
    cache, registry, env, labels = _ten_sources(work)
    images = link_folder(devset_images(300, start=700), work / "attr300")
    out = {}
    for n_sources in (1, 10, 100):
        reg = work / f"registry-{n_sources}"
        shutil.rmtree(reg, ignore_errors=True)
        env_n = _env(cache, reg)
        for i in range(n_sources):
            name = labels[i % len(labels)]
            export = work / f"{name}.zip"
            if not export.exists():
                subprocess.run(OCC + ["export", name, str(export)], env=env, check=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            subprocess.run(OCC + ["import", str(export), "--as", f"{name}-{i}"], env=env_n, check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        cold_cache = work / f"cache-cold-{n_sources}"
        shutil.rmtree(cold_cache, ignore_errors=True)
        _seed_backbone(cold_cache)
        cold = timed(OCC + ["attribute", str(images), "--json"], _env(cold_cache, reg))
        warm = timed(OCC + ["attribute", str(images), "--json"], _env(cold_cache, reg))
        out[f"sources_{n_sources}"] = {"first_run_s": round(cold, 2), "second_run_cached_s": round(warm, 2),
                                       "cache_speedup": round(cold / warm, 1)}
        print("attribute", n_sources, out[f"sources_{n_sources}"], flush=True)
    for key in ("first_run_s", "second_run_cached_s"):
        out[f"ratio_100_over_1_{key}"] = round(out["sources_100"][key] / out["sources_1"][key], 3)
    report["attribute"] = out


def part_memory(report: dict, work: Path) -> None:
    """Peak RSS of `occ attribute` over 200 and 2,000 images, 10 sources, cold feature cache (the trunk
    runs for every image)."""
    _, registry, _, _ = _ten_sources(work)
    out = {}
    for n in (200, 2000):
        folder = link_folder(devset_images(n, start=0), work / f"mem{n}")
        mem_cache = work / f"cache-mem-{n}"
        _seed_backbone(mem_cache)
        out[f"peak_rss_mb_{n}_images"] = round(child_rss(OCC + ["attribute", str(folder), "--json"],
                                                         _env(mem_cache, registry)))
        print("memory", n, out[f"peak_rss_mb_{n}_images"], flush=True)
    out["rss_ratio_2000_over_200"] = round(out["peak_rss_mb_2000_images"] / out["peak_rss_mb_200_images"], 3)
    report["memory"] = out


def part_startup(report: dict, work: Path) -> None:
    env = _env(work / "cache-start", work / "registry-start")
    script = [str(Path(sys.executable).parent / "occ")]
    cmd = script if Path(script[0]).exists() else OCC
    helps = [timed(cmd + ["--help"], env) for _ in range(5)]
    sources = [timed(cmd + ["sources"], env) for _ in range(5)]
    report["startup"] = {"help_s_median": round(sorted(helps)[2], 3), "sources_s_median": round(sorted(sources)[2], 3)}
    print("startup", report["startup"], flush=True)


def _import_copies(work: Path, n: int, cache: Path) -> Path:
    """A registry of ``n`` sources: copies (export/import) of one real verifier enrolled once from 6 shots
    with the default method, lda (per-source cost does not depend on the content)."""
    import csv

    base = work / "registry-one"
    if not base.exists():
        rows = [r for r in csv.DictReader(open(DEVSET / "manifest.csv")) if r["label"] == "sdcheat-sd15"]
        folder = link_folder([DEVSET / r["path"] for r in rows[:6]], work / "one-shots")
        subprocess.run(OCC + ["enroll", "src", str(folder)], env=_env(cache, base), check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        subprocess.run(OCC + ["export", "src", str(work / "src.occ.zip")], env=_env(cache, base), check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    reg = work / f"registry-copies-{n}"
    if not reg.exists():
        # set-up, not measured: the library's import without a refit per copy, then one `occ refit`
        # (what n `occ import` calls end with, without n - 1 refits on the way)
        from occ.registry import Registry

        copies = Registry(reg)
        for i in range(n):
            copies.import_file(work / "src.occ.zip", as_name=f"src-{i:03d}", refit=False)
        subprocess.run(OCC + ["refit"], env=_env(cache, reg), check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return reg


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def part_cached(report: dict, work: Path) -> None:
    seed_cache = work / "cache-seed"
    _seed_backbone(seed_cache)
    images = link_folder(devset_images(150, start=1200), work / "cached150")
    out = {"images": 150, "load_before": _load()}
    for n_sources in (1, 100):
        reg = _import_copies(work, n_sources, seed_cache)
        cache = work / f"cache-cached-{n_sources}"
        shutil.rmtree(cache, ignore_errors=True)
        _seed_backbone(cache)
        env = _env(cache, reg)
        cold = timed(OCC + ["attribute", str(images), "--json"], env)
        cached = min(timed(OCC + ["attribute", str(images), "--json"], env) for _ in range(3))
        proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "occ.cli", "attribute", str(images), "--json"],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if "|" in line}
        out[f"sources_{n_sources}"] = {"cold_s": round(cold, 2), "cached_s_best_of_3": round(cached, 2),
                                       "cold_over_cached": round(cold / cached, 1),
                                       "cached_run_imports": {m: m in imported for m in
                                                              ("torch", "transformers", "onnxruntime", "sklearn")}}
        print("cached", n_sources, out[f"sources_{n_sources}"], flush=True)
    for key in ("cold_s", "cached_s_best_of_3"):
        out[f"ratio_100_over_1_{key}"] = round(out["sources_100"][key] / out["sources_1"][key], 3)
    out["load_after"] = _load()
    report["cached"] = out


def _percentiles(values: list[float]) -> dict:
    import numpy as np

    arr = np.asarray(values) * 1000
    return {"p50_ms": round(float(np.percentile(arr, 50)), 1), "p95_ms": round(float(np.percentile(arr, 95)), 1),
            "n": len(values)}


SERVE_SOURCES = (1, 100)  # `--serve-sources`: the registry sizes the serve part measures


def part_serve(report: dict, work: Path) -> None:
    import urllib.request
    import uuid

    seed_cache = work / "cache-seed"
    _seed_backbone(seed_cache)
    cached_image = devset_images(1, start=1500)[0]
    new_images = devset_images(30, start=1600)
    out = {"load_before": _load()}
    for n_sources in SERVE_SOURCES:
        reg = _import_copies(work, n_sources, seed_cache)
        sources_s = sorted(timed(OCC + ["sources"], _env(seed_cache, reg)) for _ in range(3))[1]
        cache = work / f"cache-serve-{n_sources}"
        _seed_backbone(cache)
        proc = subprocess.Popen(OCC + ["serve", "--port", "0", "--log-level", "warning"], env=_env(cache, reg),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            line = ""
            while "serving on" not in line:
                line = proc.stderr.readline()
                if not line and proc.poll() is not None:
                    raise RuntimeError("occ serve did not start")
            url = line.split("serving on ")[1].split()[0] + "/v1/attribute"

            def post(path: Path, url: str = url) -> float:
                boundary = uuid.uuid4().hex
                body = (f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{path.name}"\r\n'
                        f"Content-Type: application/octet-stream\r\n\r\n").encode() + path.read_bytes() \
                    + f"\r\n--{boundary}--\r\n".encode()
                request = urllib.request.Request(url, data=body, method="POST", headers={
                    "Content-Type": f"multipart/form-data; boundary={boundary}"})
                start = time.perf_counter()
                with urllib.request.urlopen(request, timeout=120) as response:
                    answer = json.loads(response.read())
                wall = time.perf_counter() - start
                assert len(answer) == 1 and "scores" in answer[0], answer
                return wall

            post(cached_image)  # first request: the trunk runs and fills the cache
            cached = [post(cached_image) for _ in range(100)]
            new = [post(p) for p in new_images]
        finally:
            proc.terminate()
            proc.wait(30)
        out[f"sources_{n_sources}"] = {"cached_image": _percentiles(cached), "new_image": _percentiles(new),
                                       "occ_sources_s_median_of_3": round(sources_s, 3)}
        print("serve", n_sources, out[f"sources_{n_sources}"], flush=True)
    out["load_after"] = _load()
    report["serve"] = out


ENROLL_SOURCES = (1, 10, 100, 1000)  # `--enroll-sources`: the registry sizes the enroll_scale part measures


def part_enroll_scale(report: dict, work: Path) -> None:
    """Issue 26: `occ enroll` (10 shots, their features and the bank cached), `occ enroll --replace` and
    `occ sources remove` in registries of ENROLL_SOURCES sources, each ending in the registry's own refit."""
    seed_cache = work / "cache-seed"
    _seed_backbone(seed_cache)
    rows = [r for r in D.manifest(DEVSET) if r["label"] == "cpondoc-dalle2"]  # not the copies' generator
    folder = link_folder([DEVSET / r["path"] for r in rows[:10]], work / "scale-shots")
    out = {"load_before": _load()}
    for n_sources in ENROLL_SOURCES:
        reg = _import_copies(work, n_sources, seed_cache)
        env = _env(seed_cache, reg)
        subprocess.run(OCC + ["enroll", "new", str(folder)], env=env, check=True,  # fills the feature cache
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        row = {"remove_s": round(timed(OCC + ["sources", "remove", "new", "--yes"], env), 2),
               "enroll_s": round(timed(OCC + ["enroll", "new", str(folder)], env), 2),
               "replace_s": round(timed(OCC + ["enroll", "new", str(folder), "--replace"], env), 2)}
        subprocess.run(OCC + ["sources", "remove", "new", "--yes"], env=env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        out[f"sources_{n_sources}"] = row
        print("enroll_scale", n_sources, row, flush=True)
    out["load_after"] = _load()
    report["enroll_scale"] = out


def part_ray(report: dict, work: Path) -> None:
    seed_cache = work / "cache-seed"
    _seed_backbone(seed_cache)
    reg = _import_copies(work, 1, seed_cache)
    out = {"load_before": _load()}
    runs = {"plain_threads_1": ["--threads", "1"], "plain_threads_2": ["--threads", "2"],
            "ray_1_worker": ["--engine", "ray", "--workers", "1"],
            "ray_2_workers": ["--engine", "ray", "--workers", "2"]}
    start = 2000
    for n in (100, 500):
        row = {}
        for name, extra in runs.items():
            images = link_folder(devset_images(n, start=start), work / f"ray-{name}-{n}")
            start += n  # other images for every run, each with a fresh feature cache: every image is new to it
            cache = work / f"cache-ray-{name}-{n}"
            _seed_backbone(cache)
            wall = timed(OCC + ["attribute", str(images), "--json", *extra], _env(cache, reg))
            row[name] = {"s": round(wall, 2), "images_per_s": round(n / wall, 2)}
            print("ray", n, name, row[name], flush=True)
        row["ray_2_over_1_workers"] = round(row["ray_1_worker"]["s"] / row["ray_2_workers"]["s"], 3)
        out[f"images_{n}"] = row
    # overhead: what the 400 images between the two sizes cost is throughput; the rest is fixed cost
    for name in runs:
        t100, t500 = out["images_100"][name]["s"], out["images_500"][name]["s"]
        per_image = (t500 - t100) / 400
        out.setdefault("fixed_cost_s", {})[name] = round(t100 - 100 * per_image, 2)
        out.setdefault("steady_images_per_s", {})[name] = round(1 / per_image, 2) if per_image > 0 else None
    out["load_after"] = _load()
    report["ray"] = out


def _start_serve(argv: list[str], env: dict, timeout: float = 600) -> tuple[subprocess.Popen, str]:
    """A child ``occ serve ARGV`` and its 'serving on' line (stderr read on by a thread, so the child's
    log never fills the pipe)."""
    import threading

    proc = subprocess.Popen(OCC + ["serve", *argv], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + timeout
    line, seen = "", []
    while "serving on" not in line:
        line = proc.stderr.readline()
        seen.append(line)
        if (not line and proc.poll() is not None) or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"occ serve did not start: {''.join(seen)[-2000:]}")
    threading.Thread(target=proc.stderr.read, daemon=True).start()
    return proc, line


def _throughput(url: str, path: Path, clients: int, requests: int) -> dict:
    """Requests per second of ``POST url`` with one image, ``clients`` threads sending ``requests`` in all;
    how many each replica answered (the ``X-Occ-Replica`` header)."""
    import threading
    import urllib.request
    import uuid
    from collections import Counter

    boundary = uuid.uuid4().hex
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{path.name}"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + path.read_bytes() \
        + f"\r\n--{boundary}--\r\n".encode()
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    by_replica: Counter = Counter()
    lock = threading.Lock()
    errors: list = []

    def client(n: int) -> None:
        for _ in range(n):
            request = urllib.request.Request(url, data=body, method="POST", headers=headers)
            try:
                with urllib.request.urlopen(request, timeout=120) as response:
                    answer = json.loads(response.read())
                    replica = response.headers.get("X-Occ-Replica")
                assert len(answer) == 1 and "scores" in answer[0], answer
            except Exception as exc:  # counted, reported
                errors.append(f"{type(exc).__name__}: {exc}")
                continue
            with lock:
                by_replica[replica] += 1

    share = [requests // clients + (i < requests % clients) for i in range(clients)]
    threads = [threading.Thread(target=client, args=(n,)) for n in share]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    return {"requests": requests, "clients": clients, "s": round(wall, 2),
            "requests_per_s": round(sum(by_replica.values()) / wall, 2), "errors": len(errors),
            "first_error": errors[0] if errors else None,
            "answered_by_replica": sorted(by_replica.values(), reverse=True)}


def _tree_cpu(root: int) -> dict[str, float]:
    """CPU seconds (user + system) so far of ``root`` and every process under it, summed by name (Ray's
    workers name themselves ``ray::ProxyActor``, ``ray::ServeReplica:...``)."""
    procs = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                name = (entry / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
            except OSError:
                continue
            procs[int(entry.name)] = (int(stat[1]), name.rsplit("/", 1)[-1][:40],
                                      (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK"))
    under, grew = {root}, True
    while grew:
        more = {pid for pid, (ppid, _, _) in procs.items() if ppid in under} - under
        under |= more
        grew = bool(more)
    out: dict[str, float] = {}
    for pid in under & set(procs):
        _, name, cpu = procs[pid]
        out[name] = out.get(name, 0.0) + cpu
    return out


def part_serve_ray(report: dict, work: Path, requests: int = 400, clients: int = 8) -> None:
    """``occ serve --engine ray --replicas 1`` vs ``--replicas 2`` (issue 26): requests per second of
    ``POST /v1/attribute`` with one cached image, ``clients`` concurrent clients, through Ray Serve's HTTP
    proxy, each application on a local Ray runtime of its own; the plain ``occ serve`` for reference."""
    seed_cache = work / "cache-seed"
    _seed_backbone(seed_cache)
    reg = _import_copies(work, 1, seed_cache)
    image = devset_images(1, start=1500)[0]
    out = {"load_before": _load(), "image": image.name, "sources": 1}
    runs = {"plain": [], "ray_1_replica": ["--engine", "ray", "--replicas", "1"],
            "ray_2_replicas": ["--engine", "ray", "--replicas", "2"]}
    for name, extra in runs.items():
        cache = work / "cache-serve-ray"  # one feature cache: the image is cached for every run
        _seed_backbone(cache)
        env = _env(cache, reg)
        env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        proc, line = _start_serve(["--port", "0", "--threads", "1", "--log-level", "warning", *extra], env)
        try:
            url = line.split("serving on ")[1].split()[0] + "/v1/attribute"
            _throughput(url, image, clients, 4 * clients)  # warm-up: the trunk runs once, caching the image
            before = _tree_cpu(proc.pid)
            row = _throughput(url, image, clients, requests)
            after = _tree_cpu(proc.pid)
            # where the CPU went: ms per request in each kind of process of the command (over 0.5 ms)
            row["cpu_ms_per_request"] = {name: round(1000 * (after[name] - before.get(name, 0.0)) / requests, 2)
                                         for name in sorted(after)
                                         if 1000 * (after[name] - before.get(name, 0.0)) / requests > 0.5}
            row["serving_line"] = line.strip()
        finally:
            proc.send_signal(signal.SIGINT)  # a clean stop: the application and its Ray runtime go with it
            try:
                proc.wait(120)
            except subprocess.TimeoutExpired:
                proc.kill()
        out[name] = row
        print("serve_ray", name, {k: v for k, v in row.items() if k != "serving_line"}, flush=True)
    out["ray_2_over_1_replicas"] = round(out["ray_2_replicas"]["requests_per_s"]
                                         / out["ray_1_replica"]["requests_per_s"], 3)
    out["load_after"] = _load()
    report["serve_ray"] = out


def part_threads(report: dict, work: Path) -> None:
    import csv

    rows = [r for r in csv.DictReader(open(DEVSET / "manifest.csv")) if r["label"] == "sdcheat-sd15"]
    folder = link_folder([DEVSET / r["path"] for r in rows[:10]], work / "threads-shots")
    cache = work / "cache-threads"
    _seed_backbone(cache)
    env = _env(cache, work / "registry-threads")
    env.pop("OMP_NUM_THREADS", None)
    env.pop("OCC_NUM_THREADS", None)
    subprocess.run(OCC + ["enroll", "warm", str(folder)], env=env, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)  # negatives and shots cached: what follows is training

    def enroll(name: str, *extra: str) -> subprocess.Popen:  # the same shots under several names: timing only
        return subprocess.Popen(OCC + ["enroll", name, str(folder), "--replace", "--allow-overlap", *extra], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)

    def finish(proc: subprocess.Popen, start: float) -> dict:
        stdout, _ = proc.communicate()
        wall = time.perf_counter() - start
        line = next((ln for ln in stdout.splitlines() if " thread(s)" in ln), "")
        threads = line.split(" on ")[-1].split(" thread")[0].strip() if line else "?"
        return {"s": round(wall, 1), "threads_used": threads}

    def competitor() -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-c", "while True: pass"])

    out = {"cpus": os.cpu_count(), "load_before": _load()}
    start = time.perf_counter()
    out["alone_default"] = finish(enroll("e1"), start)
    # right after another enroll ended: the default (cores others keep busy, measured) beside the count
    # the 1-minute load average gave (occ's default before 2026-12-07), in turn, each right after the last
    for k in range(2):
        start = time.perf_counter()
        out[f"right_after_another_default_{k}"] = finish(enroll("e1"), start)
        by_load = max(1, min(os.cpu_count(), os.cpu_count() - math.floor(os.getloadavg()[0] + 0.5)))
        start = time.perf_counter()
        out[f"right_after_another_load_average_{k}"] = finish(enroll("e1", "--threads", str(by_load)), start)
    hog = competitor()
    try:
        time.sleep(2)
        start = time.perf_counter()
        out["beside_cpu_bound_default"] = finish(enroll("e1"), start)
        start = time.perf_counter()
        out["beside_cpu_bound_threads_2"] = finish(enroll("e1", "--threads", "2"), start)
    finally:
        hog.kill()
        hog.wait()
    start = time.perf_counter()
    a, b = enroll("e1"), enroll("e2")
    out["two_at_once_default"] = [finish(a, start), finish(b, start)]
    out["beside_over_alone"] = round(out["beside_cpu_bound_default"]["s"] / out["alone_default"]["s"], 3)
    out["load_after"] = _load()
    report["threads"] = out
    print("threads", out, flush=True)


PARTS = ("trunk", "cache", "enroll", "attribute", "memory", "startup", "cached", "serve", "ray", "threads",
         "serve_ray", "enroll_scale")


def main() -> None:
    global SERVE_SOURCES, ENROLL_SOURCES
    ap = argparse.ArgumentParser(description="occ performance benchmark")
    ap.add_argument("--only", nargs="+", choices=PARTS, default=list(PARTS))
    ap.add_argument("--out", type=Path)
    ap.add_argument("--serve-sources", type=int, nargs="+", default=list(SERVE_SOURCES),
                    help="registry sizes of the serve part (default 1 100)")
    ap.add_argument("--enroll-sources", type=int, nargs="+", default=list(ENROLL_SOURCES),
                    help="registry sizes of the enroll_scale part (default 1 10 100 1000)")
    args = ap.parse_args()
    SERVE_SOURCES, ENROLL_SOURCES = tuple(args.serve_sources), tuple(args.enroll_sources)
    report: dict = {"command": " ".join(sys.argv),
                    "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                                "python": platform.python_version(), "load_1min_at_start": _load()}}
    with tempfile.TemporaryDirectory(prefix="occ-perf-") as tmp:
        work = Path(tmp)
        for part in args.only:
            try:
                if part in ("trunk", "cache"):
                    globals()[f"part_{part}"](report)
                else:
                    globals()[f"part_{part}"](report, work)
            except Exception as exc:  # one part failing must not lose the others' figures
                report[part] = {"error": f"{type(exc).__name__}: {exc}"}
                print(part, "failed:", exc, flush=True)
            if args.out:  # after every part: a run cut short keeps what it measured
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
