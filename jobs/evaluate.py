"""`ray job submit -- python jobs/evaluate.py --checkpoints URI ...`: the ablation table.

Same arguments as `qadwh evaluate`; exits non-zero with the reason on failure.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from qadwh_ray.cli import main as cli_main

    return cli_main(["evaluate", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
