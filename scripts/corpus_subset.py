"""Write a random subset of a sequence corpus as a gzipped FASTA file of at most ``--max-mb`` MB.

The device machine has none of the Debian data packages and takes at most 64 MiB of carried
files, so a GPU pretraining run on ``uniprot-go`` (165 M residues) reads a subset that this script
writes here; ``selfsup pretrain --dataset FILE.fa.gz`` then reads it like any FASTA file. The
subset is drawn from the corpus's train split only, in an order fixed by ``--seed``, and
sequences are added until the compressed size reaches the limit.

    python scripts/corpus_subset.py --dataset uniprot-go --max-mb 50 \
        --out .data/uniprot-go-subset.fa.gz
"""

from __future__ import annotations

import argparse
import gzip
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from selfsup.data import load_split  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="uniprot-go")
    parser.add_argument("--max-mb", type=float, default=50.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    corpus = load_split(args.dataset, "train")
    order = np.random.default_rng(args.seed).permutation(len(corpus))
    limit = int(args.max_mb * 1e6)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    written = residues = 0
    with open(partial, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as handle:
        for index in order:
            # the compressed stream lags behind by at most a block: stop a little early
            if raw.tell() > 0.98 * limit:
                break
            sequence = corpus.sequences[index]
            handle.write(f">{corpus.ids[index]}\n{sequence}\n".encode("ascii"))
            written += 1
            residues += len(sequence)
    partial.replace(out)
    print(f"{out}: {written:,} of {len(corpus):,} sequences ({residues / 1e6:.1f} M residues), "
          f"{out.stat().st_size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
