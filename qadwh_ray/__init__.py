"""Query-adaptive Deep Weighted Hashing (QaDWH) image retrieval on Ray."""

__version__ = "0.1.0"
