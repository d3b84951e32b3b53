"""Train the small demo CNN on synthetic images and export it as the shipped ONNX model.

    python models/train_demo.py --out models/demo.onnx --seed 0

The training and test sets come from `cnnviz_fast.datasets.synthetic`, written as JPEG files
and read back, because the demo later mines JPEG files and should see the same artefacts. The
run is deterministic for a given seed and thread count (CPU only; one thread by default). Next
to the ONNX file it writes <out>.json with the training record that also sits in the model's
cnnviz.info metadata.

conv1 is not learned by backpropagation: its 32 kernels are the independent components of 7x7
colour patches of the training images (symmetric FastICA on the 32 leading principal components,
as Hoyer & Hyvarinen 2000 did for photographs), and stay fixed while everything else trains.
Backpropagation on this small synthetic task left conv1 as noise or dull blobs; ICA of the same
images gives what Zeiler & Fergus show at layer 1: oriented luminance edges and bars at several
angles, colour-opponent edges and colour blobs. Only conv1's BatchNorm trains, which the export
folds into a per-filter scale and bias, so the shipped kernels keep their shapes.
`neighbour_correlation` measures their smoothness and is recorded in the metadata.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import torch
from PIL import Image
from torch import nn

from cnnviz_fast._metadata import write_metadata
from cnnviz_fast.datasets import synthetic

# Dataset seeds derive from (--seed, stream), so train and test images never coincide.
_TRAIN_STREAM, _TEST_STREAM = 0, 1


class DemoNet(nn.Module):
    """conv1 (7x7, stride 2, like ZFNet's) -> BN -> ReLU, then three 3x3 conv -> BN -> ReLU ->
    2x2 max-pool stages and two fully connected layers.

    BatchNorm only speeds up training: the ONNX export folds it into the conv weights, so the
    shipped graph is the plain Conv -> Relu (-> MaxPool) chain the deconvnet expects. The tapped
    ReLU outputs conv1..conv4 see 7, 11, 21 and 41 px of the input; at 64 px the last pooled map
    is 4x4x128, small enough for a flatten + fc. conv1 has 32 filters so the filter grid shows
    variety; the other widths (32, 64, 128) keep training to minutes on one CPU thread.
    """

    def __init__(self, classes: int, size: int):
        super().__init__()

        def stage(cin: int, cout: int, k: int, stride: int = 1, pool: bool = True) -> list[nn.Module]:
            layers = [nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2), nn.BatchNorm2d(cout), nn.ReLU()]
            return layers + [nn.MaxPool2d(2)] if pool else layers

        self.features = nn.Sequential(
            *stage(3, 32, 7, stride=2, pool=False), *stage(32, 32, 3), *stage(32, 64, 3), *stage(64, 128, 3)
        )
        side = size // 16
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Dropout(0.3), nn.Linear(128 * side * side, 128), nn.ReLU(), nn.Linear(128, classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))

    @property
    def conv1(self) -> nn.Conv2d:
        return self.features[0]


def neighbour_correlation(weights: np.ndarray) -> float:
    """Smoothness of conv filters [C_out, C_in, kh, kw]: for every (filter, input channel) slice,
    the Pearson correlation of w[y, x] with w[y, x + 1] over all its horizontal pairs and of
    w[y, x] with w[y + 1, x] over all its vertical pairs; the mean of both over all slices.
    White noise gives about 0, a smooth edge or blob close to 1."""
    w = np.asarray(weights, np.float64).reshape(-1, *np.shape(weights)[2:])

    def pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        a = a.reshape(len(a), -1) - a.reshape(len(a), -1).mean(1, keepdims=True)
        b = b.reshape(len(b), -1) - b.reshape(len(b), -1).mean(1, keepdims=True)
        return (a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1))

    return float(np.mean([pearson(w[:, :, :-1], w[:, :, 1:]), pearson(w[:, :-1], w[:, 1:])]))


def folded_conv1(model: DemoNet) -> np.ndarray:
    """conv1's weights with its eval-mode BatchNorm scale folded in, as the ONNX file holds them."""
    bn = model.features[1]
    scale = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach()
    return (model.conv1.weight.detach() * scale[:, None, None, None]).numpy()


def ica_filters(x: torch.Tensor, units: int, k: int, patches: int, seed: int, iterations: int = 400) -> np.ndarray:
    """float32 [units, 3, k, k]: ICA basis functions of `patches` random k x k patches of the
    preprocessed images x [N, 3, H, W], most luminance-dominated first.

    Each patch loses its mean over all its values (the luminance level, which says nothing about
    shape) but keeps its per-channel offsets, so colour blobs can come out. PCA keeps the `units`
    leading (smooth) components and whitens them; symmetric FastICA (tanh contrast) rotates them
    to the most independent, i.e. sparsest, directions; the basis functions are those directions
    mapped back to pixels, and their signs are fixed so each one's largest weight is positive."""
    rng = np.random.default_rng(seed)
    n, _, h, w = x.shape
    img, r, c = rng.integers(0, n, patches), rng.integers(0, h - k + 1, patches), rng.integers(0, w - k + 1, patches)
    xs = x.numpy()
    p = np.stack([xs[i, :, y:y + k, z:z + k].ravel() for i, y, z in zip(img, r, c)]).astype(np.float64)
    p -= p.mean(1, keepdims=True)
    p -= p.mean(0)
    var, vec = np.linalg.eigh(p.T @ p / len(p))
    var, vec = var[::-1][:units], vec[:, ::-1][:, :units]
    z = p @ vec / np.sqrt(var)
    u = np.linalg.qr(rng.normal(size=(units, units)))[0]
    for _ in range(iterations):
        g = np.tanh(z @ u.T)
        new = g.T @ z / len(z) - (1.0 - g**2).mean(0)[:, None] * u
        left, _, right = np.linalg.svd(new)
        new = left @ right  # symmetric decorrelation: (new new^T)^(-1/2) new
        converged = np.max(np.abs(np.abs(np.sum(new * u, axis=1)) - 1.0)) < 1e-7
        u = new
        if converged:
            break
    basis = (u @ (vec * np.sqrt(var)).T).reshape(units, 3, k, k)
    flat = basis.reshape(units, -1)
    basis *= np.sign(flat[np.arange(units), np.abs(flat).argmax(1)])[:, None, None, None]
    luma_share = 3 * (basis.mean(1) ** 2).sum((1, 2)) / (basis**2).sum((1, 2, 3))
    return basis[np.argsort(-luma_share, kind="stable")].astype(np.float32)


def load_set(root: Path, n: int, seed: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Generate n JPEG images under root and read them back: uint8 [n, size, size, 3], labels [n]."""
    paths = synthetic.generate(root, n, seed=seed, size=size)
    index = {name: i for i, name in enumerate(synthetic.CLASSES)}
    images = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])
    labels = np.array([index[p.parent.name] for p in paths], dtype=np.int64)
    return images, labels


def to_tensor(images: np.ndarray, mean: np.ndarray, std: np.ndarray) -> torch.Tensor:
    x = (images.astype(np.float32) / 255.0 - mean.astype(np.float32)) / std.astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 256) -> float:
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(x[i:i + batch]).argmax(1) for i in range(0, len(x), batch)])
    return float((pred == y).float().mean())


def train(model: DemoNet, x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int, weight_decay: float,
          batch: int = 64) -> None:
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3, weight_decay=weight_decay)
    steps = epochs * ((len(x) + batch - 1) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps, pct_start=0.2)
    loss_fn = nn.CrossEntropyLoss()
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(x), generator=gen)
        total, t0 = 0.0, time.time()
        for i in range(0, len(x), batch):
            idx = order[i:i + batch]
            opt.zero_grad()
            loss = loss_fn(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        print(f"epoch {epoch + 1}/{epochs}  loss {total / len(x):.4f}  {time.time() - t0:.0f}s", flush=True)


def rename_tensor(graph: onnx.GraphProto, old: str, new: str) -> None:
    for node in graph.node:
        node.input[:] = [new if t == old else t for t in node.input]
        node.output[:] = [new if t == old else t for t in node.output]
    for out in graph.output:
        if out.name == old:
            out.name = new


def export(model: nn.Module, size: int, path: Path, metadata: dict) -> list[dict]:
    """Export with a dynamic batch axis; name the ReLU after each Conv conv1.. and after Gemm fc1..."""
    model.eval()
    dummy = torch.zeros(1, 3, size, size)
    # The TorchScript exporter (dynamo=False) needs no onnxscript and folds BatchNorm in eval mode.
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.onnx"
        torch.onnx.export(
            model, (dummy,), str(raw), input_names=["input"], output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17, dynamo=False,
        )
        proto = onnx.load(str(raw))
    graph = proto.graph
    producer = {out: node for node in graph.node for out in node.output}
    layers, counts = [], {"conv": 0, "fc": 0}
    for node in list(graph.node):
        if node.op_type != "Relu":
            continue
        kind = {"Conv": "conv", "Gemm": "fc"}[producer[node.input[0]].op_type]
        counts[kind] += 1
        name = f"{kind}{counts[kind]}"
        rename_tensor(graph, node.output[0], name)
        node.name = name
        layers.append({"name": name, "tensor": name, "kind": kind})
    write_metadata(proto, model="demo", layers=layers, **metadata)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
    return layers


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("demo.onnx"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--train-images", type=int, default=6000)
    ap.add_argument("--test-images", type=int, default=2000)
    ap.add_argument("--epochs", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--weight-decay", type=float, default=1e-4)
    ap.add_argument("--ica-patches", type=int, default=30000, help="image patches conv1's ICA is fitted on")
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    train_seed = synthetic.image_seed(args.seed, _TRAIN_STREAM)
    test_seed = synthetic.image_seed(args.seed, _TEST_STREAM)

    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        train_images, train_labels = load_set(Path(tmp) / "train", args.train_images, train_seed, args.size)
        test_images, test_labels = load_set(Path(tmp) / "test", args.test_images, test_seed, args.size)
    print(f"generated {len(train_images)} + {len(test_images)} images in {time.time() - t0:.0f}s", flush=True)

    # Per-channel statistics of the training set, rounded so the metadata states them exactly.
    pixels = train_images.reshape(-1, 3).astype(np.float64) / 255.0
    mean, std = np.round(pixels.mean(0), 3), np.round(pixels.std(0), 3)
    x_train, y_train = to_tensor(train_images, mean, std), torch.from_numpy(train_labels)
    x_test, y_test = to_tensor(test_images, mean, std), torch.from_numpy(test_labels)

    model = DemoNet(len(synthetic.CLASSES), args.size)
    t0 = time.time()
    conv1 = model.conv1
    with torch.no_grad():
        conv1.weight.copy_(torch.from_numpy(ica_filters(x_train, conv1.out_channels, conv1.kernel_size[0],
                                                        args.ica_patches, args.seed)))
        conv1.bias.zero_()
    conv1.weight.requires_grad_(False)
    conv1.bias.requires_grad_(False)
    print(f"conv1 from ICA in {time.time() - t0:.0f}s", flush=True)
    train(model, x_train, y_train, args.epochs, args.seed, args.weight_decay)
    train_seconds = time.time() - t0
    test_acc = accuracy(model, x_test, y_test)
    smooth = neighbour_correlation(folded_conv1(model))
    print(f"test accuracy {test_acc:.4f} ({len(x_test)} images), conv1 neighbour correlation {smooth:.3f}, "
          f"trained in {train_seconds:.0f}s", flush=True)

    info = {
        "test_accuracy": round(test_acc, 4),
        "seed": args.seed,
        "train_images": args.train_images,
        "test_images": args.test_images,
        "train_data_seed": train_seed,
        "test_data_seed": test_seed,
        "image_size": args.size,
        "epochs": args.epochs,
        "threads": args.threads,
        "weight_decay": args.weight_decay,
        "conv1": "fixed: FastICA basis of 7x7 colour patches of the training images",
        "ica_patches": args.ica_patches,
        "conv1_neighbour_correlation": round(smooth, 4),
        "torch": torch.__version__,
        "trained_by": "models/train_demo.py",
    }
    preprocess = {
        "resize": args.size, "crop": args.size, "mean": mean.tolist(), "std": std.tolist(),
        "channel_order": "RGB", "scale": 255.0,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    layers = export(model, args.size, args.out, {"preprocess": preprocess, "labels": list(synthetic.CLASSES), "info": info})
    # Wall time stays out of the ONNX metadata so that a rerun reproduces the file exactly.
    record = {"model": "demo", "file": args.out.name, "layers": layers, "preprocess": preprocess,
              "labels": list(synthetic.CLASSES), "info": info, "train_seconds": round(train_seconds)}
    args.out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB) and {args.out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
