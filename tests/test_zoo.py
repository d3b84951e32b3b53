"""Model zoo: layouts and key names, ZFNet geometry, weights files, ONNX export round trip.

Runs on CPU with random weights (no ImageNet weights are downloaded). The VGG16 export (~550 MB)
is made once for the module and marked slow (about a minute on two cores).
"""
from __future__ import annotations

import functools
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
safetensors_torch = pytest.importorskip("safetensors.torch")

from cnnviz_fast import zoo  # noqa: E402
from cnnviz_fast._metadata import IMAGENET_PREPROCESS, read_metadata  # noqa: E402
from cnnviz_fast.zoo.export import INPUT_NAME, OUTPUT_NAME, export_onnx, export_zoo  # noqa: E402

ZOO_NAMES = ["zfnet", "alexnet", pytest.param("vgg16", marks=pytest.mark.slow)]


def _build(name, seed=0):
    torch.manual_seed(seed)
    return zoo.build(name).eval()


@functools.lru_cache(maxsize=None)
def _built(name, seed=0):
    """A shared model for tests that do not change it (building fills 60-140M parameters)."""
    return _build(name, seed)


def _shapes(module):
    return [(k, tuple(v.shape)) for k, v in module.state_dict().items()]


def _rel_err(a, b):
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


# --- layouts -----------------------------------------------------------------------------------

def _wb(prefix, weight_shape):
    return [(f"{prefix}.weight", weight_shape), (f"{prefix}.bias", weight_shape[:1])]


# pytorchcv zfnet (read from pytorchcv 0.0.74's zfnet/alexnet sources).
ZFNET_KEYS = (
    _wb("features.stage1.unit1.conv", (96, 3, 7, 7)) + _wb("features.stage2.unit1.conv", (256, 96, 5, 5))
    + _wb("features.stage3.unit1.conv", (384, 256, 3, 3)) + _wb("features.stage3.unit2.conv", (384, 384, 3, 3))
    + _wb("features.stage3.unit3.conv", (256, 384, 3, 3)) + _wb("output.fc1.fc", (4096, 9216))
    + _wb("output.fc2.fc", (4096, 4096)) + _wb("output.fc3", (1000, 4096))
)
# torchvision alexnet / vgg16.
ALEXNET_KEYS = (
    _wb("features.0", (64, 3, 11, 11)) + _wb("features.3", (192, 64, 5, 5)) + _wb("features.6", (384, 192, 3, 3))
    + _wb("features.8", (256, 384, 3, 3)) + _wb("features.10", (256, 256, 3, 3))
    + _wb("classifier.1", (4096, 9216)) + _wb("classifier.4", (4096, 4096)) + _wb("classifier.6", (1000, 4096))
)
_VGG_CONVS = [(0, 3, 64), (2, 64, 64), (5, 64, 128), (7, 128, 128), (10, 128, 256), (12, 256, 256),
              (14, 256, 256), (17, 256, 512), (19, 512, 512), (21, 512, 512), (24, 512, 512),
              (26, 512, 512), (28, 512, 512)]
VGG16_KEYS = (
    [kv for i, cin, cout in _VGG_CONVS for kv in _wb(f"features.{i}", (cout, cin, 3, 3))]
    + _wb("classifier.0", (4096, 25088)) + _wb("classifier.3", (4096, 4096)) + _wb("classifier.6", (1000, 4096))
)


@pytest.mark.parametrize("name,keys", [("zfnet", ZFNET_KEYS), ("alexnet", ALEXNET_KEYS), ("vgg16", VGG16_KEYS)])
def test_state_dict_layout(name, keys):
    assert _shapes(_built(name)) == keys


def test_zfnet_parameter_count_matches_pytorchcv():
    # pytorchcv's own test asserts this count for zfnet.
    assert sum(p.numel() for p in _built("zfnet").parameters()) == 62357608


@pytest.mark.parametrize("name", ["zfnet", "alexnet", "vgg16"])
def test_registry(name):
    e = zoo.ZOO[name]
    model = _built(name)
    assert model.layer_names == list(e.layers)
    assert [n for n, _ in model.taps()] == list(e.layers)
    assert all(isinstance(m, torch.nn.ReLU) for _, m in model.taps())
    assert e.input_size == (3, 224, 224)
    assert e.preprocess == IMAGENET_PREPROCESS
    assert e.layers[-2:] == ("fc6", "fc7")
    assert len(e.layers) == (15 if name == "vgg16" else 7)


def test_unknown_model():
    with pytest.raises(ValueError, match="unknown zoo model 'resnet'.*alexnet, resnet18, resnet50, vgg16, zfnet"):
        zoo.build("resnet")


def test_registry_import_does_not_need_torch():
    code = "import sys, cnnviz_fast.zoo as z; assert z.ZOO; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_zfnet_sizes_match_paper():
    model = _built("zfnet")
    s = model.features
    watched = [s.stage1.unit1, s.stage1.pool1, s.stage2.unit1, s.stage2.pool2,
               s.stage3.unit1, s.stage3.unit2, s.stage3.unit3, s.stage3.pool3]
    sizes = []
    hooks = [m.register_forward_hook(lambda m, i, o: sizes.append(tuple(o.shape[1:]))) for m in watched]
    with torch.no_grad():
        model(torch.zeros(1, 3, 224, 224))
    for h in hooks:
        h.remove()
    assert [hw[1] for hw in sizes] == [110, 55, 26, 13, 13, 13, 13, 6]
    assert all(hw[1] == hw[2] for hw in sizes)
    assert [hw[0] for hw in sizes] == [96, 96, 256, 256, 384, 384, 256, 256]


def test_adaptive_pool_pools_off_the_canonical_size():
    from cnnviz_fast.zoo.alexnet import AdaptiveAvgPool2d

    x = torch.randn(2, 4, 9, 7)
    assert torch.equal(AdaptiveAvgPool2d((6, 6))(x), torch.nn.AdaptiveAvgPool2d((6, 6))(x))
    y = torch.randn(2, 4, 6, 6)
    assert AdaptiveAvgPool2d((6, 6))(y) is y


# --- export round trip -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """name -> (torch model, exported ModelProto, ORT outputs, torch outputs) for a batch of 2.

    Exported by export_zoo with random weights, seed 3; the PyTorch side is built with that seed,
    so the comparison also checks that export_zoo's weights are the seeded ones.
    """
    cache = {}

    def get(name):
        if name not in cache:
            e = zoo.ZOO[name]
            path = export_zoo(name, tmp_path_factory.mktemp(name) / f"{name}.onnx", random_weights=True, seed=3)
            model = _built(name, seed=3)
            proto = onnx.load(str(path))
            # Expose the layer tensors as graph outputs to compare them with the PyTorch ReLUs.
            for layer in e.layers:
                proto.graph.output.append(onnx.helper.make_empty_tensor_value_info(layer))
            sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
            x = torch.randn(2, *e.input_size, generator=torch.Generator().manual_seed(1))
            names = [OUTPUT_NAME, *e.layers]
            got = dict(zip(names, sess.run(names, {INPUT_NAME: x.numpy()})))
            want = {}
            hooks = [m.register_forward_hook(lambda m, i, o, n=n: want.__setitem__(n, o.clone().numpy()))
                     for n, m in model.taps()]
            with torch.no_grad():
                want[OUTPUT_NAME] = model(x).numpy()
            for h in hooks:
                h.remove()
            del proto.graph.initializer[:]  # the checks below need the graph, not the weights
            cache[name] = (model, proto, got, want)
        return cache[name]

    return get


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_export_matches_pytorch(exported, name):
    _, _, got, want = exported(name)
    assert got.keys() == want.keys()
    for key in want:
        assert got[key].shape == want[key].shape, key
        assert _rel_err(got[key], want[key]) < 1e-4, key
    assert np.abs(want[OUTPUT_NAME]).max() > 0  # random weights still give a non-trivial output


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_export_graph(exported, name):
    _, proto, _, _ = exported(name)
    graph = proto.graph
    e = zoo.ZOO[name]
    ops = {n.op_type for n in graph.node}
    # A plain chain the reverse plan supports: the adaptive pool left no op, Dropout none either.
    assert ops == ({"Conv", "Relu", "MaxPool", "Flatten", "Gemm"} | ({"LRN"} if name == "zfnet" else set()))
    assert [i.name for i in graph.input] == [INPUT_NAME]
    batch = graph.input[0].type.tensor_type.shape.dim[0]
    assert batch.dim_param and not batch.HasField("dim_value")
    producer = {out: n for n in graph.node for out in n.output}
    for layer in e.layers:
        relu = producer[layer]
        assert relu.op_type == "Relu"
        assert producer[relu.input[0]].op_type == ("Gemm" if layer.startswith("fc") else "Conv")
    relus = [n.output[0] for n in graph.node if n.op_type == "Relu"]
    assert relus == list(e.layers)


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_export_metadata(exported, name):
    _, proto, _, _ = exported(name)
    meta = read_metadata(proto)
    e = zoo.ZOO[name]
    assert meta["model"] == name
    assert meta["layers"] == [{"name": n, "tensor": n, "kind": "fc" if n.startswith("fc") else "conv"}
                              for n in e.layers]
    assert meta["preprocess"] == IMAGENET_PREPROCESS
    assert meta["info"]["random_weights"] is True and meta["info"]["seed"] == 3
    assert meta["info"]["weights"] is None
    assert "labels" not in meta


def test_zfnet_exported_tap_shapes(exported):
    _, _, got, _ = exported("zfnet")
    assert [got[n].shape[1:] for n in ("conv1", "conv2", "conv3", "conv4", "conv5")] == [
        (96, 110, 110), (256, 26, 26), (384, 13, 13), (384, 13, 13), (256, 13, 13)]
    assert got["fc6"].shape == got["fc7"].shape == (2, 4096)


def test_export_onnx_any_module_names_relu_calls(tmp_path):
    # A module without taps(): its ReLU calls are the layers, in forward order.
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                              torch.nn.Flatten(), torch.nn.Linear(8 * 8 * 8, 16), torch.nn.ReLU(),
                              torch.nn.Linear(16, 4))
    with pytest.raises(ValueError, match="makes 2 ReLU calls; give that many layer_names"):
        export_onnx(net, tmp_path / "bad.onnx", input_size=(3, 16, 16), layer_names=["c1"])
    layers = export_onnx(net, tmp_path / "t.onnx", input_size=(3, 16, 16), layer_names=["c1", "f1"],
                         model_name="tiny", labels=["a", "b", "c", "d"])
    assert layers == [{"name": "c1", "tensor": "c1", "kind": "conv"}, {"name": "f1", "tensor": "f1", "kind": "fc"}]
    meta = read_metadata(onnx.load(str(tmp_path / "t.onnx")))
    assert meta["model"] == "tiny" and meta["labels"] == ["a", "b", "c", "d"] and "preprocess" not in meta
    x = torch.randn(5, 3, 16, 16)
    sess = ort.InferenceSession(str(tmp_path / "t.onnx"), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        assert _rel_err(sess.run(None, {INPUT_NAME: x.numpy()})[0], net(x).numpy()) < 1e-5


# --- weights files -----------------------------------------------------------------------------

def _save(state, path):
    if path.suffix == ".safetensors":
        safetensors_torch.save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)


@pytest.fixture(scope="module")
def zfnet_files(tmp_path_factory):
    """The state dict of ZFNet seed 1, saved as .pth, .pt and .safetensors."""
    state = _built("zfnet", seed=1).state_dict()
    root = tmp_path_factory.mktemp("weights")
    paths = {ext: root / f"zfnet{ext}" for ext in (".pth", ".pt", ".safetensors")}
    for path in paths.values():
        _save(state, path)
    return state, paths


@pytest.mark.parametrize("ext", [".pth", ".pt", ".safetensors"])
def test_weights_round_trip(zfnet_files, ext):
    src, paths = zfnet_files
    model = zoo.load_weights(_build("zfnet", seed=2), paths[ext])
    loaded = model.state_dict()
    assert loaded.keys() == src.keys()
    assert all(torch.equal(loaded[k], src[k]) for k in src)


@pytest.mark.parametrize("wrap", ["state_dict", "model", "dataparallel"])
def test_weights_checkpoint_wrappers(tmp_path, wrap):
    # The unwrapping does not depend on the model, so a small one keeps this fast.
    def net():
        return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 1))

    torch.manual_seed(0)
    src = net().state_dict()
    state = {"state_dict": {"state_dict": src, "epoch": 3}, "model": {"model": src, "step": 10},
             "dataparallel": {f"module.{k}": v for k, v in src.items()}}[wrap]
    torch.save(state, tmp_path / "w.pth")
    loaded = zoo.load_weights(net(), tmp_path / "w.pth").state_dict()
    assert all(torch.equal(loaded[k], src[k]) for k in src)


def test_weights_mismatch_names_first_mismatches(tmp_path):
    state = dict(_built("alexnet").state_dict())
    del state["features.0.weight"]
    state["features.99.weight"] = torch.zeros(3)
    state["classifier.6.weight"] = torch.zeros(10, 4096)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(ValueError) as err:
        zoo.load_weights(_built("alexnet"), path, model_name="alexnet")
    msg = str(err.value)
    assert f"weights file {path} does not match alexnet" in msg
    assert "missing features.0.weight" in msg
    assert "unexpected features.99.weight" in msg
    assert "classifier.6.weight has shape [10, 4096] in the file, [1000, 4096] in the model" in msg


def test_weights_of_another_model_are_refused(zfnet_files):
    path = zfnet_files[1][".safetensors"]
    with pytest.raises(ValueError, match=r"missing features\.0\.weight, .* \(and 11 more\); "
                                         r"unexpected features\.stage1\.unit1\.conv\."):
        zoo.load_weights(_built("alexnet"), path, model_name="alexnet")


def test_weights_bad_files(tmp_path):
    model = torch.nn.Conv2d(3, 4, 3)
    with pytest.raises(ValueError, match="unknown extension '.bin'"):
        (tmp_path / "w.bin").write_bytes(b"x")
        zoo.load_weights(model, tmp_path / "w.bin")
    with pytest.raises(FileNotFoundError):
        zoo.load_weights(model, tmp_path / "absent.pth")
    torch.save(model, tmp_path / "whole.pth")  # a pickled module, not a state dict
    with pytest.raises(ValueError, match="weights_only"):
        zoo.load_weights(model, tmp_path / "whole.pth")
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="holds a list, not a state dict"):
        zoo.load_weights(model, tmp_path / "list.pth")


# --- export_zoo --------------------------------------------------------------------------------

def test_export_zoo_refuses_without_weights(tmp_path):
    with pytest.raises(ValueError, match="no weights given.*--weights FILE.*--random-weights"):
        export_zoo("zfnet", tmp_path / "z.onnx")
    with pytest.raises(ValueError, match="not both"):
        export_zoo("zfnet", tmp_path / "z.onnx", weights=tmp_path / "w.pth", random_weights=True)
    with pytest.raises(ValueError, match="unknown zoo model"):
        export_zoo("lenet", tmp_path / "z.onnx", random_weights=True)
    with pytest.raises(FileNotFoundError, match="weights file .*absent.pth does not exist"):
        export_zoo("zfnet", tmp_path / "z.onnx", weights=tmp_path / "absent.pth")
    assert not (tmp_path / "z.onnx").exists()


def test_export_zoo_with_weights_and_labels(tmp_path, zfnet_files):
    model = _built("zfnet", seed=1)
    weights = zfnet_files[1][".safetensors"]
    labels = tmp_path / "labels.txt"
    labels.write_text("".join(f"class {i}\n" for i in range(1000)))
    with pytest.raises(ValueError, match="labels: 2 given, the model has 1000 classes"):
        export_zoo("zfnet", tmp_path / "z.onnx", weights=weights, labels=["a", "b"])

    path = zoo.export_zoo("zfnet", tmp_path / "z.onnx", weights=weights, labels=labels)
    meta = read_metadata(onnx.load(str(path), load_external_data=False))
    assert meta["model"] == "zfnet"
    assert meta["labels"][:2] == ["class 0", "class 1"] and len(meta["labels"]) == 1000
    assert meta["info"]["weights"] == "zfnet.safetensors"
    assert len(meta["info"]["weights_sha256"]) == 64
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.randn(3, 3, 224, 224)
    with torch.no_grad():
        want = model(x).numpy()
    assert _rel_err(sess.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0], want) < 1e-4


def _torchvision_resnet(name, seed=0):
    """torchvision's own ResNet with random weights and BatchNorm statistics (not identities)."""
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(seed)
    net = getattr(torchvision.models, name)(weights=None).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
    return net


@pytest.mark.parametrize("name", ["resnet18", pytest.param("resnet50", marks=pytest.mark.slow)])
def test_resnet_loads_torchvision_weights(tmp_path, monkeypatch, name):
    """A torchvision-keyed .pth (saved from torchvision's ResNet) loads into the zoo's ResNet; the
    exported model computes what torchvision does, its layers are conv1 and the blocks."""
    from cnnviz_fast.graph import Model

    monkeypatch.setenv("CNNVIZ_CACHE", str(tmp_path / "cache"))
    tv = _torchvision_resnet(name)
    weights = tmp_path / f"{name}.pth"
    torch.save(tv.state_dict(), weights)
    model = Model.load(f"zoo:{name}", weights=weights)
    assert [layer.name for layer in model.layers] == list(zoo.entry(name).layers)
    assert model.layers[1].name == "layer1.0" and model.info["weights"] == weights.name
    x = np.random.default_rng(0).normal(size=(2, 3, 224, 224)).astype(np.float32)
    feeds = {model.input_name: x}
    got = ort.InferenceSession(model.serialized(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    taps = {}
    hooks = [tv.get_submodule(n).register_forward_hook(lambda m, i, o, n=n: taps.__setitem__(n, o.numpy().copy()))
             for n in ("relu", "layer2.1" if name == "resnet18" else "layer2.3")]
    with torch.no_grad():
        want = tv(torch.from_numpy(x)).numpy()
    for h in hooks:
        h.remove()
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3 * np.abs(want).max())
    sess = ort.InferenceSession(model.mining_graph(model.layers, heads="native").SerializeToString(),
                                providers=["CPUExecutionProvider"])
    maps = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))
    block = model.layer("layer2.1" if name == "resnet18" else "layer2.3")
    for layer, ref in ((model.layer("conv1"), taps["relu"]), (block, taps[block.name])):
        np.testing.assert_allclose(maps[layer.tensor], ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_resnet_refuses_another_layout(tmp_path):
    net = zoo.build("resnet18")
    state = {k.replace("downsample", "shortcut"): v for k, v in net.state_dict().items()}
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match=r"missing layer2\.0\.downsample\.0\.weight.*unexpected layer2\.0\.shortcut"):
        zoo.load_weights(zoo.build("resnet18"), tmp_path / "bad.pth", "resnet18")


def test_model_from_torch_names_layers_from_module_paths():
    from cnnviz_fast.graph import Model

    tv = _torchvision_resnet("resnet18")
    model = Model.from_torch(tv, input_size=(3, 64, 64))
    assert model.name == "ResNet" and model.input_size == (3, 64, 64) and model.path is None
    assert [layer.name for layer in model.layers] == list(zoo.entry("resnet18").layers)
    x = np.random.default_rng(1).normal(size=(3, 3, 64, 64)).astype(np.float32)
    got = ort.InferenceSession(model.serialized(), providers=["CPUExecutionProvider"]).run(None, {model.input_name: x})[0]
    with torch.no_grad():
        want = tv(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    with pytest.raises(TypeError, match="takes a torch.nn.Module"):
        Model.from_torch(object())
