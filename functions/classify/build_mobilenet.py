"""Build a MobileNet-sized ONNX image classifier, with its model.json and labels.json.

    python functions/classify/build_mobilenet.py OUT_DIR [--seed N] [--width W]

The network is MobileNet v1 (Howard et al., 2017) at width multiplier W (default 0.5: 1.3 M
parameters, 0.15 G multiply-adds per image): a 3×3 stride-2 convolution, 13 depthwise-
separable blocks (3×3 depthwise then 1×1 pointwise convolution, each followed by ReLU6; batch
norm folded into the convolutions' biases), global average pooling, a 1000-way fully
connected layer and softmax. Input ``input``: float32 NCHW [N, 3, 224, 224], RGB normalised
with ImageNet's mean and std; the batch axis N is dynamic. Output ``probabilities``: [N, 1000].

The weights are random, drawn with a fixed seed (He initialisation, so activations neither
vanish nor overflow through the stack): the model has the size and cost of a real camera
classifier, which is what the function's tests and the vision benchmark need, but its 1000
labels ``class-000`` ... ``class-999`` mean nothing. No pretrained weights can be downloaded
on edge nodes; a real model with the same model.json works the same way.

Importable: ``build(out_dir)`` writes the three files and returns the model's path.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8  # what onnxruntime 1.17, the oldest the project allows, reads
SIZE = 224
CLASSES = 1000
# (output channels at width 1.0, stride) of the 13 depthwise-separable blocks
BLOCKS = (
    [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)]
    + [(512, 1)] * 5
    + [(1024, 2), (1024, 1)]
)
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


class GraphBuilder:
    """Collects nodes and initializers; each layer method returns its output's name."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.weights: list[onnx.TensorProto] = []
        self.relu6_bounds = [
            self.constant("relu6.min", np.array(0.0)),
            self.constant("relu6.max", np.array(6.0)),
        ]

    def constant(self, name: str, value: np.ndarray) -> str:
        self.weights.append(numpy_helper.from_array(value.astype(np.float32), name))
        return name

    def conv(self, x: str, name: str, shape: tuple[int, ...], stride: int, groups: int) -> str:
        """Conv (He-initialised, zero bias) then ReLU6; ``shape`` is (out, in/groups, k, k)."""
        fan_in = int(np.prod(shape[1:]))
        weight = self.rng.normal(0.0, np.sqrt(2.0 / fan_in), size=shape)
        inputs = [
            x,
            self.constant(f"{name}.weight", weight),
            self.constant(f"{name}.bias", np.zeros(shape[0])),
        ]
        pad = shape[2] // 2
        self.nodes.append(
            helper.make_node(
                "Conv",
                inputs,
                [f"{name}.conv"],
                name=name,
                kernel_shape=list(shape[2:]),
                strides=[stride, stride],
                pads=[pad] * 4,
                group=groups,
            )
        )
        return self.relu6(f"{name}.conv", name)

    def relu6(self, x: str, name: str) -> str:
        self.nodes.append(
            helper.make_node("Clip", [x, *self.relu6_bounds], [f"{name}.out"], name=f"{name}.relu6")
        )
        return f"{name}.out"


def mobilenet(seed: int = 0, width: float = 0.5) -> onnx.ModelProto:
    """The model, checked by onnx.checker."""
    graph = GraphBuilder(seed)
    channels = max(8, int(32 * width))
    x = graph.conv("input", "stem", (channels, 3, 3, 3), stride=2, groups=1)
    for index, (full_width, stride) in enumerate(BLOCKS, 1):
        out = max(8, int(full_width * width))
        x = graph.conv(x, f"block{index}.dw", (channels, 1, 3, 3), stride, groups=channels)
        x = graph.conv(x, f"block{index}.pw", (out, channels, 1, 1), stride=1, groups=1)
        channels = out
    graph.nodes.append(helper.make_node("GlobalAveragePool", [x], ["pooled"]))
    graph.nodes.append(helper.make_node("Flatten", ["pooled"], ["features"], axis=1))
    fc = graph.rng.normal(0.0, np.sqrt(1.0 / channels), size=(channels, CLASSES))
    graph.constant("fc.weight", fc)
    graph.constant("fc.bias", np.zeros(CLASSES))
    graph.nodes.append(helper.make_node("Gemm", ["features", "fc.weight", "fc.bias"], ["logits"]))
    graph.nodes.append(helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1))
    return make_model(
        graph.nodes,
        graph.weights,
        helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, SIZE, SIZE]),
        helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", CLASSES]),
        name=f"mobilenet-v1-{width:g}",
    )


def make_model(
    nodes: list[onnx.NodeProto],
    weights: list[onnx.TensorProto],
    image: onnx.ValueInfoProto,
    scores: onnx.ValueInfoProto,
    name: str,
) -> onnx.ModelProto:
    """A one-input, one-output model at the project's opset, checked by onnx.checker."""
    graph = helper.make_graph(nodes, name, [image], [scores], initializer=weights)
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="edgefaas"
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def build(out_dir: Path | str, seed: int = 0, width: float = 0.5) -> Path:
    """Write model.onnx, model.json and labels.json into ``out_dir``; the model's path."""
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    model = mobilenet(seed, width)
    onnx.save(model, folder / "model.onnx")
    write_json(folder / "labels.json", [f"class-{index:03d}" for index in range(CLASSES)])
    write_json(
        folder / "model.json",
        {
            "name": model.graph.name,
            "model": "model.onnx",
            "labels": "labels.json",
            "input": "input",
            "output": "probabilities",
            "layout": "NCHW",
            "size": [SIZE, SIZE],
            "mode": "RGB",
            "resample": "bilinear",
            "scale": 1 / 255,
            "mean": IMAGENET_MEAN,
            "std": IMAGENET_STD,
            "top_k": 5,
        },
    )
    return folder / "model.onnx"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--width", type=float, default=0.5, help="width multiplier, 0.25-1.0")
    args = parser.parse_args(argv)
    path = build(args.out_dir, args.seed, args.width)
    parameters = sum(int(np.prod(w.dims)) for w in onnx.load(path).graph.initializer)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB, {parameters / 1e6:.2f} M parameters)")
    print(f"one image in onnxruntime, 1 thread: {one_image_ms(path):.1f} ms (median of 30)")


def one_image_ms(path: Path, runs: int = 30) -> float:
    """Median time of one run of one 224×224 image, with one intra-op thread."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    image = np.random.default_rng(0).normal(size=(1, 3, SIZE, SIZE)).astype(np.float32)
    session.run(None, {"input": image})  # the first run allocates
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, {"input": image})
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000)


if __name__ == "__main__":
    main()
