"""The synthetic image generator and the shipped demo model trained on it."""
from __future__ import annotations

import importlib.resources

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from PIL import Image

from cnnviz_fast._metadata import read_metadata
from cnnviz_fast.datasets import synthetic

# A dataset seed that train_demo.py never uses (it derives its seeds with image_seed).
FRESH_SEED = 2024


def pixels(img: Image.Image) -> np.ndarray:
    return np.asarray(img)


def files(paths, root) -> dict:
    """{relative path: file bytes}"""
    return {p.relative_to(root): p.read_bytes() for p in paths}


def test_classes_are_about_ten_distinct_names():
    assert 8 <= len(synthetic.CLASSES) <= 12
    assert len(set(synthetic.CLASSES)) == len(synthetic.CLASSES)


@pytest.mark.parametrize("label", range(len(synthetic.CLASSES)))
@pytest.mark.parametrize("size", [64, 37])
def test_every_class_draws_a_visible_rgb_image(label, size):
    img = synthetic.draw(7, label, size)
    assert img.mode == "RGB" and img.size == (size, size)
    assert pixels(img).astype(float).std() > 5.0


def test_same_arguments_give_identical_pixels():
    for label in range(len(synthetic.CLASSES)):
        a, b = synthetic.draw(123, label), synthetic.draw(123, label)
        np.testing.assert_array_equal(pixels(a), pixels(b))


def test_different_seeds_or_labels_give_different_images():
    for label in range(len(synthetic.CLASSES)):
        assert not np.array_equal(pixels(synthetic.draw(1, label)), pixels(synthetic.draw(2, label)))
    assert not np.array_equal(pixels(synthetic.draw(1, 0)), pixels(synthetic.draw(1, 1)))


def test_invalid_label_raises():
    with pytest.raises(ValueError):
        synthetic.draw(0, len(synthetic.CLASSES))
    with pytest.raises(ValueError):
        synthetic.draw(0, -1)


def test_generate_writes_the_class_tree_in_sorted_order(tmp_path):
    n = 23
    paths = synthetic.generate(tmp_path, n, seed=5, size=48)
    assert len(paths) == n
    assert paths == sorted(paths)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(synthetic.CLASSES)
    for i in range(n):
        path = tmp_path / synthetic.CLASSES[i % len(synthetic.CLASSES)] / f"{i:06d}.jpg"
        assert path in paths
    for path in paths:
        with Image.open(path) as img:
            assert img.format == "JPEG" and img.mode == "RGB" and img.size == (48, 48)


def test_generate_is_deterministic_and_prefix_stable(tmp_path):
    a = synthetic.generate(tmp_path / "a", 12, seed=9)
    b = synthetic.generate(tmp_path / "b", 12, seed=9)
    c = synthetic.generate(tmp_path / "c", 5, seed=9)
    d = synthetic.generate(tmp_path / "d", 12, seed=10)
    ra, rb, rc, rd = (files(paths, tmp_path / name) for paths, name in zip((a, b, c, d), "abcd"))
    assert ra == rb
    assert all(ra[k] == v for k, v in rc.items())
    assert all(ra[k] != rd[k] for k in ra)


# The shipped demo model.

@pytest.fixture(scope="module")
def demo_path():
    path = importlib.resources.files("cnnviz_fast.zoo") / "demo.onnx"
    assert path.is_file(), "demo.onnx is not installed with the cnnviz_fast.zoo package"
    return path


@pytest.fixture(scope="module")
def demo(demo_path):
    model = onnx.load(str(demo_path))
    return model, read_metadata(model)


def test_demo_is_small_and_valid(demo_path, demo):
    assert demo_path.stat().st_size <= 4 * 1024 * 1024
    onnx.checker.check_model(demo[0])


def test_demo_metadata(demo):
    _, meta = demo
    assert meta["model"] == "demo"
    assert meta["labels"] == list(synthetic.CLASSES)
    pre = meta["preprocess"]
    assert {"resize", "crop", "mean", "std", "channel_order", "scale"} <= set(pre)
    assert len(pre["mean"]) == len(pre["std"]) == 3 and pre["channel_order"] == "RGB"
    info = meta["info"]
    assert 0.0 <= info["test_accuracy"] <= 1.0 and isinstance(info["seed"], int)
    convs = [layer for layer in meta["layers"] if layer["kind"] == "conv"]
    assert [layer["name"] for layer in convs] == [f"conv{i + 1}" for i in range(len(convs))]
    assert len(convs) >= 3


def test_demo_layer_tensors_are_relu_outputs(demo):
    model, meta = demo
    producers = {out: node for node in model.graph.node for out in node.output}
    for layer in meta["layers"]:
        assert producers[layer["tensor"]].op_type == "Relu"


def preprocess(paths, pre) -> np.ndarray:
    """The metadata's recipe for images already at the crop size: scale, normalise, NCHW."""
    x = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths]).astype(np.float32)
    assert x.shape[1:3] == (pre["crop"], pre["crop"])
    x = (x / pre["scale"] - np.float32(pre["mean"])) / np.float32(pre["std"])
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def test_demo_classifies_fresh_images(demo_path, demo, tmp_path):
    _, meta = demo
    pre = meta["preprocess"]
    paths = synthetic.generate(tmp_path, 100, seed=FRESH_SEED, size=pre["crop"])
    labels = np.array([synthetic.CLASSES.index(p.parent.name) for p in paths])
    session = ort.InferenceSession(str(demo_path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    x = preprocess(paths, pre)
    # Two batch sizes in one session: the batch axis is dynamic.
    logits = np.concatenate([session.run(None, {name: x[:37]})[0], session.run(None, {name: x[37:]})[0]])
    assert logits.shape == (100, len(synthetic.CLASSES))
    accuracy = float((logits.argmax(1) == labels).mean())
    assert accuracy >= meta["info"]["test_accuracy"] - 0.1


# conv1's smoothness, the measure defined independently of models/train_demo.py.

def slice_neighbour_correlation(w: np.ndarray) -> float:
    """Mean over (filter, channel) slices of the Pearson correlations of horizontally and of
    vertically neighbouring weights (w[y, x] vs w[y, x + 1], w[y, x] vs w[y + 1, x]), averaged."""
    rs = []
    for s in np.asarray(w, np.float64).reshape(-1, *w.shape[2:]):
        rs.append(np.corrcoef(s[:, :-1].ravel(), s[:, 1:].ravel())[0, 1])
        rs.append(np.corrcoef(s[:-1, :].ravel(), s[1:, :].ravel())[0, 1])
    return float(np.mean(rs))


def first_conv_weight(model: onnx.ModelProto) -> np.ndarray:
    from onnx import numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    conv = next(node for node in model.graph.node if node.op_type == "Conv")
    return numpy_helper.to_array(inits[conv.input[1]])


def test_neighbour_correlation_separates_noise_from_edges_and_blobs():
    rng = np.random.default_rng(0)
    noise = rng.normal(size=(32, 3, 7, 7))
    assert abs(slice_neighbour_correlation(noise)) < 0.1
    yy, xx = np.mgrid[-3:4, -3:4].astype(float)
    edge = np.tanh(xx * np.cos(0.6) + yy * np.sin(0.6))
    blob = np.exp(-(xx**2 + yy**2) / 4.0)
    smooth = np.stack([np.stack([edge, -edge, blob]), np.stack([blob, blob, edge])])
    assert slice_neighbour_correlation(smooth) > 0.7


def test_training_script_measures_the_same_correlation():
    pytest.importorskip("torch")
    from cnnviz_fast.zoo.train_demo import neighbour_correlation

    w = np.random.default_rng(1).normal(size=(5, 3, 7, 7)).cumsum(axis=3)  # random walks along x
    assert neighbour_correlation(w) == pytest.approx(slice_neighbour_correlation(w), abs=1e-12)


def test_demo_first_layer_filters_are_smooth(demo):
    """Zeiler & Fergus's layer 1 shows edges and colour blobs, not pixel noise (issue 13)."""
    model, meta = demo
    w = first_conv_weight(model)
    assert w.shape[1] == 3 and w.shape[2] >= 5 and w.shape[0] >= 32
    smooth = slice_neighbour_correlation(w)
    assert smooth >= 0.5
    assert smooth == pytest.approx(meta["info"]["conv1_neighbour_correlation"], abs=1e-3)


def test_training_script_ica_recovers_known_sparse_patterns():
    """conv1's kernels come from ICA (models/train_demo.py): on patches that are sparse mixtures
    of known zero-mean patterns, every returned basis function is one of them (up to sign/scale)."""
    torch = pytest.importorskip("torch")
    from cnnviz_fast.zoo.train_demo import ica_filters

    rng = np.random.default_rng(3)
    units, k = 6, 5
    true = rng.normal(size=(units, 3 * k * k))
    true -= true.mean(1, keepdims=True)  # ica_filters drops each patch's mean level
    sources = rng.laplace(size=(20000, units))
    x = torch.from_numpy((sources @ true).reshape(-1, 3, k, k).astype(np.float32))
    basis = ica_filters(x, units, k, patches=20000, seed=0).reshape(units, -1)
    cos = np.abs(basis @ true.T) / np.outer(np.linalg.norm(basis, axis=1), np.linalg.norm(true, axis=1))
    assert sorted(cos.argmax(1)) == list(range(units))
    assert cos.max(1).min() > 0.98
    flat = np.asarray(basis)
    assert (flat[np.arange(units), np.abs(flat).argmax(1)] > 0).all()
