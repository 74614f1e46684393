"""Batch indexing on Ray Data: read → decode → encode (actor pool) → sharded,
versioned index on storage; and the nightly re-index with its checks.

Ray is imported lazily (inside the functions that run pipelines), so this
package can be imported to read its options without starting Ray.
"""

from qadwh_ray.index_build.encoder import Encoder
from qadwh_ray.index_build.errors import BadInputError, IndexBuildError
from qadwh_ray.index_build.pipeline import BuildOptions, BuildResult, build_index
from qadwh_ray.index_build.reindex import CheckFailed, CheckOptions, newest_checkpoint, reindex
from qadwh_ray.index_build.sources import SourcePlan, plan_source

__all__ = [
    "BadInputError",
    "BuildOptions",
    "BuildResult",
    "CheckFailed",
    "CheckOptions",
    "Encoder",
    "IndexBuildError",
    "SourcePlan",
    "build_index",
    "newest_checkpoint",
    "plan_source",
    "reindex",
]
