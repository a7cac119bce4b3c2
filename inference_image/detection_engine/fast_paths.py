"""The model-side fast paths, each a switch until measured (BENCHMARKS.md), and what a shard records of them
(with the data path's: `--decode-on-device`, device_decode.py; `--prefetch-to-device`, replicas.py).

`--channels-last` stores the convolution weights NHWC, which cuDNN and oneDNN run faster on some hardware
(detections unchanged up to float rounding).

`--compile` runs the detector's backbone (ResNet/MobileNet/VGG body and its FPN) through `torch.compile`.

The backbone is where a detector spends its time (about 70% of Faster R-CNN R50-FPN's CPU time per image;
the RPN, RoI heads and NMS are the rest, full of data-dependent shapes), so it alone is compiled, with
dynamic shapes: images arrive in many sizes, and one graph generalised over height and width compiles once
(about 30 s on a 2-core CPU) instead of once per new shape. Not once for every input, though: the compiler
guards on facts of the shapes it traced (a batch of one against several; on torch 2.11 the parity of the
stride-32 height and width, so the benchmark's eight photo shapes at 800 px take three graphs, one on the
pinned 2.14.1), and an input outside them compiles another graph at its first batch. Each is logged with
its seconds and counted (`CompiledBackbone.graphs`, `compile_s`), which bench_gpu reports. Padding batches
to a few fixed shape buckets would let the compiler specialise further but changes detections near the
borders (torchvision pads with zeros), so it is not done; BENCHMARKS.md has the figures. On a CPU,
Inductor's freezing folds the weights into the graph (oneDNN's prepacked convolutions); on CUDA it generates
Triton kernels.

Compilation happens at the first batch and can fail where the pod image lacks what it needs (a C++ compiler
on a CPU, Triton on a GPU). A failure must not turn images into error rows, so `CompiledBackbone` runs the
same input eagerly when the compiled call raises: if eager succeeds the compiled path is dropped for the
rest of the shard (one warning); if eager raises too, the error is the image's, and goes on to the
Detector's per-image isolation as before.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import torch
from torch import nn

from detection_engine.redaction import redact_line

log = logging.getLogger(__name__)


class CompiledBackbone(nn.Module):
    """A backbone run through `torch.compile`, falling back to its eager self if the compiled call fails."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.eager = backbone
        self.out_channels = getattr(backbone, "out_channels", None)  # what the detection heads read
        # Not a submodule: the state dict and device moves see the eager backbone once, under its own name.
        object.__setattr__(self, "_compiled", torch.compile(backbone, dynamic=True))
        self.fallback_reason: str | None = None
        # Graphs compiled during this backbone's calls, and those calls' seconds. Read from dynamo's
        # process-wide counter: exact for one replica; replicas compiling at once each count the other's too.
        self.graphs = 0
        self.compile_s = 0.0

    @property
    def compiled(self) -> bool:
        """True until a compiled call has failed where eager did not."""
        return self.fallback_reason is None

    def forward(self, images: torch.Tensor):
        if not self.compiled:
            return self.eager(images)
        graphs_before, started = _graphs_compiled(), time.perf_counter()
        try:
            features = self._compiled(images)
        except torch.OutOfMemoryError:
            raise  # the Detector halves the batch
        except Exception as exc:
            features = self.eager(images)  # raises if the input is at fault: the image's error, not ours
            first_line = (str(exc).strip().splitlines() or [""])[0]
            self.fallback_reason = redact_line(f"{type(exc).__name__}: {first_line}", 200)
            log.warning("torch.compile failed (%s); the backbone runs eagerly", self.fallback_reason)
            return features
        if (new := _graphs_compiled() - graphs_before) > 0:
            seconds = time.perf_counter() - started
            self.graphs += new
            self.compile_s += seconds
            log.info(
                "torch.compile: a backbone graph compiled for input %s in %.1f s (%d in this process; inputs "
                "the compiler's guards group with it reuse it)",
                "x".join(map(str, images.shape)),
                seconds,
                _graphs_compiled(),
            )
        return features


def _graphs_compiled() -> int:
    """Graphs TorchDynamo has compiled in this process so far."""
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


def compile_backbone(model: nn.Module) -> nn.Module:
    """Swap `model.backbone` for its compiled form, in place; returns the model."""
    backbone = getattr(model, "backbone", None)
    if not isinstance(backbone, nn.Module):
        raise ValueError(f"{type(model).__name__} has no backbone module to compile")
    if isinstance(backbone, CompiledBackbone):
        return model
    if next(model.parameters()).device.type == "cpu":
        import torch._inductor.config as inductor_config

        # Weights are constants at inference: fold them into the graph (needs no_grad, which Detector uses).
        inductor_config.freezing = True
    model.backbone = CompiledBackbone(backbone)
    return model


def apply(model: nn.Module, channels_last: bool, compile: bool) -> nn.Module:
    """The switched-on fast paths applied to a loaded model on its device, in place; returns the model."""
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if compile:
        compile_backbone(model)
    return model


def describe(
    models: Sequence[nn.Module], decode_on_device: bool = False, prefetch_to_device: bool = False
) -> dict:
    """The shard metrics' `fast_paths`: what actually ran on the replicas (a fallback is recorded as such).
    How many JPEGs each device decoded is in the metrics' `devices`."""
    first = models[0]
    convolutions = [m.weight for m in first.modules() if isinstance(m, nn.Conv2d) and m.weight.dim() == 4]
    fallbacks = sorted({reason for m in models if (reason := compile_fallback(m)) is not None})
    compiled = all(isinstance(getattr(m, "backbone", None), CompiledBackbone) for m in models)
    return {
        "channels_last": bool(convolutions)
        and all(w.is_contiguous(memory_format=torch.channels_last) for w in convolutions),
        "compile": f"eager fallback: {'; '.join(fallbacks)}" if fallbacks else ("on" if compiled else "off"),
        "decode_on_device": decode_on_device,
        "prefetch_to_device": prefetch_to_device,
    }


def compile_fallback(model: nn.Module) -> str | None:
    """Why the compiled backbone fell back to eager, or None (compiled, or never asked for)."""
    backbone = getattr(model, "backbone", None)
    return backbone.fallback_reason if isinstance(backbone, CompiledBackbone) else None
