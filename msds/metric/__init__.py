"""The metric: MSDS and DeepSSIM as modules (modules.py), the head seam and its
dispatch (head.py), the plain PyTorch head that is also the oracle's twin
(reference.py), the image pyramid, the fusion file, and the argument checks."""

from msds._moved import names_now_in
from msds.metric.modules import MSDS, DataRange, DeepSSIM, ReferenceFeatures  # noqa: F401

# The other names of the old msds/metric.py module (FIRST_CALL_SLACK, ...).
__getattr__ = names_now_in(__name__, "msds.metric.modules")
