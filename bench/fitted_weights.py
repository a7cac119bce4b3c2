"""A generated state dict whose detections behave like a trained model's, for agreement measurements.

Pretrained weights cannot be downloaded on our machines, and a randomly initialised detector is a poor
reference for "do two ways of running it agree": its heads score hundreds of near-identical boxes just above
any threshold, so the last bit of rounding reorders which 50 are kept. This script keeps a random backbone,
made well-conditioned, and fits the RPN and the RoI heads, for a few hundred SGD steps, to the solid
rectangles of generated pictures like the benchmarks' own: the result proposes and scores those rectangles
with a few confident detections each, as a trained model does its objects. Speed is the same with any weights.

Well-conditioned matters for precision agreement. A random ResNet at init amplifies small perturbations layer
by layer (measured: bf16 rounding is 2% of the features after the first stage and 42% after the last), which
a trained network does not; so every residual branch is damped (its last BatchNorm's scale set to
RESIDUAL_GAIN: the error then stays under 2.5% at every stage), and the BatchNorm statistics are measured on
generated pictures instead of left at mean 0, variance 1. It is a stand-in: agreement with the COCO weights
is what counts, measured where they can be loaded (bench_gpu.py uses them when cached).

    .venv/bin/python bench/fitted_weights.py --out /tmp/fitted.pth      # ~7 min on 2 CPU cores
    .venv/bin/python bench/bench_engine.py --weights /tmp/fitted.pth ...

Without Airflow, DuckDB or gcsfs (the GPU machine has none of them): torch, torchvision, numpy, Pillow.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image

MODEL = "fasterrcnn_resnet50_fpn"
OBJECT_LABEL = 1  # every rectangle is one class: what matters is that boxes are found and scored apart
LEARNING_RATE = 0.005
RESIDUAL_GAIN = 0.1  # the scale of each bottleneck's last BatchNorm; 1.0 (init) is chaotic, see above
SHAPES = [(640, 480), (480, 640), (800, 600), (600, 800), (720, 540)]


def picture(
    rng: np.random.Generator, width: int, height: int, objects: int = 4
) -> tuple[np.ndarray, np.ndarray]:
    """A smooth colour field with `objects` solid rectangles (a later one may cover part of an earlier one,
    as objects occlude): HxWx3 uint8 and (n, 4) boxes."""
    coarse = rng.integers(0, 256, (max(1, height // 32), max(1, width // 32), 3), dtype=np.uint8)
    pixels = np.array(Image.fromarray(coarse).resize((width, height), Image.BILINEAR))
    boxes = []
    for _ in range(objects):
        w, h = int(rng.integers(width // 8, width // 3)), int(rng.integers(height // 8, height // 3))
        x, y = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
        pixels[y : y + h, x : x + w] = rng.integers(0, 256, 3, dtype=np.uint8)
        boxes.append([x, y, x + w, y + h])
    return pixels, np.array(boxes, dtype=np.float32)


def sample(rng: np.random.Generator, step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    width, height = SHAPES[step % len(SHAPES)]
    pixels, boxes = picture(rng, width, height, objects=int(rng.integers(2, 7)))
    image = torch.from_numpy(pixels).permute(2, 0, 1).float() / 255
    return image, {"boxes": torch.from_numpy(boxes), "labels": torch.full((len(boxes),), OBJECT_LABEL)}


@torch.no_grad()
def calibrate_batchnorm(model, rng: np.random.Generator, device: torch.device, images: int = 8) -> None:
    """Replace the backbone's BatchNorm running statistics (mean 0, variance 1 at init, so activations grow
    through 50 random layers) with the cumulative statistics of generated pictures."""
    norms = [m for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average over the calibration images
    model.backbone.train()
    for step in range(images):
        image, _ = sample(rng, step)
        batch, _ = model.transform([image.to(device)])
        model.backbone(batch.tensors)
    model.backbone.eval()


def fit(
    steps: int, seed: int, min_size: int, max_size: int, device: str = "cpu", log=print
) -> dict[str, torch.Tensor]:
    """The fitted state dict, on the CPU (a GPU only makes the fitting faster)."""
    device = torch.device(device)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = torchvision.models.get_model(
        MODEL, weights=None, weights_backbone=None, num_classes=91, min_size=min_size, max_size=max_size
    ).to(device)
    for block in model.backbone.body.modules():
        if isinstance(block, torchvision.models.resnet.Bottleneck):
            torch.nn.init.constant_(block.bn3.weight, RESIDUAL_GAIN)
    started = time.perf_counter()
    calibrate_batchnorm(model, rng, device)
    log(f"BatchNorm statistics measured ({time.perf_counter() - started:.0f}s)")
    model.train()
    model.backbone.eval()  # random features, fixed: only the heads learn
    for parameter in model.backbone.parameters():
        parameter.requires_grad_(False)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(trainable, lr=LEARNING_RATE, momentum=0.9, weight_decay=1e-4)
    warm_up = max(1, steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / warm_up) * (0.1 if step >= steps * 3 // 4 else 1.0)
    )
    for step in range(steps):
        image, target = sample(rng, step)
        losses = model([image.to(device)], [{k: v.to(device) for k, v in target.items()}])
        loss = sum(losses.values())
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 10.0)
        optimizer.step()
        schedule.step()
        if step % 10 == 0 or step == steps - 1:
            parts = ", ".join(f"{k.removeprefix('loss_')} {v.item():.3f}" for k, v in losses.items())
            log(
                f"step {step + 1}/{steps} ({time.perf_counter() - started:.0f}s): loss {loss.item():.3f} ({parts})"
            )
    return {name: tensor.cpu() for name, tensor in model.state_dict().items()}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--min-size", type=int, default=512, help="training image size (speed); any works after"
    )
    parser.add_argument("--max-size", type=int, default=853)
    parser.add_argument("--device", default="cpu", help="where to fit (cuda: seconds instead of minutes)")
    args = parser.parse_args()
    state = fit(
        args.steps,
        args.seed,
        args.min_size,
        args.max_size,
        args.device,
        log=lambda m: print(m, file=sys.stderr),
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, args.out)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
