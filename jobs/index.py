"""`ray job submit -- python jobs/index.py ...`: build or re-index the image index.

    python jobs/index.py --checkpoint s3://b/ckpt/ --data s3://b/images/ --out s3://b/index/ [--shards 8]
    python jobs/index.py --reindex --checkpoint s3://b/train-run/ --data s3://b/images/ --out s3://b/index/
    python jobs/index.py --incremental --data s3://b/images-new-today/ --out s3://b/index/

Same arguments as ``qadwh index`` (see ``qadwh_ray/index_build/cli.py``); storage
locations may also come from $QADWH_CHECKPOINT, $QADWH_DATA and
$QADWH_INDEX_URI. Under ``ray job submit`` $RAY_ADDRESS points at the cluster.
Prints where the version and its manifest went; exits 1 with the reason when
the build or a re-index check fails (the current version is then unchanged),
2 on bad arguments or bad input.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from qadwh_ray.index_build.cli import main as index_main

    return index_main(["index", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
