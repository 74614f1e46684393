"""``ray job submit --working-dir . -- python jobs/train.py --config configs/fashion-compact.yaml --storage s3://bucket/runs --name my-run``

Trains on the cluster the job runs on (Ray Train, see qadwh_ray.ray_train), writes
checkpoints under ``--storage`` (or ``$QADWH_STORAGE``) and prints where they
went; the last line is JSON. Exit status: 0 done, 2 bad settings, 1 training failed.
Re-submitting with the same ``--name`` resumes from the run's latest checkpoint.
"""

from __future__ import annotations

import argparse
import os
import sys


def main(argv: list[str] | None = None) -> int:
    try:
        import qadwh_ray  # noqa: F401
    except ImportError:  # `python jobs/train.py` from an uninstalled checkout (the job's working dir)
        sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from qadwh_ray.ray_train.cli import add_train_arguments, run_train

    parser = argparse.ArgumentParser(prog="jobs/train.py", description="QaDWH training job (Ray Train)")
    add_train_arguments(parser)
    return run_train(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
