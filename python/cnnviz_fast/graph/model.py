"""`Model`: an ONNX CNN as cnnviz_fast sees it — layers, receptive fields, mining and reverse graphs.

    model = Model.load("zfnet", weights="zfnet.pth")      # or an .onnx path, "demo", "resnet50"
    model = Model.load("keras.onnx", preprocess={"scale": 1.0, "mean": [0, 0, 0], "std": [1, 1, 1]})
    model = Model.from_torch(torchvision.models.resnet18(), input_size=(3, 224, 224))
    model.layers                                          # default taps (see `taps`)
    model.taps("all")                                     # ... plus every activation
    model.mining_graph(model.layers)                      # ONNX: <layer>:max / <layer>:argmax
    plan = model.reverse_plan("conv3")                    # deconvnet steps back to the pixels
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Sequence

import onnx

from .._metadata import IMAGENET_PREPROCESS, parse_preprocess, read_metadata
from ..data.decode import Preprocess
from ._layers import Layer
from ._reverse import ReversePlan
from .errors import InvalidModel
from ._index import GraphIndex
from ._layers import discover, make_layers
from ._load import Loaded, load_file, normalise
from ._mining import mining_graph, prune
from ._receptive import receptive_fields
from ._reverse import reverse_plan

ZOO_NAMES = ("zfnet", "alexnet", "vgg16", "resnet18", "resnet50")
DEMO = "demo"


class Model:
    """A loaded, validated ONNX model (BatchNormalization folded into its Convs).

    Attributes: `path` (the ONNX file, None for `from_proto`), `proto` (the folded model, dynamic
    batch, inferred shapes), `sha256` (of the original file bytes), `name`, `input_name`,
    `input_size` (3, H, W), `input_layout` ("NCHW", or "NHWC" for a file whose input was
    channels-last: the Model's input is NCHW all the same), `opset`, `preprocess` (as in
    `cnnviz_fast._metadata`, validated), `labels`,
    `info`, `layers` (default taps), `all_layers` (plus the fully connected ones).
    """

    def __init__(self, loaded: Loaded, path: Path | None, name: str | None = None,
                 preprocess: dict | str | os.PathLike | None = None):
        meta = read_metadata(loaded.proto)
        self.path = path
        self.proto = loaded.proto
        self.sha256 = loaded.sha256
        self.folded_batchnorms = loaded.folded
        self.input_name = loaded.image
        self.input_size = loaded.input_size
        self.opset = loaded.opset
        self.name = meta.get("model") or name or (path.stem if path else "model")
        self.input_layout = loaded.layout
        self.preprocess = dict(meta.get("preprocess") or _default_preprocess(self.input_size))
        if preprocess is not None:
            self.preprocess.update(parse_preprocess(preprocess))
        try:
            Preprocess.from_metadata(self.preprocess, tuple(self.input_size[1:]))
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidModel(f"{self.name}: unusable preprocessing: {exc}") from None
        self.labels: list[str] | None = meta.get("labels")
        self.info: dict[str, Any] = dict(meta.get("info") or {})
        self._index = GraphIndex(self.proto, self.input_name)
        self._shapes: dict[str, tuple] = {}
        self._complete_shapes()
        self._fields = receptive_fields(self._index, self.input_size[1:])
        self.all_layers: list[Layer]
        self.layers: list[Layer]
        self.all_layers, self.layers = discover(self._index, meta.get("layers"), self._fields, self._shape_of)

    @classmethod
    def load(cls, path_or_zoo_name: str | os.PathLike, weights: str | os.PathLike | None = None,
             random_weights: bool = False, seed: int = 0,
             preprocess: dict | str | os.PathLike | None = None) -> "Model":
        """Load an .onnx file, or a zoo model ("zfnet", "alexnet", "vgg16", "resnet18", "resnet50",
        also "zoo:NAME") from local `weights` (or `random_weights=True`, seeded), or the shipped
        "demo" model. `preprocess` (a dict, JSON text or a JSON file; keys as the file's
        `cnnviz.preprocess` metadata, see `cnnviz_fast._metadata`) overrides the file's keys."""
        target = os.fspath(path_or_zoo_name)
        zoo_name = target[4:] if target.startswith("zoo:") else target
        # A zoo name wins unless a *file* of that name exists (a folder called "demo" is no model).
        if not os.path.isfile(target) and zoo_name.lower() in ZOO_NAMES + (DEMO,):
            target = _zoo_file(zoo_name.lower(), weights, random_weights, seed)
        elif weights is not None or random_weights:
            raise ValueError("weights / random_weights apply to zoo models only; an ONNX file carries "
                             "its own weights")
        path = Path(target)
        if not path.is_file():
            raise InvalidModel(f"{target}: no such file, and not a zoo model "
                               f"({', '.join(ZOO_NAMES + (DEMO,))})")
        return cls(load_file(path), path, preprocess=preprocess)

    @classmethod
    def from_proto(cls, proto: onnx.ModelProto, name: str | None = None,
                   preprocess: dict | str | os.PathLike | None = None) -> "Model":
        """A Model from an in-memory ModelProto (copied; sha256 of its serialisation)."""
        raw = proto.SerializeToString()
        copy = onnx.load_model_from_string(raw)
        return cls(normalise(copy, hashlib.sha256(raw).hexdigest(), name or "<memory>"), None, name,
                   preprocess=preprocess)

    @classmethod
    def from_torch(cls, module, input_size: Sequence[int] = (3, 224, 224), name: str | None = None,
                   preprocess: dict | str | os.PathLike | None = None, opset: int = 17) -> "Model":
        """A Model from a torch `nn.Module` (eval mode), exported in memory by torch.onnx's
        TorchScript exporter with a dynamic batch; node names keep the module paths, so layers are
        named `layer1.0`, `features.3`, .... torch is imported only here."""
        from ._torch import export_module

        return cls.from_proto(export_module(module, input_size, opset),
                              name=name or type(module).__name__, preprocess=preprocess)

    def __repr__(self) -> str:
        return (f"Model({self.name!r}, input {list(self.input_size)}, "
                f"layers {[layer.name for layer in self.all_layers]})")

    def layer(self, name: str) -> Layer:
        """The layer called `name` (or tapping tensor `name`); ValueError listing them if unknown."""
        return self.taps([name])[0]

    def taps(self, spec: str | Sequence[str | Layer] | None = None) -> list[Layer]:
        """Layers for a spec: None / "default", "all", a comma-separated string, or names (layer
        names or raw tensor names).

        Default: the file's `cnnviz.layers` conv layers; else for a chain CNN the activation after
        each Conv (ReLU, or SiLU, HardSwish, GELU, ...); else the blocks named after the module
        paths (`layer1.0`, `features.denseblock1`, `inception3a`, `blocks.2.1`,
        `stages.1.blocks.0`; see `graph._blocks`). "all": plus the fully connected activations
        (chains) or every activation (other nets)."""
        if spec is None or spec == "default":
            return list(self.layers)
        if spec == "all":
            return list(self.all_layers)
        if isinstance(spec, str):
            spec = [s.strip() for s in spec.split(",") if s.strip()]
        by_name = {layer.name: layer for layer in self.all_layers}
        by_tensor = {layer.tensor: layer for layer in self.all_layers}
        out, unknown = [], []
        for item in spec:
            if isinstance(item, Layer):
                out.append(item)
            elif item in by_name or item in by_tensor:
                out.append(by_name.get(item) or by_tensor[item])
            elif item in self._index.data and item != self.input_name:
                out.extend(make_layers(self._index, [(item, item, _kind_of(self._shape_of(item)))],
                                       self._fields, self._shape_of))
            else:
                unknown.append(item)
        if unknown:
            raise ValueError(f"unknown layer{'s' if len(unknown) > 1 else ''} "
                             f"{', '.join(map(repr, unknown))}; available: "
                             f"{', '.join(by_name) or '(none found)'} (or any image-dependent tensor name)")
        return list({layer.name: layer for layer in out}.values())

    def layer_candidates(self, limit: int = 12) -> list[str]:
        """Tensors worth naming with --layers when there are no default layers: image-dependent
        [N, C, H, W] maps computed after a Conv, in forward order (at most `limit`)."""
        idx, out = self._index, []
        after_conv = False
        for node in idx.nodes:
            after_conv |= node.op_type == "Conv" and node.output[0] in idx.data
            t = node.output[0] if node.output else ""
            if after_conv and t in idx.data and idx.spatial(t) is not None and len(idx.shape(t)) == 4:
                out.append(t)
        if len(out) > limit:  # spread over the depth of the net
            out = [out[round(k * (len(out) - 1) / (limit - 1))] for k in range(limit)]
        return out

    def no_layers_message(self) -> str:
        """Why there is nothing to mine by default, and which tensors could be named instead."""
        cands = self.layer_candidates()
        return (f"model {self.name} has no default layers (no activation after a Conv, no block "
                f"outputs); name tensors with --layers, e.g. candidate tensors: "
                f"{', '.join(cands) if cands else '(none: no 4-D map after a Conv)'}")

    def mining_graph(self, layers: str | Sequence[str | Layer] | None = None,
                     heads: str = "graph") -> onnx.ModelProto:
        """The model pruned to what `layers` need (default taps when None), with outputs:

        heads="graph": per layer `<name>:max` float32 [N, C] and `<name>:argmax` int32 [N, C]
        (first maximum, y*W + x), see `Layer.max_output` / `Layer.argmax_output`;
        heads="native": the tapped tensors themselves (named as `Layer.tensor`), to be reduced
        by `cnnviz_fast._C.unit_max` (fc layers are [N, C]: view them as [N, C, 1, 1]).
        """
        return mining_graph(self._index, self.taps(layers), heads)

    def reverse_plan(self, layer: str | Layer) -> ReversePlan:
        """The deconvnet plan of `layer` (raises UnsupportedOp for an op it cannot reverse)."""
        layer = layer if isinstance(layer, Layer) else self.layer(layer)
        return reverse_plan(self._index, layer, functools.partial(self._blocked, extra=layer))

    def projection_graph(self, layer: str | Layer) -> onnx.ModelProto:
        """A forward graph whose outputs are the plan's `forward_outputs` (named as the tensors):
        the tapped tensor, every MaxPool input (switches) and every ReLU output on the path."""
        return prune(self._index, self.reverse_plan(layer).forward_outputs)

    def serialized(self) -> bytes:
        """The folded model as bytes (for onnxruntime.InferenceSession)."""
        return self.proto.SerializeToString()

    def _blocked(self, node_index: int, extra: Layer) -> list[str]:
        """Names of the layers whose tensors depend on node `node_index`."""
        names = [layer.name for layer in self.all_layers
                 if node_index in self._index.ancestors(layer.tensor)]
        if extra.name not in names:
            names.append(extra.name)
        return names

    def _complete_shapes(self) -> None:
        """Shapes that inference left symbolic (a Reshape to a target computed from Shape, as
        ShuffleNet's channel shuffle exports) from one ONNX Runtime run at batch 1, so that
        layers, blocks and receptive fields see them."""
        idx = self._index
        unknown = [t for t in idx.data if t != self.input_name and not _known(idx.shape(t))]
        if not unknown:
            return
        try:
            found = _run_shapes(self, unknown)
        except Exception:  # ORT cannot run it here: layers fall back to what inference knows
            return
        idx.shapes.update(found)
        self._shapes.update(found)

    def _shape_of(self, tensor: str) -> tuple:
        shape = self._index.shape(tensor)
        if shape is not None and len(shape) >= 2 and all(isinstance(d, int) for d in shape[1:]):
            return tuple(shape)
        if tensor not in self._shapes:
            self._shapes.update(_run_shapes(self, [tensor]))
        return self._shapes[tensor]


def _known(shape: tuple | None) -> bool:
    return shape is not None and all(isinstance(d, int) for d in shape[1:])


def _kind_of(shape: tuple) -> str:
    return "fc" if len(shape) == 2 else "conv"


def _default_preprocess(input_size: tuple[int, int, int]) -> dict:
    """ImageNet normalisation; crop = the model's input side, resize scaled as 256 is to 224."""
    _, h, w = input_size
    pre = dict(IMAGENET_PREPROCESS)
    pre["crop"] = h if h == w else [h, w]
    pre["resize"] = round(min(h, w) * 256 / 224)
    return pre


def _run_shapes(model: Model, tensors: list[str]) -> dict[str, tuple]:
    """Shapes of `tensors` from one ONNX Runtime run on a zero image (when inference has none)."""
    import numpy as np

    from ..runtime import session

    proto = prune(model._index, tensors)
    sess = session(proto, "cpu", what="a shape probe")
    outs = sess.run(tensors, {model.input_name: np.zeros((1, *model.input_size), np.float32)})
    return {t: ("N", *o.shape[1:]) for t, o in zip(tensors, outs)}


def _zoo_file(name: str, weights, random_weights: bool, seed: int) -> str:
    """Path of the ONNX file for a zoo name: the shipped demo, or a cached export."""
    if name == DEMO:
        if weights is not None or random_weights:
            raise ValueError("the demo model ships with its weights; weights / random_weights do not apply")
        return str(_demo_path())
    if weights is None and not random_weights:
        raise ValueError(f"zoo model {name!r} needs weights: Model.load({name!r}, weights='FILE') with a "
                         "local .pth/.safetensors state dict, or random_weights=True for an untrained one")
    from .. import zoo  # imports torch only when a model is actually exported

    code = hashlib.sha256()
    for source in sorted(Path(zoo.__file__).parent.glob("*.py")):
        code.update(source.name.encode() + source.read_bytes())
    key: dict[str, Any] = {"name": name, "seed": seed, "random": bool(random_weights)}
    if weights is not None:
        w = Path(weights).resolve()
        if not w.is_file():
            raise InvalidModel(f"weights file {weights} does not exist")
        st = w.stat()
        key["weights"] = [str(w), st.st_size, st.st_mtime_ns]
    wkey = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    cache = _cache_dir()
    target = cache / f"{name}-{wkey}-{code.hexdigest()[:12]}.onnx"
    if not target.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        tmp = cache / f".{target.name}.{os.getpid()}.tmp"
        zoo.export_zoo(name, tmp, weights=weights, random_weights=random_weights, seed=seed)
        os.replace(tmp, target)
        for stale in cache.glob(f"{name}-{wkey}-*.onnx"):  # exports by older zoo code
            if stale != target:
                stale.unlink(missing_ok=True)
    return str(target)


def _cache_dir() -> Path:
    """$CNNVIZ_CACHE, else the user's cache folder (XDG), where exported zoo models are kept."""
    if os.environ.get("CNNVIZ_CACHE"):
        return Path(os.environ["CNNVIZ_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or (Path.home() / ".cache")
    return Path(base) / "cnnviz_fast" / "zoo"


def _demo_path() -> Path:
    try:
        from .. import zoo

        candidates = [Path(zoo.__file__).parent / "demo.onnx"]
    except ImportError:
        candidates = []
    candidates.append(Path(__file__).resolve().parents[2] / "models" / "demo.onnx")
    for p in candidates:
        if p.is_file():
            return p
    raise InvalidModel("the demo model (models/demo.onnx) is missing; train it with "
                       "`python models/train_demo.py --out models/demo.onnx`")
