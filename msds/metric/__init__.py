"""The metric: MSDS and DeepSSIM as modules (modules.py), the head seam and its
dispatch (head.py), the plain PyTorch head that is also the oracle's twin
(reference.py), the image pyramid, the fusion file, and the argument checks."""

from msds.metric.modules import MSDS, DataRange, DeepSSIM, ReferenceFeatures  # noqa: F401
