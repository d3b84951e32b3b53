"""Loading and validating an ONNX model: opset, checker, the image input, a dynamic batch.

The image input may be NCHW ([N, 3, H, W]) or NHWC ([N, H, W, 3], as tf2onnx writes Keras
models). An NHWC model is normalised at load to an NCHW input of the same name followed by a
Transpose to NHWC, so that every later stage (mining graph, uint8 input, reverse plan, receptive
fields) sees the one layout; when the model's first op is the inverse Transpose (tf2onnx's own),
the pair cancels and nothing is added. `Loaded.layout` records the file's layout.
"""
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
    layout: str = "NCHW"


def load_file(path: Path) -> Loaded:
    """Read, check and normalise the ONNX file at `path` (external data from its folder)."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InvalidModel(f"cannot read {path}: {exc.strerror or exc}") from None
    sha = hashlib.sha256(raw).hexdigest()
    try:
        proto = onnx.load_model_from_string(raw)
        # Every tensor, Constant attributes and subgraphs included (not only initializers): any
        # external data is read from the model's folder, and onnx refuses a location outside it.
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
    image, size, layout = _image_input(proto, where)
    fold_constants(proto)
    _free_batch(proto, image)
    if layout == "NHWC":
        _to_nchw(proto, image)
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
    _check_batch_free(proto, image, where)
    return Loaded(proto, folded, sha256, image, size, opset, layout)


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


def _image_input(proto: onnx.ModelProto, where: str) -> tuple[str, tuple[int, int, int], str]:
    """(name, (3, H, W), "NCHW" | "NHWC") of the one float image input."""
    inits = {t.name for t in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in inits]
    if len(inputs) != 1:
        names = ", ".join(i.name for i in inputs) or "none"
        raise InvalidModel(f"{where}: expected exactly one image input [N, 3, H, W] or [N, H, W, 3], "
                           f"found {len(inputs)} ({names})")
    inp = inputs[0]
    t = inp.type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
    if t.elem_type != onnx.TensorProto.FLOAT:
        raise InvalidModel(f"{where}: input {inp.name!r} must be float32, not "
                           f"{onnx.TensorProto.DataType.Name(t.elem_type)}")
    if len(dims) == 4 and dims[1] != 3 and dims[3] == 3 and dims[1] and dims[2]:
        return inp.name, (3, int(dims[1]), int(dims[2])), "NHWC"
    if len(dims) != 4 or dims[1] != 3 or not dims[2] or not dims[3]:
        shown = ["?" if d is None else d for d in dims]
        raise InvalidModel(f"{where}: input {inp.name!r} must be [N, 3, H, W] (or [N, H, W, 3]) with "
                           f"fixed H and W, got {shown}")
    return inp.name, (3, int(dims[2]), int(dims[3])), "NCHW"


def _to_nchw(proto: onnx.ModelProto, image: str) -> None:
    """Give an NHWC model an NCHW input of the same name (see the module docstring)."""
    g = proto.graph
    inp = next(i for i in g.input if i.name == image)
    dims = inp.type.tensor_type.shape.dim
    n, h, w, c = (onnx.TensorShapeProto.Dimension() for _ in range(4))
    for new, old in zip((n, h, w, c), dims):
        new.CopyFrom(old)
    del dims[:]
    dims.extend([n, c, h, w])
    nhwc = f"{image}__nhwc"
    graph_outputs = {o.name for o in g.output}
    replaced = {}
    for node in g.node:  # tf2onnx's own NHWC -> NCHW Transpose right after the input cancels ours
        if (node.op_type == "Transpose" and list(node.input) == [image] and node.output[0] not in graph_outputs
                and [int(p) for p in next((a.ints for a in node.attribute if a.name == "perm"), [])] == [0, 3, 1, 2]):
            replaced[node.output[0]] = image
    keep = [node for node in g.node if not (node.op_type == "Transpose" and node.output[0] in replaced)]
    used = False
    for node in keep:
        for k, t in enumerate(node.input):
            if t in replaced:
                node.input[k] = replaced[t]
            elif t == image:
                node.input[k] = nhwc
                used = True
    del g.node[:]
    if used or image in graph_outputs:
        g.node.append(helper.make_node("Transpose", [image], [nhwc], "cnnviz_nchw_to_nhwc", perm=[0, 2, 3, 1]))
        for o in g.output:
            if o.name == image:
                o.name = nhwc
    g.node.extend(keep)


def _free_batch(proto: onnx.ModelProto, image: str) -> None:
    """Make a fixed batch size dynamic, so that the miner can feed any batch.

    Reshape targets of image data that spell the old batch size out are rewritten to 0 ("copy the
    input's dimension"), which is what a batch-agnostic export writes. With allowzero=1 (the
    dynamo exporter writes it) a 0 would mean a literal zero, so the node is switched to
    allowzero=0 when its target holds no other zero (then both readings agree), else the batch
    entry becomes -1 when the target has no -1 yet. Anything else is left for `_check_batch_free`.
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
    data = {image}
    for node in g.node:
        if node.op_type not in ("Shape", "Size") and any(t in data for t in node.input):
            data.update(node.output)
    for node in g.node:
        if node.op_type != "Reshape" or len(node.input) < 2 or node.input[0] not in data:
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
        allowzero = next((a for a in node.attribute if a.name == "allowzero"), None)
        if allowzero is not None and allowzero.i:
            if not np.any(fixed[1:] == 0):
                allowzero.i = 0
                fixed[0] = 0
            elif not np.any(fixed == -1):
                fixed[0] = -1
            else:
                continue
        else:
            fixed[0] = 0
        new_name = f"{name}__batch_free_{len(g.initializer)}"
        g.initializer.append(numpy_helper.from_array(fixed, new_name))
        node.input[1] = new_name


# Ops whose output shape can come from a constant, and so can pin the batch size.
_SHAPING = {"Reshape", "Expand", "Tile", "Resize", "Slice", "ConstantOfShape", "Range"}


def _check_batch_free(proto: onnx.ModelProto, image: str, where: str) -> None:
    """InvalidModel naming the first node that fixes the batch size of image data (shape inference
    gives its output a constant first dimension where its input's is the batch)."""
    g = proto.graph
    dims = {}
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        shape = vi.type.tensor_type.shape
        if vi.type.tensor_type.HasField("shape") and len(shape.dim):
            d = shape.dim[0]
            dims[vi.name] = d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
    data = {image}
    for node in g.node:
        if node.op_type in ("Shape", "Size") or not any(t in data for t in node.input):
            continue
        data.update(node.output)
        if node.op_type not in _SHAPING:
            continue
        batched = [t for t in node.input if t in data and isinstance(dims.get(t), str)]
        fixed = [t for t in node.output if isinstance(dims.get(t), int)]
        if batched and fixed:
            raise InvalidModel(
                f"{where}: node {node.name or node.output[0]!r} ({node.op_type}) fixes the batch size to "
                f"{dims[fixed[0]]} (its output {fixed[0]!r} has a constant first dimension), so the model "
                "cannot run batches of other sizes. Re-export it with a dynamic batch axis "
                "(torch.onnx.export(..., dynamic_axes={'input': {0: 'N'}}), or dynamo=True with "
                "dynamic_shapes), or give that node a target shape of 0 or -1 in the batch position")
