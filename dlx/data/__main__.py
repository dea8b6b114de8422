"""python -m dlx.data prepare [--data_dir D] [names...]

Without names: prepares every offline data set whose source files are on this machine and lists
the others with the command that installs them. Exit code 2 when a named data set failed.
"""

from __future__ import annotations

import argparse
import sys

import tensorflow_datasets as tfds

from dlx.data import OFFLINE_BUILDERS, default_data_dir, info
from dlx.data.builders import missing_hint, offline_files_present
from dlx.errors import DataError


def _prepare(names: list[str], data_dir: str) -> list[str]:
    failed = []
    for name in names:
        try:
            data = info(name, data_dir)  # prepares first
        except DataError as error:
            print(f"  {name}: FAILED: {error}")
            failed.append(name)
            continue
        sizes = ", ".join(f"{split} {count}" for split, count in data.num_examples.items())
        print(f"  {name}: ready ({sizes})")
    return failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dlx.data")
    commands = parser.add_subparsers(dest="command", required=True)
    prepare = commands.add_parser("prepare", help="write data sets as array_record files")
    prepare.add_argument(
        "--data_dir",
        default=None,
        help="TFDS data dir (default: $TFDS_DATA_DIR or ~/tensorflow_datasets)",
    )
    prepare.add_argument(
        "names",
        nargs="*",
        help=f"data sets (default: those of {', '.join(OFFLINE_BUILDERS)} "
        "whose source files are present)",
    )
    args = parser.parse_args(argv)

    tfds.disable_progress_bar()  # one line per data set below says what happened
    data_dir = args.data_dir or default_data_dir()
    names = args.names
    missing = []
    if not names:
        names = [name for name in OFFLINE_BUILDERS if offline_files_present(name, data_dir)]
        missing = [name for name in OFFLINE_BUILDERS if name not in names]
    print(f"preparing into {data_dir}:")
    failed = _prepare(names, data_dir)
    for name in missing:
        print(f"  {name}: missing: {missing_hint(name, data_dir)}")
    return 2 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
