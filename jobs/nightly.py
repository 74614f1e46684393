"""`ray job submit --working-dir . -- python jobs/nightly.py ...`: the nightly pipeline in one job.

    python jobs/nightly.py --out s3://b/index --source s3://b/db --checkpoint s3://b/runs/qadwh-48 \
        --service-url http://qadwh-serve-svc:8000
    python jobs/nightly.py --retrain --train-config configs/fashion-compact.yaml --train-storage s3://b/runs \
        --out s3://b/index --source s3://b/db --service-url http://qadwh-serve-svc:8000

(Optionally) retrain on Ray Train, re-index on Ray Data, verify, publish, and
wait until the running service answers from the new version. Same arguments as
``qadwh nightly`` (``qadwh_ray/pipelines/cli.py``). Prints where the version
went; exits 1 with the reason when a stage fails (the previous version still
serves), 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import os
import sys


def main(argv: list[str] | None = None) -> int:
    try:
        import qadwh_ray  # noqa: F401
    except ImportError:  # `python jobs/nightly.py` from an uninstalled checkout (the job's working dir)
        sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from qadwh_ray.pipelines.cli import add_nightly_arguments, cmd_nightly

    parser = argparse.ArgumentParser(prog="jobs/nightly.py", description="QaDWH nightly pipeline")
    add_nightly_arguments(parser)
    return cmd_nightly(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
