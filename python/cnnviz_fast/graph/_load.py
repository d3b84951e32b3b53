"""Loading and validating an ONNX model: opset, checker, the image input, a dynamic batch."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ._fold import fold_batchnorm, fold_constants
from .errors import InvalidModel

MIN_OPSET = 11
BATCH_DIM = "N"


@dataclass
class Loaded:
    """A validated model: the proto (batch made dynamic, value_info cleared), its image input."""

    proto: onnx.ModelProto
    folded: int
    sha256: str
    image: str
    input_size: tuple[int, int, int]
    opset: int


def load_file(path: Path) -> Loaded:
    """Read, check and normalise the ONNX file at `path` (external data from its folder)."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InvalidModel(f"cannot read {path}: {exc.strerror or exc}") from None
    sha = hashlib.sha256(raw).hexdigest()
    try:
        proto = onnx.load_model_from_string(raw)
        if any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer):
            onnx.load_external_data_for_model(proto, str(path.parent))
    except Exception as exc:  # protobuf raises DecodeError, RuntimeWarning-ish errors vary by version
        raise InvalidModel(f"{path} is not a readable ONNX model: {exc}") from None
    del raw
    if not proto.graph.node:
        raise InvalidModel(f"{path} is not an ONNX model (no graph nodes)")
    return normalise(proto, sha, str(path))


def normalise(proto: onnx.ModelProto, sha256: str, where: str) -> Loaded:
    """Validate `proto` (opset, checker, one image input), fold constant subgraphs, make the batch
    dynamic, fold BN, infer shapes. `proto` is modified in place and returned in `Loaded`.

    The checker and shape inference see a copy without the large weights: both serialise the
    model, which for VGG16 would copy half a gigabyte twice.
    """
    opset = opset_of(proto)
    if opset < MIN_OPSET:
        raise InvalidModel(f"{where}: opset {opset} is too old; cnnviz_fast needs opset >= {MIN_OPSET} "
                           "(re-export the model, or convert it with onnx.version_converter)")
    _check(_light(proto), where)
    image, size = _image_input(proto, where)
    fold_constants(proto)
    _free_batch(proto, image)
    folded = fold_batchnorm(proto)
    try:
        light = _light(proto)
        del light.graph.value_info[:]
        inferred = onnx.shape_inference.infer_shapes(light, strict_mode=False, data_prop=True)
    except Exception as exc:
        raise InvalidModel(f"{where}: ONNX shape inference fails: {exc}") from None
    g = proto.graph
    del g.value_info[:]
    g.value_info.extend(inferred.graph.value_info)
    del g.output[:]
    g.output.extend(inferred.graph.output)
    return Loaded(proto, folded, sha256, image, size, opset)


def _light(proto: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `proto` for the checker and shape inference: large initializers become typed
    graph inputs (their values matter to neither; small ones, e.g. Reshape targets, stay)."""
    light = onnx.ModelProto(ir_version=proto.ir_version, producer_name=proto.producer_name)
    light.opset_import.extend(proto.opset_import)
    light.functions.extend(proto.functions)
    g, lg = proto.graph, light.graph
    lg.name = g.name
    for field in ("node", "input", "output", "value_info", "sparse_initializer"):
        getattr(lg, field).extend(getattr(g, field))
    inputs = {i.name for i in g.input}
    for t in g.initializer:
        if np.prod(t.dims, dtype=np.int64) <= 4096:
            lg.initializer.append(t)
        elif t.name not in inputs:
            lg.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    return light


def _check(proto: onnx.ModelProto, where: str) -> None:
    """InvalidModel unless the ONNX checker accepts `proto`, possibly once shape inference has
    typed its outputs (some exporters leave graph outputs untyped)."""
    try:
        onnx.checker.check_model(proto)
        return
    except (onnx.checker.ValidationError, ValueError) as exc:
        first = exc
    try:
        onnx.checker.check_model(onnx.shape_inference.infer_shapes(proto))
    except Exception:
        raise InvalidModel(f"{where}: the ONNX checker rejects the model: {first}") from None


def opset_of(proto: onnx.ModelProto) -> int:
    for imp in proto.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    raise InvalidModel("the model imports no default-domain (ai.onnx) opset")


def _image_input(proto: onnx.ModelProto, where: str) -> tuple[str, tuple[int, int, int]]:
    inits = {t.name for t in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in inits]
    if len(inputs) != 1:
        names = ", ".join(i.name for i in inputs) or "none"
        raise InvalidModel(f"{where}: expected exactly one image input [N, 3, H, W], found {len(inputs)} "
                           f"({names})")
    inp = inputs[0]
    t = inp.type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
    if t.elem_type != onnx.TensorProto.FLOAT:
        raise InvalidModel(f"{where}: input {inp.name!r} must be float32, not "
                           f"{onnx.TensorProto.DataType.Name(t.elem_type)}")
    if len(dims) != 4 or dims[1] != 3 or not dims[2] or not dims[3]:
        shown = ["?" if d is None else d for d in dims]
        raise InvalidModel(f"{where}: input {inp.name!r} must be [N, 3, H, W] with fixed H and W, "
                           f"got {shown}")
    return inp.name, (3, int(dims[2]), int(dims[3]))


def _free_batch(proto: onnx.ModelProto, image: str) -> None:
    """Make a fixed batch size dynamic, so that the miner can feed any batch.

    Reshape targets that spell the old batch size out are rewritten to 0 ("copy the input's
    dimension"), which is what a batch-agnostic export writes.
    """
    g = proto.graph
    inp = next(i for i in g.input if i.name == image)
    dim0 = inp.type.tensor_type.shape.dim[0]
    if not dim0.HasField("dim_value"):
        return
    old = dim0.dim_value
    dim0.dim_param = BATCH_DIM
    for out in g.output:
        dims = out.type.tensor_type.shape.dim
        if len(dims) and dims[0].HasField("dim_value") and dims[0].dim_value == old:
            dims[0].dim_param = BATCH_DIM
    inits = {t.name: t for t in g.initializer}
    constants = {n.output[0]: n for n in g.node if n.op_type == "Constant"}
    for node in g.node:
        if node.op_type != "Reshape" or len(node.input) < 2:
            continue
        if any(a.name == "allowzero" and a.i for a in node.attribute):
            continue
        name = node.input[1]
        if name in inits:
            shape = numpy_helper.to_array(inits[name])
        elif name in constants:
            value = next((a for a in constants[name].attribute if a.name == "value"), None)
            if value is None:
                continue
            shape = numpy_helper.to_array(value.t)
        else:
            continue
        if shape.ndim != 1 or not len(shape) or shape[0] != old:
            continue
        fixed = shape.astype(np.int64).copy()
        fixed[0] = 0
        new_name = f"{name}__batch_free_{len(g.initializer)}"
        g.initializer.append(numpy_helper.from_array(fixed, new_name))
        node.input[1] = new_name
