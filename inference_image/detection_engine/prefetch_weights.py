"""`python -m detection_engine.prefetch_weights MODEL WEIGHTS`: download a torchvision weights enum member
into TORCH_HOME, so an image built with them runs in clusters without internet access.

The Dockerfile calls it for each `BAKE_WEIGHTS` entry; at run time `--weights WEIGHTS` then loads from the
cache and never touches the network. torchvision checks the file's hash on download.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torchvision.models import get_model_weights

from detection_engine.catalog import MODELS
from detection_engine.models import weights_enum_member


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m detection_engine.prefetch_weights", description=__doc__)
    parser.add_argument("model", choices=sorted(MODELS))
    parser.add_argument("weights", help="a member of the model's torchvision weights enum, e.g. DEFAULT")
    args = parser.parse_args(argv)

    member = weights_enum_member(args.model, args.weights)
    if member is None:
        members = ", ".join(get_model_weights(args.model).__members__)
        print(f"prefetch_weights: error: {args.weights!r} is not one of {members}", file=sys.stderr)
        return 2
    member.get_state_dict(progress=False, check_hash=True)
    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(member.url).name
    print(f"{args.model} {type(member).__name__}.{member.name} -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
