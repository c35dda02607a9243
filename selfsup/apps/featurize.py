"""Featurisers: protein sequences → fixed-length feature vectors for a surrogate model.

A featuriser is any callable ``featurizer(sequences: list[str]) -> np.ndarray`` of shape (N, D)
with a ``name``. Built in:

- ``OneHot(sites)``: one-hot of the residues at the given 1-based sites (20 columns per site), or
  of every position when ``sites`` is None (sequences of equal length).
- ``Descriptors(sites)``: four physico-chemical numbers per site (``DESCRIPTOR_TABLE``).
- ``RunEmbedding(run_dir, pooling)``: the per-residue states of a ``selfsup`` run's protein
  sequence encoder (e.g. ``selfsup pretrain --method mlm --dataset swissprot-loc --backbone
  transformer-tiny``), mean-pooled over the whole sequence or over the sites, cached as ``.npy``
  in the run directory. ``run_residue_encoder(run_dir)`` is its sequences → per-residue states
  step: the run's Transformer with its protein tokeniser, in batches of similar length, on CUDA
  when there is one.

``make_featurizer("onehot" | "descriptors" | RUN_DIR, sites)`` builds one from a command-line word.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable, Optional, Protocol, Sequence, Union

import numpy as np
import torch

from selfsup.errors import ConfigError, DataError
from selfsup.files import save_npy
from selfsup.run_dir import ENCODER_SPEC_FILE, ENCODER_WEIGHTS_FILE, RunDir
from selfsup.tokenize.alphabets import STANDARD_AMINO_ACIDS

# Per-residue descriptors, one row per amino acid: (hydropathy, volume, charge, polarity).
# hydropathy: Kyte & Doolittle (1982) J Mol Biol 157:105, positive = hydrophobic.
# volume: side-chain volume in Å^3 (Zamyatnin 1972, Prog Biophys Mol Biol 24:107).
# charge: net side-chain charge at pH 7 (K, R +1; D, E -1; H counted neutral, pKa ≈ 6).
# polarity: Grantham (1974) Science 185:862 polarity scale.
DESCRIPTOR_NAMES = ("hydropathy", "volume", "charge", "polarity")
DESCRIPTOR_TABLE = {
    "A": (1.8, 88.6, 0, 8.1),
    "R": (-4.5, 173.4, 1, 10.5),
    "N": (-3.5, 114.1, 0, 11.6),
    "D": (-3.5, 111.1, -1, 13.0),
    "C": (2.5, 108.5, 0, 5.5),
    "Q": (-3.5, 143.8, 0, 10.5),
    "E": (-3.5, 138.4, -1, 12.3),
    "G": (-0.4, 60.1, 0, 9.0),
    "H": (-3.2, 153.2, 0, 10.4),
    "I": (4.5, 166.7, 0, 5.2),
    "L": (3.8, 166.7, 0, 4.9),
    "K": (-3.9, 168.6, 1, 11.3),
    "M": (1.9, 162.9, 0, 5.7),
    "F": (2.8, 189.9, 0, 5.2),
    "P": (-1.6, 112.7, 0, 8.0),
    "S": (-0.8, 89.0, 0, 9.2),
    "T": (-0.7, 116.1, 0, 8.6),
    "W": (-0.9, 227.8, 0, 5.4),
    "Y": (-1.3, 193.6, 0, 6.2),
    "V": (4.2, 140.0, 0, 5.9),
}
POOLINGS = ("mean", "sites")
ENCODER_FILE = ENCODER_WEIGHTS_FILE  # the run directory's encoder weights, by its old name here
BUILTIN_FEATURIZERS = ("onehot", "descriptors")
EMBED_BATCH = 512  # sequences per forward pass of a run's encoder
# RunEmbedding asks its encoder for this many residues at a time: the per-residue states of a
# whole 149k-variant pool (8.4M residues × 64 floats) would take over 2 GB at once.
RESIDUES_PER_CALL = 1_000_000
PROTEIN_RUN_HINT = ("pretrain a protein encoder (selfsup pretrain --method mlm --dataset "
                    "swissprot-loc --backbone transformer-tiny) or use --featurizer onehot or "
                    "descriptors")


# Dense learnt embeddings are projected on this many principal components before the GP (see
# ``selfsup.apps.bo``); indicator and descriptor columns are used as they are.
EMBEDDING_DIMS = 32


class Featurizer(Protocol):
    """Sequences in, one float row per sequence out. ``max_dims``: the number of principal
    components the surrogate should keep of wider features (None: keep every column)."""

    name: str
    max_dims: Optional[int]

    def __call__(self, sequences: list[str]) -> np.ndarray:  # (N, D)
        ...


def variable_sites(sequences: Sequence[str]) -> list[int]:
    """The 1-based positions where equal-length ``sequences`` do not all agree."""
    _check_equal_lengths(sequences, "finding the variable sites")
    text = "".join(sequences).encode("latin-1", "replace")  # one byte per letter
    letters = np.frombuffer(text, dtype=np.uint8).reshape(len(sequences), -1)
    return (np.flatnonzero((letters != letters[0]).any(axis=0)) + 1).tolist()


class OneHot:
    """One-hot of the residue at each site: 20 columns per site, in ``STANDARD_AMINO_ACIDS``
    order. ``sites``: 1-based positions; None means every position. Never reduced: one-hot
    variance is spread evenly over its columns, so any few principal components lose most of it."""

    max_dims = None

    def __init__(self, sites: Optional[Sequence[int]] = None) -> None:
        self.sites = None if sites is None else _check_sites(sites)
        self.name = "onehot" if sites is None else f"onehot@{_sites_label(self.sites)}"

    def __call__(self, sequences: list[str]) -> np.ndarray:
        codes = _residue_codes(sequences, self.sites)  # (N, S) in 0..19
        features = np.zeros((codes.shape[0], codes.shape[1], len(STANDARD_AMINO_ACIDS)), np.float32)
        np.put_along_axis(features, codes[..., None], 1.0, axis=-1)
        return features.reshape(codes.shape[0], -1)


class Descriptors:
    """The four ``DESCRIPTOR_NAMES`` of the residue at each site, each scale standardised over
    the 20 amino acids (mean 0, std 1) so no unit dominates: 4 columns per site."""

    max_dims = None

    def __init__(self, sites: Optional[Sequence[int]] = None) -> None:
        self.sites = None if sites is None else _check_sites(sites)
        self.name = "descriptors" if sites is None else f"descriptors@{_sites_label(self.sites)}"
        table = np.array([DESCRIPTOR_TABLE[a] for a in STANDARD_AMINO_ACIDS], dtype=np.float64)
        self.table = ((table - table.mean(0)) / table.std(0)).astype(np.float32)  # (20, 4)

    def __call__(self, sequences: list[str]) -> np.ndarray:
        codes = _residue_codes(sequences, self.sites)
        return self.table[codes].reshape(codes.shape[0], -1)


ResidueEncoder = Callable[[list[str]], list[np.ndarray]]


class RunEmbedding:
    """Embeddings from the sequence encoder of a ``selfsup`` run, pooled to one vector each
    (reduced to ``EMBEDDING_DIMS`` principal components by the surrogate).

    pooling: "mean" averages the per-residue embeddings over the whole sequence; "sites" over the
    given 1-based ``sites`` only (the mutated positions). ``encode`` maps sequences to per-residue
    embeddings, one (L_i, D) array per sequence aligned with its residues (special tokens already
    removed); by default ``run_residue_encoder(run_dir)``, whose run directory is checked at once
    but whose weights are loaded only at the first cache miss. It is called on consecutive slices of
    about ``RESIDUES_PER_CALL`` residues, so memory holds one slice's states at a time. Results
    are cached in ``RUN/bo-embeddings/<pooling>-<hash>.npy``, keyed by a hash of the sequences,
    the pooling, the sites ("sites" pooling) and the encoder file's size and time, so a
    149k-candidate pool is embedded once.
    """

    max_dims = EMBEDDING_DIMS

    def __init__(self, run_dir: Union[str, Path], pooling: str = "mean",
                 sites: Optional[Sequence[int]] = None,
                 encode: Optional[ResidueEncoder] = None) -> None:
        self.run_dir = Path(run_dir)
        self.run = RunDir(self.run_dir)
        if not self.run_dir.is_dir():
            raise ConfigError(f"run directory {self.run_dir} does not exist")
        if pooling not in POOLINGS:
            raise ConfigError(f"pooling {pooling!r}: choose one of {', '.join(POOLINGS)}")
        self.pooling = pooling
        # mean pooling ignores the sites, so they must not split its cache either
        self.sites = _check_sites(sites) if pooling == "sites" else None
        if encode is None:
            _check_protein_run(self.run_dir)  # refuse a wrong run now, not after featurising
        self.encode = encode
        self.name = f"{self.run_dir.resolve().name}:{pooling}"

    def cache_path(self, sequences: list[str]) -> Path:
        digest = hashlib.sha256()
        digest.update(f"{self.pooling}|{self.sites}|".encode())
        encoder = self.run.encoder_weights
        if encoder.is_file():  # a retrained encoder must not reuse old embeddings
            digest.update(f"{encoder.stat().st_size}|{encoder.stat().st_mtime_ns}|".encode())
        digest.update("\n".join(sequences).encode())
        return self.run.bo_cache_dir / f"{self.pooling}-{digest.hexdigest()[:16]}.npy"

    def __call__(self, sequences: list[str]) -> np.ndarray:
        if len(sequences) == 0:
            raise DataError("no sequences to featurise")
        path = self.cache_path(sequences)
        cached = _cached_features(path, len(sequences))
        if cached is not None:
            return cached
        if self.encode is None:  # loaded at the first miss: a cached pool needs no weights
            self.encode = run_residue_encoder(self.run_dir)
        features = np.stack([self._pool(residues, sequence)
                             for part in _residue_slices(sequences, RESIDUES_PER_CALL)
                             for residues, sequence in zip(self.encode(part), part, strict=True)])
        features = features.astype(np.float32)
        save_npy(path, features)  # atomically: never a half-written cache
        return features

    def _pool(self, residues: np.ndarray, sequence: str) -> np.ndarray:
        if residues.shape[0] != len(sequence):
            raise DataError(
                f"{self.run_dir}: the encoder gave {residues.shape[0]} residue embeddings for a "
                f"sequence of {len(sequence)} residues; the encoder must drop its special tokens"
            )
        if self.pooling == "mean":
            return residues.mean(0)
        if max(self.sites) > len(sequence):
            raise DataError(f"site {max(self.sites)} is beyond a sequence of {len(sequence)} "
                            "residues")
        return residues[[s - 1 for s in self.sites]].mean(0)


def make_featurizer(spec: str, sites: Optional[Sequence[int]] = None,
                    pooling: str = "mean") -> Featurizer:
    """``onehot`` or ``descriptors`` at ``sites`` (None: every position), or a run directory's
    encoder with ``pooling``."""
    if spec == "onehot":
        return OneHot(sites)
    if spec == "descriptors":
        return Descriptors(sites)
    if Path(spec).is_dir():
        return RunEmbedding(spec, pooling, sites)
    raise ConfigError(
        f"featurizer {spec!r}: use {' or '.join(BUILTIN_FEATURIZERS)}, or the path of a run "
        "directory whose sequence encoder should embed the candidates"
    )


def run_residue_encoder(run_dir: Union[str, Path], batch_size: int = EMBED_BATCH,
                        device: str = "auto") -> ResidueEncoder:
    """The per-residue encoder of a protein sequence run: ``encode(sequences)`` → one float32
    (L_i, D) array per sequence, the encoder's final states at its residues (``<cls>``, ``<eos>``
    and padding dropped), in the order given.

    The run's Transformer and protein tokeniser come from its ``encoder.json`` and
    ``encoder.safetensors``. ``encode`` sorts the sequences by length into batches of
    ``batch_size`` (little padding; a key mask keeps padding out of every real token's state) and
    runs in fp32 under ``torch.inference_mode`` on ``device`` ("auto": CUDA when available, else
    CPU, where the same input always gives the same output).

    Raises ConfigError for a run dir without a trained encoder or whose encoder is not a protein
    token encoder (image, DNA, text runs); ``encode`` raises DataError for a sequence longer than
    the encoder's maximum length (never truncated silently) and passes on the tokeniser's error
    for a letter outside the protein alphabet.
    """
    # Imported here: the training stack costs import time that only run directories need.
    from selfsup.backbones.token_encoder import as_token_encoder
    from selfsup.data.sequences import SequenceSource
    from selfsup.modalities.sequence_baselines import token_encoder_inputs, token_features
    from selfsup.train.checkpoint import load_encoder
    from selfsup.train.device import resolve_device

    run_dir, device = Path(run_dir), resolve_device(device)
    _check_protein_run(run_dir)
    module, spec = load_encoder(run_dir, device)
    encoder = as_token_encoder(module, "embedding candidates")
    encoder.eval()
    tokenizer, max_tokens = token_encoder_inputs(spec)  # pretraining rows, specials included
    if encoder.max_tokens is not None:
        max_tokens = min(max_tokens, encoder.max_tokens)
    max_residues = max_tokens - tokenizer.num_special_tokens

    @torch.inference_mode()
    def encode(sequences: list[str]) -> list[np.ndarray]:
        for number, sequence in enumerate(sequences, start=1):
            if len(sequence) > max_residues:
                raise DataError(
                    f"sequence {number} has {len(sequence)} residues, more than the {max_residues} "
                    f"that the encoder of {run_dir} takes ({max_tokens} tokens with "
                    f"{tokenizer.num_special_tokens} specials, its pretraining length); shorten "
                    "the candidates, or pretrain with a larger data.max_length"
                )
        source = SequenceSource([f"sequence {n}" for n in range(1, len(sequences) + 1)],
                                list(sequences), "protein", name="candidates")
        # the states at each residue, as `selfsup embed --per-token` writes them
        return token_features(encoder, source, tokenizer, device, batch_size, max_tokens, "fp32")

    return encode


def _cached_features(path: Path, rows: int) -> Optional[np.ndarray]:
    """The cached (rows, D) float32 features at ``path``; None when there are none, or when the
    file is not such an array (torn, replaced, from another version): a cache is recomputed,
    never trusted blindly."""
    if not path.is_file():
        return None
    try:
        features = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError):
        return None
    if (not isinstance(features, np.ndarray) or features.dtype != np.float32
            or features.ndim != 2 or features.shape[0] != rows
            or not np.isfinite(features).all()):
        return None
    return features


def _check_protein_run(run_dir: Path) -> None:
    """ConfigError unless ``run_dir`` holds a trained protein token encoder. Cheap: reads its
    ``encoder.json`` only, no weights."""
    run = RunDir(run_dir)
    if not run.has_encoder():
        raise ConfigError(f"{run_dir} holds no trained encoder ({ENCODER_SPEC_FILE} and "
                          f"{ENCODER_WEIGHTS_FILE}); {PROTEIN_RUN_HINT}")
    from selfsup.modalities.base import spec_modality  # the training stack: only for run dirs

    spec = run.read_encoder_spec()
    modality = spec_modality(spec)
    if modality != "protein":
        reads = "images" if modality == "image" else f"{modality} sequences"
        raise ConfigError(f"{run_dir}: its encoder ({spec['backbone'].get('name')}) reads "
                          f"{reads}, not protein sequences; {PROTEIN_RUN_HINT}")


def _residue_slices(sequences: list[str], residues: int) -> list[list[str]]:
    """``sequences`` cut into consecutive slices of at most ``residues`` residues in all (a longer
    sequence alone makes a slice)."""
    slices: list[list[str]] = [[]]
    total = 0
    for sequence in sequences:
        if slices[-1] and total + len(sequence) > residues:
            slices.append([])
            total = 0
        slices[-1].append(sequence)
        total += len(sequence)
    return slices


def _residue_codes(sequences: Sequence[str], sites: Optional[list[int]]) -> np.ndarray:
    """(N, S) int64 indices into ``STANDARD_AMINO_ACIDS`` of the residues at ``sites``."""
    if len(sequences) == 0:
        raise DataError("no sequences to featurise")
    if sites is None:
        _check_equal_lengths(sequences, "featurising every position")
        positions = list(range(len(sequences[0])))
    else:
        positions = [s - 1 for s in sites]
    lookup = np.full(256, -1, dtype=np.int64)
    for code, letter in enumerate(STANDARD_AMINO_ACIDS):
        lookup[ord(letter)] = code
    last = max(positions)
    codes = np.empty((len(sequences), len(positions)), dtype=np.int64)
    for row, sequence in enumerate(sequences):
        if len(sequence) <= last:
            raise DataError(f"sequence {row + 1} has {len(sequence)} residues, fewer than site "
                            f"{last + 1}")
        letters = np.frombuffer(sequence.encode("latin-1", "replace"), dtype=np.uint8)[positions]
        codes[row] = lookup[letters]
        if (codes[row] < 0).any():
            bad = positions[int(np.argmax(codes[row] < 0))]
            raise DataError(
                f"sequence {row + 1}, position {bad + 1}: {sequence[bad]!r} is not one of the 20 "
                "standard amino acids"
            )
    return codes


def _check_sites(sites: Optional[Sequence[int]]) -> list[int]:
    """``sites`` as a list; ConfigError unless they are 1-based positions, at least one."""
    sites = list(sites or [])
    if not sites or min(sites) < 1:
        raise ConfigError(f"sites {sites}: give the 1-based positions to featurise, at least one")
    return sites


def _check_equal_lengths(sequences: Sequence[str], why: str) -> None:
    lengths = {len(s) for s in sequences}
    if len(lengths) > 1:
        raise DataError(
            f"{why} needs sequences of equal length (aligned variants), got lengths "
            f"{sorted(lengths)[:5]}; give --sites or use a run directory's encoder"
        )


def _sites_label(sites: list[int]) -> str:
    return ",".join(map(str, sites))
