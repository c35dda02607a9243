#!/usr/bin/env bash
# Install the Debian packages that hold selfsup's built-in data sets, where apt is available.
set -uo pipefail
packages=()
[ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || packages+=(dataset-fashion-mnist)
[ ${#packages[@]} -eq 0 ] && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
  echo "note: no apt-get here; install ${packages[*]} yourself, or point --data-dir / SELFSUP_DATA at the IDX files"
  exit 0
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "installing Debian packages: ${packages[*]}"
$sudo apt-get update -qq >/dev/null || true
$sudo apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null \
  || echo "note: could not install ${packages[*]}; tests that need them will be skipped"
