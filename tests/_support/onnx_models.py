"""ONNX Runtime runs, torch exports and small CNNs written with onnx.helper, for the tests."""
from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper


def session(proto: onnx.ModelProto | bytes) -> ort.InferenceSession:
    raw = proto if isinstance(proto, bytes) else proto.SerializeToString()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    return ort.InferenceSession(raw, opts, providers=["CPUExecutionProvider"])


def run(proto, feeds: dict, outputs=None) -> dict:
    sess = session(proto)
    names = outputs or [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds)))


def ort_tap(model, x: np.ndarray, layer) -> np.ndarray:
    """ONNX Runtime's value of `layer`'s tapped tensor for images x (the model's projection graph)."""
    return run(model.projection_graph(layer), {model.input_name: x}, [model.layer(layer).tensor])[model.layer(layer).tensor]


def export_torch(module, input_size, opset: int = 17) -> onnx.ModelProto:
    """torch.onnx export (TorchScript exporter; dynamo needs onnxscript), dynamic batch."""
    import torch

    module.eval()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.zeros(1, *input_size),), buf, input_names=["image"],
                          output_names=["out"], dynamic_axes={"image": {0: "n"}, "out": {0: "n"}},
                          opset_version=opset, dynamo=False)
    return onnx.load_from_string(buf.getvalue())


def relu_names(proto: onnx.ModelProto) -> list[str]:
    """Output tensor names of the Relu nodes in graph order (= call order for a traced Sequential)."""
    return [n.output[0] for n in proto.graph.node if n.op_type == "Relu"]


def const(name: str, value) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value), name)


def make_model(nodes, inits, input_shape, opset: int = 17, outputs=("out",),
               input_name: str = "pixels") -> onnx.ModelProto:
    """A model from helper nodes; graph outputs typed by shape inference."""
    graph = helper.make_graph(
        nodes, "foreign", [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, input_shape)],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    typed = onnx.shape_inference.infer_shapes(model)
    del model.graph.output[:]
    model.graph.output.extend(typed.graph.output)
    return model


def foreign_model(middle: str | None = None, seed: int = 0, batch: int | str = 1) -> onnx.ModelProto:
    """A CNN written with onnx.helper, as another framework might export it (fixed batch 1):

    conv1(+bias) -> BN -> Relu "act1" -> MaxPool 3/2 (pads bottom/right 1, ceil) -> [middle] ->
    Pad (top 2, right 1) -> conv2 (no bias, stride 2) -> BN -> Relu (unnamed) -> Flatten ->
    Gemm (transB) -> Relu "fc_act" -> Gemm -> "logits". `middle` is an op type inserted after the
    pool (e.g. "Sigmoid"), named "/features/Sigmoid_1" as exporters name nodes.
    """
    rng = np.random.default_rng(seed)

    def rand(*shape, lo=-1.0, hi=1.0):
        return rng.uniform(lo, hi, shape).astype(np.float32)

    def bn(prefix, c):
        return [const(f"{prefix}_{k}", v) for k, v in (("scale", rand(c, lo=0.5, hi=1.5)), ("b", rand(c)),
                                                        ("mean", rand(c)), ("var", rand(c, lo=0.2, hi=2)))]

    inits = [const("w1", rand(6, 3, 3, 3)), const("b1", rand(6)), *bn("bn1", 6),
             const("pads", np.array([0, 0, 2, 0, 0, 0, 0, 1], np.int64)),
             const("w2", rand(8, 6, 3, 3)), *bn("bn2", 8),
             const("fc1_w", rand(16, 8 * 6 * 5, lo=-0.2, hi=0.2)), const("fc1_b", rand(16)),
             const("fc2_w", rand(16, 5)), const("fc2_b", rand(5))]
    after_pool = "pool1"
    nodes = [
        helper.make_node("Conv", ["pixels", "w1", "b1"], ["c1"], "conv1", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", "bn1_scale", "bn1_b", "bn1_mean", "bn1_var"], ["n1"],
                         "bn1", epsilon=1e-3),
        helper.make_node("Relu", ["n1"], ["r1"], "act1"),
        helper.make_node("MaxPool", ["r1"], ["pool1"], "pool1", kernel_shape=[3, 3], strides=[2, 2],
                         pads=[0, 0, 1, 1], ceil_mode=1),
    ]
    if middle:
        nodes.append(helper.make_node(middle, ["pool1"], ["mid"], "/features/Sigmoid_1"
                                      if middle == "Sigmoid" else f"/features/{middle}"))
        after_pool = "mid"
    nodes += [
        helper.make_node("Pad", [after_pool, "pads"], ["padded"], "pad", mode="constant"),
        helper.make_node("Conv", ["padded", "w2"], ["c2"], "conv2", strides=[2, 2]),
        helper.make_node("BatchNormalization", ["c2", "bn2_scale", "bn2_b", "bn2_mean", "bn2_var"], ["n2"], "bn2"),
        helper.make_node("Relu", ["n2"], ["relu2_out"]),
        helper.make_node("Flatten", ["relu2_out"], ["flat"], "flatten", axis=1),
        helper.make_node("Gemm", ["flat", "fc1_w", "fc1_b"], ["g1"], "fc1", transB=1),
        helper.make_node("Relu", ["g1"], ["f1"], "fc_act"),
        helper.make_node("Gemm", ["f1", "fc2_w", "fc2_b"], ["logits"], "fc2", alpha=0.5),
    ]
    return make_model(nodes, inits, [batch, 3, 21, 21], outputs=("logits",))
