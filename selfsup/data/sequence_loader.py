"""Batches of token ids on the training device, bucketed by length, in an order fixed by (seed, epoch).

The sequence counterpart of ``selfsup.data.loader.BatchStream``. Every sequence is tokenised once,
up front, into one flat array; a batch is then cut from it, right-padded and copied to the device.

Bucketing. Protein lengths spread over two orders of magnitude (swissprot-loc: 3 to 4,900+
residues), so a batch of randomly drawn sequences is mostly padding. The epoch's random
permutation is cut into chunks of ``bucket_batches`` batches; each chunk is sorted by length and
cut into batches, and the batches of the whole epoch are shuffled. Batches then hold sequences of
similar length, while which sequences meet in a batch stays random (a chunk of 50 batches is a
random sample of the data). With ``bucket_batches=1`` this is plain random batching.

Cropping. Sequences longer than ``max_length`` tokens (specials included) are cut to a window:
at a random start in training (a fresh draw per sequence and epoch), at the start in evaluation.

Exactness. The permutation, the batch order and the crops depend only on (seed, epoch), so a
resumed run sees the same batches; every sample is served exactly once per epoch (``drop_last``
leaves out the permutation's tail, less than one batch). Data-parallel processes cut the same
global batches and keep slice ``rank`` of ``world_size`` of each, as ``BatchStream`` does.
"""

from __future__ import annotations

import math
from typing import Iterator, Optional

import numpy as np
import torch

from selfsup.data.loader import check_batching, epoch_seed
from selfsup.data.sequences import SequenceSource
from selfsup.errors import ConfigError
from selfsup.tokenize.base import TokenBatch, Tokenizer

ORDER_STREAM, BATCH_ORDER_STREAM, CROP_STREAM = 0, 1, 2  # the random streams of an epoch
DEFAULT_BUCKET_BATCHES = 50

SequenceBatch = tuple[TokenBatch, Optional[torch.Tensor]]


class EncodedSequences:
    """Every sequence of a source as content token ids (no specials), in one flat array.

    ``lengths[i]`` tokens of sequence i start at ``offsets[i]``; the array uses the smallest
    unsigned integer type that holds the vocabulary (one byte for protein and DNA letters).
    """

    def __init__(self, source: SequenceSource, tokenizer: Tokenizer) -> None:
        lead = int(tokenizer.add_cls)
        trail = int(tokenizer.add_eos)
        dtype = np.min_scalar_type(tokenizer.vocab_size - 1)
        parts = []
        for sequence, name in zip(source.sequences, source.ids, strict=True):
            ids = tokenizer.encode(sequence, name).numpy()
            parts.append(ids[lead:len(ids) - trail].astype(dtype))
        self.lengths = np.array([len(p) for p in parts], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)[:-1]]).astype(np.int64)
        self.tokens = np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)

    def __len__(self) -> int:
        return len(self.lengths)


class SequenceBatchStream:
    """Epochs of (TokenBatch, labels) batches on ``device``: int64 ids (B, L), bool attention
    mask (B, L), int64 labels (B,) or None.

    Args:
        source: the sequences (and labels) to batch.
        tokenizer: turns them into ids.
        batch_size: sequences per global batch (over all processes).
        device: where the batches are delivered.
        seed: with the epoch number, fixes the order, the batches and the crops.
        max_length: the longest batch row in tokens, specials included; longer sequences are cropped.
        shuffle: a fresh permutation each epoch; else the source's order.
        drop_last: leave out the permutation's tail that does not fill a batch.
        bucket_batches: batches per length-sorted chunk (1: no bucketing).
        random_crop: crop long sequences at a random start (default: when shuffling), else at 0.
        rank, world_size: this process's slice of each batch.
    """

    def __init__(self, source: SequenceSource, tokenizer: Tokenizer, batch_size: int,
                 device: torch.device | str, seed: int, max_length: int = 1024,
                 shuffle: bool = True, drop_last: bool = True,
                 bucket_batches: int = DEFAULT_BUCKET_BATCHES, random_crop: Optional[bool] = None,
                 rank: int = 0, world_size: int = 1) -> None:
        check_batching(source.name, len(source), "sequences", batch_size, drop_last, rank,
                       world_size)
        if bucket_batches < 1:
            raise ConfigError(f"bucket_batches must be at least 1, got {bucket_batches}")
        self.room = max_length - tokenizer.num_special_tokens  # content tokens a row can hold
        if self.room < 1:
            raise ConfigError(f"max_length={max_length} leaves no room for a token next to the "
                              f"{tokenizer.num_special_tokens} special(s); use a larger max_length")
        self.source, self.tokenizer = source, tokenizer
        self.batch_size, self.seed = batch_size, seed
        self.device = torch.device(device)
        self.max_length = max_length
        self.shuffle, self.drop_last = shuffle, drop_last
        self.bucket_batches = bucket_batches
        self.random_crop = shuffle if random_crop is None else random_crop
        self.rank, self.world_size = rank, world_size
        self.encoded = EncodedSequences(source, tokenizer)
        # tokens per row after cropping, specials included: what bucketing sorts by
        self.row_lengths = np.minimum(self.encoded.lengths, self.room) + tokenizer.num_special_tokens

    def __len__(self) -> int:
        """Batches per epoch."""
        if self.drop_last:
            return len(self.source) // self.batch_size
        return math.ceil(len(self.source) / self.batch_size)

    # ------------------------------------------------------------------ the order of an epoch

    def batches(self, epoch: int) -> list[np.ndarray]:
        """The sample indices of each global batch of ``epoch``, in the order they are served."""
        count = len(self.source)
        if self.shuffle:
            order = np.random.default_rng(epoch_seed(self.seed, epoch, ORDER_STREAM)).permutation(count)
        else:
            order = np.arange(count)
        order = order[: len(self) * self.batch_size] if self.drop_last else order
        batches: list[np.ndarray] = []
        chunk_size = self.batch_size * self.bucket_batches
        for start in range(0, len(order), chunk_size):
            chunk = order[start:start + chunk_size]
            if self.bucket_batches > 1:
                chunk = chunk[np.argsort(self.row_lengths[chunk], kind="stable")]
            batches += [chunk[i:i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        if self.shuffle and self.bucket_batches > 1:
            # otherwise every chunk would run from short to long batches
            rng = np.random.default_rng(epoch_seed(self.seed, epoch, BATCH_ORDER_STREAM))
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    def crop_starts(self, epoch: int) -> np.ndarray:
        """(N,) the first content token each sequence's row holds in ``epoch``."""
        excess = np.maximum(self.encoded.lengths - self.room, 0)
        if not self.random_crop:
            return np.zeros(len(excess), dtype=np.int64)
        draws = np.random.default_rng(epoch_seed(self.seed, epoch, CROP_STREAM)).random(len(excess))
        return np.minimum((draws * (excess + 1)).astype(np.int64), excess)

    def padding_fraction(self, epoch: int = 0) -> float:
        """The share of the epoch's batch positions (rows × longest row) that are padding."""
        real = padded = 0
        for indices in self.batches(epoch):
            lengths = self.row_lengths[indices]
            real += int(lengths.sum())
            padded += len(indices) * int(lengths.max())
        return 1.0 - real / padded

    # ------------------------------------------------------------------ batches

    def epoch(self, epoch: int) -> Iterator[SequenceBatch]:
        """This process's part of each batch of ``epoch``."""
        starts = self.crop_starts(epoch)
        labels = self.source.labels
        pin = self.device.type == "cuda"
        for indices in self.batches(epoch):
            if self.world_size > 1:
                indices = np.array_split(indices, self.world_size)[self.rank]
            batch = self.assemble(indices, starts)
            if pin:
                batch = TokenBatch(batch.ids.pin_memory(), batch.attention_mask.pin_memory())
            tokens = TokenBatch(batch.ids.to(self.device, non_blocking=True),
                                batch.attention_mask.to(self.device, non_blocking=True))
            batch_labels = (None if labels is None
                            else labels[torch.from_numpy(indices)].to(self.device, non_blocking=True))
            yield tokens, batch_labels

    def assemble(self, indices: np.ndarray, starts: np.ndarray) -> TokenBatch:
        """The rows of ``indices`` on the CPU: <cls>, the cropped content, <eos>, then padding."""
        tok, encoded = self.tokenizer, self.encoded
        lengths = np.minimum(encoded.lengths[indices], self.room)
        lead = int(tok.add_cls)
        rows = lengths + tok.num_special_tokens
        ids = np.full((len(indices), int(rows.max())), tok.pad_id, dtype=np.int64)
        if tok.add_cls:
            ids[:, 0] = tok.cls_id
        for row, (index, length) in enumerate(zip(indices, lengths, strict=True)):
            first = encoded.offsets[index] + starts[index]
            ids[row, lead:lead + length] = encoded.tokens[first:first + length]
            if tok.add_eos:
                ids[row, lead + length] = tok.eos_id
        attention_mask = np.arange(ids.shape[1]) < rows[:, None]
        return TokenBatch(torch.from_numpy(ids), torch.from_numpy(attention_mask))
