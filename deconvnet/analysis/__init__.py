"""The paper's other instruments (Zeiler & Fergus, Sections 4 and 5), one module each:

- ``occlusion``: occlusion sensitivity (Figure 7), ``occlusion_sensitivity`` -> ``Occlusion``;
- ``invariance``: feature distances under translation, scaling, rotation (Figure 5),
  ``invariance`` -> ``Invariance``;
- ``correspondence``: the masked-parts Delta table (Section 5), ``correspondence`` ->
  ``Correspondence``;
- ``evolution``: the strongest activations projected checkpoint by checkpoint (Figure 4),
  ``feature_evolution`` -> ``Evolution``.

Each result is a value with ``.plot()`` and ``_repr_png_``; ``plots`` draws them.
"""

from deconvnet.analysis.correspondence import Correspondence, correspondence, read_parts
from deconvnet.analysis.evolution import Evolution, feature_evolution
from deconvnet.analysis.invariance import Invariance, invariance
from deconvnet.analysis.occlusion import Occlusion, occlusion_sensitivity

__all__ = [
    "Correspondence",
    "Evolution",
    "Invariance",
    "Occlusion",
    "correspondence",
    "feature_evolution",
    "invariance",
    "occlusion_sensitivity",
    "read_parts",
]
