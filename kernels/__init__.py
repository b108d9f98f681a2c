"""Triton kernels of the msds head, installed as msds.kernels.

Importing this package does not import triton; `msds.kernels.ops` does, and
is loaded by msds.metric.head on first use of the Triton backend.
"""
