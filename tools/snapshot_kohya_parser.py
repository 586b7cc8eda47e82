"""Dump the pinned sd-scripts' training-argument parsers and dataset schema to JSON, for `check`.

Run with the training environment (torch etc.), from anywhere:

    .venv/bin/python tools/snapshot_kohya_parser.py            # rewrites kohya_1to2/data/kohya_v0.10.1.json
    .venv/bin/python tools/snapshot_kohya_parser.py --stdout   # prints it (the integration test compares)

The work is kohya_1to2/kohya/parser_snapshot.py's (the same code `check --sd-scripts` runs for another install).
sd-scripts: vendor/sd-scripts, or $KOHYA_1TO2_SD_SCRIPTS.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kohya_1to2 import kohya  # noqa: E402  (the checkout's package, also when it is not installed)
from kohya_1to2.kohya.parser_snapshot import snapshot, snapshot_text  # noqa: E402

OUTPUT = kohya.PARSER_SNAPSHOT
GENERATED_BY = "tools/snapshot_kohya_parser.py"


def sd_scripts_dir() -> Path:
    return Path(os.environ.get("KOHYA_1TO2_SD_SCRIPTS", REPO / "vendor" / "sd-scripts"))


def main() -> int:
    cli = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    cli.add_argument("--stdout", action="store_true", help="print instead of writing the data file")
    args = cli.parse_args()
    scripts = list(dict.fromkeys(kohya.TRAINING_SCRIPTS.values()))
    text = snapshot_text(snapshot(sd_scripts_dir().resolve(), kohya.SD_SCRIPTS_TAG, scripts, GENERATED_BY))
    if args.stdout:
        sys.stdout.write(text)
    else:
        OUTPUT.parent.mkdir(parents=True, exist_ok=True)
        OUTPUT.write_text(text, encoding="utf-8")
        print(f"wrote {OUTPUT.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
