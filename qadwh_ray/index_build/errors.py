"""Why an index build stopped."""

from __future__ import annotations

__all__ = ["IndexBuildError", "BadInputError"]


class IndexBuildError(RuntimeError):
    """The build could not produce a complete, consistent version."""


class BadInputError(IndexBuildError, ValueError):
    """A source row (or file) is unusable and --skip-bad was not given."""
