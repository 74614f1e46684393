"""Datasets, splits, transforms and loaders shared by local code and Ray Data.

Everything here is plain numpy/torch/pyarrow (no Ray), returns uint8 images
and ``(n, c)`` 0/1 label matrices, and never downloads anything.
"""
