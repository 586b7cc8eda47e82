#!/usr/bin/env bash
# Set up everything kohya-1to2 needs in .venv: the wrapper, the pinned sd-scripts and its training stack.
# Re-running is cheap: each step is skipped when already done.
#
#   ./bootstrap.sh                       sd-scripts from `git submodule update --init` (needs GitHub)
#   SD_SCRIPTS_ARCHIVE=x.tar.gz ./bootstrap.sh   offline: sd-scripts from an archive of the pinned tree
#
# Without SD_SCRIPTS_ARCHIVE, an archive at ../shared/vendor/sd-scripts-v0.10.1.tar.gz is used if present.
set -euo pipefail
cd "$(dirname "$0")"
venv="${KOHYA_1TO2_VENV:-.venv}"
python="${PYTHON:-python3}"

[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
py="$venv/bin/python"
if ! "$py" -c 'import kohya_1to2, pytest, xdist, hypothesis' 2>/dev/null; then
    "$py" -m pip install --quiet --disable-pip-version-check -e '.[dev]'
fi
archive="${SD_SCRIPTS_ARCHIVE:-}"
if [ -z "$archive" ] && [ -f ../shared/vendor/sd-scripts-v0.10.1.tar.gz ]; then
    archive=../shared/vendor/sd-scripts-v0.10.1.tar.gz
fi
exec "$py" -m kohya_1to2 setup ${archive:+--archive "$archive"}
