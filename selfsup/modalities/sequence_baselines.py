"""Feature sets that sequence evaluation compares: composition baselines, encoder features, and the
reverse-complement consistency of a DNA encoder. ``sequence_feature_sets`` assembles them all for
``selfsup evaluate`` (the "ssl" encoder, the baselines, the random-init encoder).

Baselines (what a probe on a learned encoder must beat):

* proteins: amino-acid composition (20 frequencies) and dipeptide frequencies (400), the classic
  features of subcellular-location predictors, concatenated (``protein_composition``).
* DNA: the 4-mer frequency profile (256) and its canonical, strand-merged version (136 classes
  {w, rc(w)}), which gives a read and its reverse complement the same profile.
* text: TF-IDF word features, learnt from the training split (``selfsup.modalities.text_baselines``).

Frequencies count only windows of unambiguous letters (the 20 standard amino acids; A C G T) and
divide by the number of such windows, so a sequence's features do not depend on its length.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterator, NamedTuple, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from selfsup.config import DataConfig
from selfsup.data.sequence_loader import SequenceBatchStream
from selfsup.data.sequences import SequenceSource
from selfsup.errors import DataError
from selfsup.modalities.base import FeatureSets
from selfsup.modalities.text_baselines import FittedBaseline
from selfsup.tokenize import make_tokenizer, reverse_complement
from selfsup.tokenize.alphabets import STANDARD_AMINO_ACIDS, STANDARD_NUCLEOTIDES
from selfsup.tokenize.base import TokenBatch, Tokenizer
from selfsup.train.checkpoint import random_init_encoder
from selfsup.train.device import autocast

DNA_K = 4
RC_CONSISTENCY_READS = 2000  # test reads the reverse-complement consistency is measured on


# ----------------------------------------------------------------------------------------------
# k-mer counting


def kmer_frequencies(sequences: Sequence[str], alphabet: str, k: int) -> torch.Tensor:
    """(N, len(alphabet)^k) float32: each sequence's frequencies of the k-letter words over
    ``alphabet`` (either case), indexed as base-A numbers in alphabet order (for ACGT and k=2:
    AA AC AG AT CA …). Windows holding any other letter are skipped; a sequence without a full
    window gets zeros."""
    if k < 1:
        raise DataError(f"k-mer size must be at least 1, got {k}")
    size = len(alphabet)
    lookup = np.full(256, -1, dtype=np.int64)
    for code, letter in enumerate(alphabet):
        lookup[ord(letter.upper())] = lookup[ord(letter.lower())] = code
    text = "".join(sequences)
    try:
        letters = np.frombuffer(text.encode("ascii"), dtype=np.uint8)
    except UnicodeEncodeError as error:
        raise DataError(f"non-ASCII character {text[error.start]!r} in a sequence; sequences are "
                        "letters of a protein or DNA alphabet") from None
    codes = lookup[letters]
    lengths = np.array([len(s) for s in sequences], dtype=np.int64)
    owner = np.repeat(np.arange(len(sequences)), lengths)
    windows = max(len(codes) - k + 1, 0)
    index = np.zeros(windows, dtype=np.int64)
    valid = owner[:windows] == owner[k - 1:k - 1 + windows]  # the window stays in one sequence
    for offset in range(k):
        part = codes[offset:offset + windows]
        valid &= part >= 0
        index = index * size + part
    cells = owner[:windows][valid] * size**k + index[valid]
    counts = np.bincount(cells, minlength=len(sequences) * size**k).reshape(len(sequences), size**k)
    totals = counts.sum(axis=1, keepdims=True)
    return torch.from_numpy(counts / np.maximum(totals, 1)).float()


def amino_acid_composition(sequences: Sequence[str]) -> torch.Tensor:
    """(N, 20) frequencies of the standard amino acids, in ``STANDARD_AMINO_ACIDS`` order."""
    return kmer_frequencies(sequences, STANDARD_AMINO_ACIDS, 1)


def dipeptide_frequencies(sequences: Sequence[str]) -> torch.Tensor:
    """(N, 400) frequencies of adjacent amino-acid pairs: column 20·i + j is the pair (aᵢ, aⱼ)."""
    return kmer_frequencies(sequences, STANDARD_AMINO_ACIDS, 2)


def protein_composition(sequences: Sequence[str]) -> torch.Tensor:
    """(N, 420): amino-acid composition, then dipeptide frequencies."""
    return torch.cat([amino_acid_composition(sequences), dipeptide_frequencies(sequences)], dim=1)


def kmer_profile(sequences: Sequence[str], k: int = DNA_K) -> torch.Tensor:
    """(N, 4^k) frequencies of the k-mers over A C G T (lexicographic order)."""
    return kmer_frequencies(sequences, STANDARD_NUCLEOTIDES, k)


def canonical_kmer_classes(k: int = DNA_K) -> torch.Tensor:
    """(4^k,) int64: each k-mer's class, the classes being the sets {w, rc(w)} numbered in the
    order of their lexicographically smaller member (136 classes for k = 4)."""
    index = torch.arange(4**k)
    digits = torch.stack([(index // 4**(k - 1 - i)) % 4 for i in range(k)], dim=1)
    # A C G T are 0 1 2 3, so a base's complement is 3 − code; reversing flips the digit order.
    rc_digits = (3 - digits).flip(1)
    rc_index = (rc_digits * 4 ** torch.arange(k - 1, -1, -1)).sum(dim=1)
    representative = torch.minimum(index, rc_index)
    return torch.unique(representative, return_inverse=True)[1]


def canonical_kmer_profile(sequences: Sequence[str], k: int = DNA_K) -> torch.Tensor:
    """(N, classes) strand-merged profile: the summed frequencies of w and rc(w) per class.

    A read and its reverse complement get the same profile, since the frequency of w in rc(x) is
    the frequency of rc(w) in x.
    """
    profile = kmer_profile(sequences, k)
    classes = canonical_kmer_classes(k)
    merged = torch.zeros(len(sequences), int(classes.max()) + 1)
    return merged.index_add_(1, classes, profile)


# ----------------------------------------------------------------------------------------------
# encoder features


def token_encoder_inputs(spec: dict[str, Any]) -> tuple[Tokenizer, int]:
    """The tokeniser and the row length in tokens (specials included) that a run's token encoder
    was pretrained with, from its ``encoder.json`` (``spec``; runs from before ``max_length`` was
    recorded get the config's default)."""
    return make_tokenizer(**spec["tokenizer"]), int(spec.get("max_length", DataConfig.max_length))


def evaluation_stream(source: SequenceSource, tokenizer: Tokenizer, device: torch.device | str,
                      batch_size: int = 256,
                      max_length: int = DataConfig.max_length) -> SequenceBatchStream:
    """Every sequence of ``source`` once, tokenised up front, in batches of ``batch_size``
    cut from the whole source sorted by length (the least padding), long sequences cut to their
    first ``max_length`` tokens. Read it with :func:`in_order_batches`."""
    # One bucket over every sequence: the chunks of training's bucketing only serve randomness.
    whole = max(1, math.ceil(len(source) / batch_size))
    return SequenceBatchStream(source, tokenizer, batch_size, device, seed=0, max_length=max_length,
                               shuffle=False, drop_last=False, bucket_batches=whole,
                               random_crop=False)


def in_order_batches(stream: SequenceBatchStream) -> Iterator[tuple[np.ndarray, TokenBatch]]:
    """(source indices, tokens on the stream's device) of each batch of an
    :func:`evaluation_stream`. Every index comes exactly once, so writing each batch's results at
    its indices gives them in the source's order."""
    for indices, (tokens, _) in zip(stream.batches(0), stream.epoch(0), strict=True):
        yield indices, tokens


@torch.no_grad()
def stream_features(encoder: nn.Module, stream: SequenceBatchStream,
                    precision: str = "fp32") -> torch.Tensor:
    """float32 (N, D) pooled features of ``encoder`` in eval mode on every sequence of an
    :func:`evaluation_stream`, in the source's order."""
    encoder.eval()
    features: torch.Tensor | None = None
    for indices, tokens in in_order_batches(stream):
        with autocast(stream.device, precision):
            out = encoder(tokens.ids, tokens.attention_mask).float()
        if features is None:
            features = torch.empty(len(stream.source), out.shape[1], device=stream.device)
        features[torch.from_numpy(indices).to(stream.device)] = out
    assert features is not None  # a SequenceSource is never empty
    return features


def encoder_features(encoder: nn.Module, source: SequenceSource, tokenizer: Tokenizer,
                     device: torch.device | str, batch_size: int = 256,
                     max_length: int = DataConfig.max_length, precision: str = "fp32") -> torch.Tensor:
    """float32 (N, D) pooled features of every sequence of ``source``, in the source's order
    (:func:`stream_features` of an :func:`evaluation_stream`)."""
    stream = evaluation_stream(source, tokenizer, device, batch_size, max_length)
    return stream_features(encoder, stream, precision)


@torch.no_grad()
def token_features(encoder: nn.Module, source: SequenceSource, tokenizer: Tokenizer,
                   device: torch.device | str, batch_size: int = 256,
                   max_length: int = DataConfig.max_length,
                   precision: str = "fp32") -> list[np.ndarray]:
    """Per-token features of every sequence of ``source``, in its order: one float32 (L_i, D)
    array each, the encoder's states at the sequence's own tokens (``<cls>``, ``<eos>`` and
    padding removed); a sequence longer than ``max_length`` tokens keeps its first window, as
    the pooled features do."""
    encoder.eval()
    stream = evaluation_stream(source, tokenizer, device, batch_size, max_length)
    features: list = [None] * len(source)
    for indices, tokens in in_order_batches(stream):
        with autocast(stream.device, precision):
            states = encoder.forward_tokens(tokens.ids, tokens.attention_mask).float().cpu()
        own = ((tokens.ids != tokenizer.cls_id) & (tokens.ids != tokenizer.eos_id)
               & (tokens.ids != tokenizer.pad_id)).cpu()
        for row, index in enumerate(indices):
            features[index] = states[row][own[row]].numpy()
    return features


def reverse_complement_source(source: SequenceSource) -> SequenceSource:
    """``source`` with every DNA sequence replaced by its reverse complement (same ids, labels)."""
    if source.alphabet != "dna":
        raise DataError(f"{source.name} holds {source.alphabet} sequences; reverse complements "
                        "are for DNA")
    flipped = [reverse_complement(sequence) for sequence in source.sequences]
    return SequenceSource(**{**vars(source), "sequences": flipped})


# ----------------------------------------------------------------------------------------------
# reverse-complement consistency


class RcConsistency(NamedTuple):
    """Mean cosine of f(x) and f(rc x) over reads, and of f(x) and f(rc y) for random other reads y."""

    rc_cosine: float
    random_pair_cosine: float


def rc_consistency(features: torch.Tensor, rc_features: torch.Tensor, seed: int = 0) -> RcConsistency:
    """Reverse-complement consistency from features of reads (N, D) and of their reverse
    complements (N, D), row i of both from read i.

    The random pairs compare read i with the reverse complement of another read j ≠ i drawn
    uniformly: the same kind of pair with the read's identity broken. An encoder that knows the
    two strands are one molecule shows rc_cosine near 1 and random pairs well below.
    """
    if features.shape != rc_features.shape or features.ndim != 2 or len(features) < 2:
        raise DataError(f"rc consistency needs two (N ≥ 2, D) feature batches of one shape, got "
                        f"{tuple(features.shape)} and {tuple(rc_features.shape)}")
    count = len(features)
    generator = torch.Generator().manual_seed(seed)
    other = (torch.arange(count) + torch.randint(1, count, (count,), generator=generator)) % count
    other = other.to(features.device)
    same = F.cosine_similarity(features.float(), rc_features.float(), dim=1).mean()
    random_pairs = F.cosine_similarity(features.float(), rc_features[other].float(), dim=1).mean()
    return RcConsistency(float(same), float(random_pairs))


def reverse_complement_consistency(embed: Callable[[SequenceSource], torch.Tensor],
                                   source: SequenceSource, seed: int = 0) -> RcConsistency:
    """``rc_consistency`` of ``embed`` (a source → (N, D) features, e.g. ``encoder_features`` with
    its other arguments bound) on the reads of ``source`` and their reverse complements."""
    return rc_consistency(embed(source), embed(reverse_complement_source(source)), seed)


# ----------------------------------------------------------------------------------------------
# everything evaluation compares


FeatureMaker = Callable[[SequenceSource], torch.Tensor]


def sequence_feature_sets(encoder: nn.Module, spec: dict[str, Any], train: SequenceSource,
                          test: SequenceSource, device: torch.device | str, batch_size: int = 256,
                          precision: str = "fp32",
                          baselines: Optional[dict[str, Callable[[Sequence[str]], torch.Tensor]]] = None,
                          fitted: Optional[dict[str, FittedBaseline]] = None,
                          seed: int = 0) -> tuple[FeatureSets, dict[str, FeatureMaker]]:
    """The (train, test) features ``selfsup evaluate`` probes, and the feature maker of each.

    ``spec`` is the ``encoder.json`` of a token encoder of ``train``'s alphabet: its ``backbone``
    section, ``tokenizer`` config and ``max_length``. Sets: "ssl" (the trained encoder) and, when
    ``baselines`` is given (the modality's: name → sequences → features), those baselines, the
    ``fitted`` ones (learnt from ``train``, e.g. TF-IDF) and "random_init" (the same backbone,
    freshly initialised with ``seed``).
    """
    tokenizer, max_length = token_encoder_inputs(spec)

    def encoded_by(model: nn.Module) -> FeatureMaker:
        return lambda source: encoder_features(model, source, tokenizer, device, batch_size,
                                               max_length, precision)

    makers: dict[str, FeatureMaker] = {"ssl": encoded_by(encoder)}
    if baselines is not None:
        for name, features in baselines.items():
            makers[name] = lambda source, features=features: features(source.sequences).to(device)
        for name, fit in (fitted or {}).items():
            learnt = fit(train.sequences)  # from the training split only
            makers[name] = lambda source, learnt=learnt: learnt(source.sequences).to(device)
        makers["random_init"] = encoded_by(random_init_encoder(spec, seed, device))
    sets = {name: (make(train), make(test)) for name, make in makers.items()}
    return sets, makers
