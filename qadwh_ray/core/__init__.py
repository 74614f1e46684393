"""Pure math of QaDWH: codes, distances, losses, sampling, metrics, search.

Nothing in this package imports Ray (a test asserts it), so every piece can be
used and tested in a plain process and reused by the Ray adapters.
"""
