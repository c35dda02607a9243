#!/usr/bin/env bash
# Install the Debian packages that hold selfsup's sequence data sets, where apt is available.
#   scripts/install-seq-data.sh         the small ones the tests use (about 20 MB to download):
#                                       predictnls (swissprot-loc), microbiomeutil-data (16s-gold),
#                                       ncbi-blast+ (blastdbcmd, to read BLAST databases)
#   scripts/install-seq-data.sh --all   also the pretraining corpora (about 270 MB to download,
#                                       1.1 GB installed): metastudent-data (uniprot-go) and
#                                       ncbi-rrna-data (16s-rrna)
# Packages already installed are skipped, so running it again does nothing.
set -uo pipefail
case "${1:-}" in
  "" | --all) ;;
  *) echo "usage: $0 [--all]" >&2; exit 2 ;;
esac
packages=()
need() { [ -e "$2" ] || packages+=("$1"); }  # package, a file it installs
need predictnls /usr/share/predictnls/data/allProt.fasta
need microbiomeutil-data /usr/share/microbiomeutil-data/RESOURCES/rRNA16S.gold.fasta
need ncbi-blast+ /usr/bin/blastdbcmd
if [ "${1:-}" = "--all" ]; then
  need metastudent-data /usr/share/metastudent-data/dataset_201401/MFO/goasp.fasta.psq
  need ncbi-rrna-data /usr/share/ncbi/data/Combined16SrRNA.nsq
fi
[ ${#packages[@]} -eq 0 ] && exit 0
command="apt-get install -y --no-install-recommends ${packages[*]}"
if ! command -v apt-get >/dev/null 2>&1; then
  echo "note: no apt-get here; on Debian or Ubuntu run: sudo $command"
  echo "      or point --data-dir / SELFSUP_DATA at a folder holding the files"
  exit 0
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "installing Debian packages: ${packages[*]}"
$sudo apt-get update -qq >/dev/null || true
$sudo $command -qq >/dev/null \
  || echo "note: could not install ${packages[*]} (run: sudo $command); tests that need them will be skipped"
