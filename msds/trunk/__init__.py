"""The trunk: VGG16 up to relu5_1 (vgg16.py), its weights (weights.py), and
the CPU fast path (fastpath.py) with its Winograd convolutions (winograd.py)
and its thread count on busy cores (threads.py)."""

from msds.trunk.vgg16 import VGG16Trunk, save_trimmed_weights  # noqa: F401
