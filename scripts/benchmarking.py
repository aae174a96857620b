"""What the benchmark scripts share: where the network runs and which weights it loads."""

from __future__ import annotations

import argparse
from pathlib import Path

# A shortcut beside the repository on the project's machines; never a dependency.
SHARED_WEIGHTS = Path(__file__).resolve().parents[2] / "shared" / "weights" / "alexnet_features.pth"


def add_network_options(parser: argparse.ArgumentParser, device_help: str) -> None:
    """``--device`` and ``--weights`` (AlexNet's conv weights: the shared file when present,
    else ``load_model``'s usual order)."""
    parser.add_argument("--device", default="cpu", help=device_help)
    parser.add_argument(
        "--weights",
        type=Path,
        default=SHARED_WEIGHTS if SHARED_WEIGHTS.exists() else None,
        help="AlexNet's conv weights (default: ../shared/weights/alexnet_features.pth when "
        "present, else load_model's usual order)",
    )
