"""How fine-tuning feeds token sequences (proteins, DNA, text) to a run's Transformer encoder.

The protocol is :mod:`selfsup.evaluate.finetune`'s, unchanged: label fractions and seeds, the modes
full and frozen, pretrained against scratch, AdamW with the backbone at ``backbone_lr_scale`` of the
head, warm-up and cosine decay, label smoothing, ``finetune.json``. This module supplies the
sequence side of it, :class:`SequenceInputs`:

* training batches come from :class:`~selfsup.data.sequence_loader.SequenceBatchStream`, bucketed
  by length and shuffled per (seed, epoch); a sequence longer than the run's pretraining
  ``max_length`` (specials included) is cropped to a random window, a fresh one each epoch, which
  is the sequence counterpart of the images' random crops (``augment=false``: its first window);
* the head reads the encoder's pooled features (``TransformerEncoder.forward(ids, mask)``);
* test sequences are cropped to their first ``max_length`` tokens, as ``selfsup evaluate`` does.

The image-only settings (``crop_scale``, ``flip_prob`` and the ViT's ``layer_decay``) have no
meaning here; a value other than the default is refused with a ConfigError rather than ignored, so
that no run records a setting it did not use. The recorded settings leave them out and add the
``max_length`` used. The token Transformer trains at one backbone rate throughout (no layer decay).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import torch
from torch import nn

from selfsup.data.sequence_loader import SequenceBatchStream
from selfsup.data.sequences import SequenceSource
from selfsup.errors import ConfigError, DataError
from selfsup.evaluate.sequence_baselines import encoder_features
from selfsup.tokenize import make_tokenizer
from selfsup.tokenize.base import Tokenizer

if TYPE_CHECKING:
    from selfsup.evaluate.finetune import Batch, FinetuneSettings

# settings of the image path that sequences have no use for; the first two are not recorded (the
# layer decay is, as None, like a CNN's)
IMAGE_ONLY_SETTINGS = ("crop_scale", "flip_prob", "layer_decay")
UNRECORDED_SETTINGS = ("crop_scale", "flip_prob")
DEFAULT_MAX_LENGTH = 1024  # runs whose encoder.json predates the recorded max_length
# the built-in labelled data sets of each alphabet, for the message of an unlabelled one
LABELLED_DATASETS = {"protein": "swissprot-loc", "dna": "16s-reads or 16s-gold", "text": "20newsgroups"}


@dataclass
class SequenceInputs:
    """Token batches for :func:`~selfsup.evaluate.finetune.finetune_model`: ``(ids, attention_mask)``
    model inputs, long sequences cropped to ``max_length`` tokens (at random in training when
    ``random_crop``, at the start in evaluation)."""

    tokenizer: Tokenizer
    max_length: int
    random_crop: bool = True
    noun: str = "sequences"

    def prepare(self, model: nn.Module, device: torch.device) -> nn.Module:
        return model.to(device)

    def training_epochs(self, train: SequenceSource, batch_size: int, seed: int,
                        device: torch.device) -> Callable[[int], Iterator[Batch]]:
        """epoch → its shuffled, length-bucketed ``((ids, mask), labels)`` batches (a fixed order
        and crops per (seed, epoch)); every batch is full (the tail of the permutation is left out)."""
        stream = SequenceBatchStream(train, self.tokenizer, batch_size, device, seed,
                                     max_length=self.max_length, shuffle=True, drop_last=True,
                                     random_crop=self.random_crop)

        def epoch(index: int) -> Iterator[Batch]:
            for tokens, labels in stream.epoch(index):
                yield (tokens.ids, tokens.attention_mask), labels

        return epoch

    def logits(self, model: nn.Module, test: SequenceSource, device: torch.device, batch_size: int,
               precision: str) -> torch.Tensor:
        """float32 (N, classes) of ``model`` in eval mode on every test sequence, in source order."""
        return encoder_features(model, test, self.tokenizer, device, batch_size, self.max_length,
                                precision)

    def recorded(self, settings: dict[str, Any]) -> dict[str, Any]:
        """The settings as used on sequences: without the image-only ones, with ``max_length``."""
        used = {k: v for k, v in settings.items() if k not in UNRECORDED_SETTINGS}
        return {**used, "max_length": self.max_length}


def sequence_inputs(dataset: str, train: SequenceSource, spec: dict[str, Any],
                    settings: FinetuneSettings, run_dir: str | Path) -> SequenceInputs:
    """The inputs of a sequence fine-tuning run, after the checks that need no training: the
    training split is labelled, the run's encoder is a token encoder of the data's alphabet, and
    no image-only setting is changed. ``spec`` is the run's ``encoder.json``."""
    if "tokenizer" not in spec:
        raise DataError(f"data set {dataset!r} holds {train.alphabet} sequences but {run_dir} holds "
                        "an image encoder; fine-tune it on images (pass --dataset with an image "
                        "data set), or fine-tune a run pretrained on sequences")
    tokenizer_name = spec["tokenizer"].get("name")
    if tokenizer_name != train.alphabet:
        raise DataError(f"data set {dataset!r} holds {train.alphabet} sequences but the encoder of "
                        f"{run_dir} reads {tokenizer_name} tokens; pass --dataset with a labelled "
                        f"{tokenizer_name} data set ({LABELLED_DATASETS.get(tokenizer_name, '?')})")
    if train.labels is None:
        raise DataError(f"data set {dataset!r} has no labels; fine-tuning "
                        f"needs labelled sequences: pass --dataset with a labelled "
                        f"{train.alphabet} data set ({LABELLED_DATASETS.get(train.alphabet, '?')})")
    changed = settings.changed_from_default(IMAGE_ONLY_SETTINGS)
    if changed:
        raise ConfigError(f"finetune {', '.join(changed)} appl{'ies' if len(changed) == 1 else 'y'} "
                          f"to images only and {dataset!r} holds sequences; leave "
                          f"{'it' if len(changed) == 1 else 'them'} at the default (long sequences "
                          "are cropped to random windows instead; --set augment=false crops at "
                          "the start)")
    return SequenceInputs(make_tokenizer(**spec["tokenizer"]),
                          int(spec.get("max_length", DEFAULT_MAX_LENGTH)), settings.augment)
