"""The image being optimized, as a function of its parameters: Lucid's decorrelated Fourier basis.

A pixel-space image that follows its gradient fills with high-frequency noise: the gradient of a
conv net is largest at high frequencies. Lucid (Olah et al., 2017) reparameterizes the image so
that plain gradient steps look like steps of a natural-image prior:

- **Fourier**: the parameters are the image's spectrum, each frequency ``f`` scaled by
  ``1 / max(f, 1/size) ** decay`` (decay 1, the photos' own power law), so low frequencies move
  first and every frequency moves about as much as it does in photos;
- **colour decorrelation**: the three channels are mixed by the square root of ImageNet's colour
  covariance, so that each parameter channel moves one decorrelated colour axis;
- a **sigmoid** keeps every pixel in (0, 1).

MACO (Fel et al., 2023, "Unlocking feature visualization for deeper networks with magnitude
constrained optimization") keeps the spectrum's magnitude fixed to a natural-image one and
optimizes only its phase. Its published magnitude is the mean spectrum of ImageNet; here the
``1 / f`` law stands for it (no data to download), and each image is standardized before the
colour mixing, as MACO does.

Every image of a batch has its own parameters and nothing couples them: a target's image does
not depend on the other targets it was optimized with.
"""

from __future__ import annotations

import torch

# Lucid's square root of ImageNet's colour covariance (lucid/optvis/param/color.py), columns
# scaled so the largest has unit norm: RGB = this @ decorrelated colour.
COLOUR_CORRELATION_SQRT = torch.tensor(
    [[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]], dtype=torch.float64
)
COLOUR_MIXING = COLOUR_CORRELATION_SQRT / COLOUR_CORRELATION_SQRT.norm(dim=0).max()

# Lucid's defaults: spectrum drawn with this standard deviation, power-law decay 1, and the
# image divided by 4 (its "magic" constant, which keeps the sigmoid out of saturation at first).
SPECTRUM_SD = 0.01
DECAY_POWER = 1.0
LUCID_DIVISOR = 4.0

PARAMETERIZATIONS = ("fourier", "maco", "pixel")
# Adam's step for each parameterization: Lucid's 0.05 for the spectrum and for pixels; the phase
# of MACO takes NAdam's 1.0 in its paper's code, for Adam here the same scale of a phase.
LEARNING_RATES = {"fourier": 0.05, "maco": 1.0, "pixel": 0.05}


def spectrum_scale(size: tuple[int, int], decay: float = DECAY_POWER) -> torch.Tensor:
    """``1 / max(f, 1 / max(H, W)) ** decay`` for the ``(H, W // 2 + 1)`` frequencies of a real
    image of ``size`` ``(H, W)``, ``f`` in cycles per pixel."""
    height, width = size
    fy = torch.fft.fftfreq(height, dtype=torch.float64)[:, None]
    fx = torch.fft.rfftfreq(width, dtype=torch.float64)[None, :]
    frequency = torch.sqrt(fx**2 + fy**2)
    return 1.0 / frequency.clamp(min=1.0 / max(height, width)) ** decay


def mix_colours(decorrelated: torch.Tensor) -> torch.Tensor:
    """``(N, 3, H, W)`` decorrelated colour axes to RGB (before the sigmoid)."""
    mixing = COLOUR_MIXING.to(decorrelated.device, decorrelated.dtype)
    return torch.einsum("rc,nchw->nrhw", mixing, decorrelated)


class ImageParameters:
    """The parameters of N images of ``size`` ``(H, W)`` and the map from them to RGB.

    ``parameterization`` is ``"fourier"`` (Lucid), ``"maco"`` (phase only, fixed magnitude) or
    ``"pixel"`` (plain pixels behind a sigmoid, the baseline that the others improve on).
    ``generators``: one per image, so each image's start depends on its own seed alone.
    """

    def __init__(
        self,
        parameterization: str,
        size: tuple[int, int],
        generators: list[torch.Generator],
        device: torch.device,
    ) -> None:
        self.parameterization = parameterization
        self.size = height, width = size
        spectrum = (height, width // 2 + 1)
        if parameterization == "fourier":
            shape = (3, *spectrum, 2)  # real and imaginary parts
            scale = SPECTRUM_SD
        elif parameterization == "maco":
            shape = (3, *spectrum)  # the phase
            scale = 1.0
        else:
            shape = (3, height, width)
            scale = SPECTRUM_SD
        self.tensor = torch.stack(
            [torch.randn(shape, generator=g, dtype=torch.float32) * scale for g in generators]
        ).to(device)
        self.tensor.requires_grad_(True)
        self._scale = spectrum_scale(size).to(device, torch.float32)
        if parameterization == "maco":
            # Unit power per pixel for the fixed magnitude; the standardization after the inverse
            # transform sets the contrast, so only the magnitude's shape matters.
            self._scale = self._scale / self._scale.pow(2).mean().sqrt()

    def images(self) -> torch.Tensor:
        """The ``(N, 3, H, W)`` RGB images in (0, 1), differentiable in ``self.tensor``."""
        if self.parameterization == "fourier":
            spectrum = torch.view_as_complex(self.tensor) * self._scale
            decorrelated = torch.fft.irfft2(spectrum, s=self.size, norm="ortho") / LUCID_DIVISOR
        elif self.parameterization == "maco":
            spectrum = torch.polar(self._scale.expand_as(self.tensor), self.tensor)
            spatial = torch.fft.irfft2(spectrum, s=self.size, norm="ortho")
            mean = spatial.mean(dim=(1, 2, 3), keepdim=True)
            std = spatial.std(dim=(1, 2, 3), keepdim=True)
            decorrelated = (spatial - mean) / (std + 1e-4)
        else:
            return torch.sigmoid(self.tensor)
        return torch.sigmoid(mix_colours(decorrelated))
