"""Tests of the length-bucketed sequence batch stream."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from selfsup.data.sequence_loader import SequenceBatchStream
from selfsup.data.sequences import SequenceSource
from selfsup.errors import ConfigError, DataError
from selfsup.tokenize import ProteinTokenizer

PROTEIN = ProteinTokenizer()


def protein_source(count: int = 300, seed: int = 0, longest: int = 400) -> SequenceSource:
    """Proteins with lengths spread like real ones (log-uniform, 5 … ``longest``)."""
    rng = random.Random(seed)
    sequences = ["".join(rng.choice("ACDEFGHIKLMNPQRSTVWY")
                         for _ in range(int(5 * (longest / 5) ** rng.random())))
                 for _ in range(count)]
    labels = torch.arange(count) % 3
    return SequenceSource([f"p{i}" for i in range(count)], sequences, "protein", labels,
                          ["a", "b", "c"])


def stream(source: SequenceSource, **options) -> SequenceBatchStream:
    settings = dict(batch_size=16, device="cpu", seed=0, max_length=512)
    return SequenceBatchStream(source, PROTEIN, **{**settings, **options})


def test_each_sample_once_per_epoch_and_order_fixed_by_seed_and_epoch():
    source = protein_source(250)
    full = stream(source, drop_last=False)
    served = np.concatenate(full.batches(0))
    assert sorted(served.tolist()) == list(range(250))
    dropped = stream(source)  # drop_last: 15 full batches, each sample at most once
    served = np.concatenate(dropped.batches(0))
    assert len(served) == 15 * 16 == len(set(served.tolist()))
    assert all(len(b) == 16 for b in dropped.batches(0))
    again = stream(source).batches(0)
    assert all(np.array_equal(a, b) for a, b in zip(dropped.batches(0), again, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(dropped.batches(0), dropped.batches(1), strict=True))


def test_bucketing_reduces_padding_against_random_batches():
    source = protein_source(400)
    bucketed = stream(source, bucket_batches=25).padding_fraction(0)
    random_batches = stream(source, bucket_batches=1).padding_fraction(0)
    assert bucketed < 0.15 and random_batches > 0.5  # log-uniform lengths: random batches mostly pad
    # the padding fraction matches a count over the delivered batches
    s = stream(source, bucket_batches=25)
    pads = total = 0
    for tokens, _ in s.epoch(0):
        pads += int((~tokens.attention_mask).sum())
        total += tokens.ids.numel()
    assert pads / total == pytest.approx(bucketed)


def test_batches_hold_the_sequences_with_their_labels():
    source = protein_source(100, longest=60)
    s = stream(source, drop_last=False)
    for indices, (tokens, labels) in zip(s.batches(0), s.epoch(0), strict=True):
        assert PROTEIN.decode_batch(tokens.ids) == [source.sequences[i] for i in indices]
        assert torch.equal(labels, source.labels[torch.from_numpy(indices)])
        assert torch.equal(tokens.attention_mask, tokens.ids != PROTEIN.pad_id)
        assert (tokens.ids[:, 0] == PROTEIN.cls_id).all()


def test_long_sequences_are_cropped_at_random_in_training_and_at_the_start_in_evaluation():
    rng = random.Random(1)
    long = "".join(rng.choice("ACDEFGHIKLMNPQRSTVWY") for _ in range(300))
    source = SequenceSource([f"s{i}" for i in range(8)], [long] * 8, "protein")
    train = stream(source, batch_size=8, max_length=52)  # 50 residues + <cls> + <eos>
    windows = set()
    for epoch in range(2):
        tokens, _ = next(train.epoch(epoch))
        assert tokens.ids.shape == (8, 52)
        for row in PROTEIN.decode_batch(tokens.ids):
            assert len(row) == 50 and row in long
            windows.add(long.index(row))
    assert len(windows) > 8  # fresh random starts per sequence and epoch
    evaluation = stream(source, batch_size=8, max_length=52, shuffle=False, drop_last=False)
    tokens, _ = next(evaluation.epoch(0))
    assert PROTEIN.decode_batch(tokens.ids) == [long[:50]] * 8


def test_data_parallel_slices_make_up_the_global_batch():
    source = protein_source(96)
    whole = stream(source)
    parts = [list(stream(source, rank=r, world_size=2).epoch(0)) for r in range(2)]
    for indices, (a, _), (b, _) in zip(whole.batches(0), *parts, strict=True):
        decoded = PROTEIN.decode_batch(a.ids) + PROTEIN.decode_batch(b.ids)
        assert decoded == [source.sequences[i] for i in indices]


def test_bad_settings_raise_named_errors():
    source = protein_source(10)
    with pytest.raises(DataError, match="fewer than one batch"):
        stream(source, batch_size=16)
    with pytest.raises(ConfigError, match="max_length"):
        stream(source, batch_size=4, max_length=2)
    with pytest.raises(ConfigError, match="bucket_batches"):
        stream(source, batch_size=4, bucket_batches=0)


def _swissprot_or_skip() -> SequenceSource:
    from selfsup.data import load_split

    try:
        return load_split("swissprot-loc", "train")
    except DataError:
        pytest.skip("swissprot-loc is not installed (sudo apt-get install predictnls)")


def test_padding_on_swissprot_loc_bucketed_vs_random():
    """The numbers quoted in the report: batch 64, max_length 1024 (1022 residues)."""
    source = _swissprot_or_skip()
    bucketed = SequenceBatchStream(source, PROTEIN, 64, "cpu", seed=0, max_length=1024)
    random_batches = SequenceBatchStream(source, PROTEIN, 64, "cpu", seed=0, max_length=1024,
                                         bucket_batches=1)
    assert bucketed.padding_fraction(0) < 0.05 and random_batches.padding_fraction(0) > 0.5
