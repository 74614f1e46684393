"""The one ``--data URI`` command-line option every entry point takes."""

from __future__ import annotations

import argparse


def add_data_argument(p: argparse.ArgumentParser, default: str | None = None) -> None:
    p.add_argument("--data", default=default, metavar="URI",
                   help="the dataset: an image folder (one sub-folder per class) or a Parquet file/directory, local or "
                        "s3://, or a built-in name (fashion, fashion-multilabel); default: "
                        + (default or "the config's dataset, else fashion"))
