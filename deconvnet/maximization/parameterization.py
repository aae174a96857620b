"""The image being optimized, as a function of its parameters: Lucid's decorrelated Fourier basis.

A pixel-space image that follows its gradient fills with high-frequency noise: the gradient of a
conv net is largest at high frequencies. Lucid (Olah et al., 2017) reparameterizes the image so
that plain gradient steps look like steps of a natural-image prior:

- **Fourier**: the parameters are the image's spectrum, each frequency ``f`` scaled by
  ``1 / max(f, 1/size) ** decay`` (Lucid's decay 1 is the photos' own power law; here horama's
  1.5), so low frequencies move first and high ones barely;
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

# Lucid's start: a spectrum drawn with this standard deviation, and the image divided by 4 (its
# "magic" constant), so the first image is faint noise and the sigmoid starts out of saturation.
SPECTRUM_SD = 0.01
LUCID_DIVISOR = 4.0
# Each frequency f is scaled by 1 / f ** decay. Photos' amplitude spectrum falls as 1 / f (decay 1),
# which MACO's fixed magnitude stands for. The optimized spectrum takes horama's decay of 1.5 (Fel
# et al.'s code), which moves the low frequencies more still: on six AlexNet conv5 channels over
# 128 steps (NAdam at 0.2), 1.25 left 12% more high-frequency energy than 1.5 for 4% more
# activation (scripts/benchmark_maximize.py measures both at the defaults).
PHOTO_DECAY = 1.0
FOURIER_DECAY = 1.5

PARAMETERIZATIONS = ("fourier", "maco", "pixel")
# The step of the optimizer (NAdam, as horama and MACO's code) for each parameterization. NAdam
# (Nesterov momentum, warmed up over the first steps) rose much faster than Lucid's Adam: on six
# AlexNet conv5 channels over 32 steps at a step of 0.2 it reached 1.8x Adam's activation, and a
# larger step made Adam worse, not better. The spectrum keeps Lucid's step of 0.05: with NAdam and
# decay 1.5 it passed horama's activation at 128 steps with the least high-frequency energy of the
# steps tried (0.1 and 0.2 rose 7% higher at 128 steps but left 1.4x and 1.7x as much). The phase
# of MACO: 1.0, its paper's code. Pixels: Lucid's 0.05, a baseline only.
LEARNING_RATES = {"fourier": 0.05, "maco": 1.0, "pixel": 0.05}


def spectrum_scale(size: tuple[int, int], decay: float) -> torch.Tensor:
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
        decay = FOURIER_DECAY if parameterization == "fourier" else PHOTO_DECAY
        self._scale = spectrum_scale(size, decay).to(device, torch.float32)
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
