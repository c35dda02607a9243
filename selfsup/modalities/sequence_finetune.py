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
* test sequences are cropped to their first ``max_length`` tokens, as ``selfsup evaluate`` does;
  they are tokenised once per study, not once per run.

The image-only settings (``crop_scale``, ``flip_prob`` and the ViT's ``layer_decay``) have no
meaning here; a value other than the default is refused with a ConfigError rather than ignored, so
that no run records a setting it did not use. The recorded settings leave them out and add the
``max_length`` used. The token Transformer trains at one backbone rate throughout (no layer decay).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional

import torch
from torch import nn

from selfsup.data.sequence_loader import SequenceBatchStream
from selfsup.data.sequences import SequenceSource
from selfsup.errors import ConfigError
from selfsup.modalities.sequence_baselines import (
    evaluation_stream, stream_features,
)
from selfsup.tokenize.base import Tokenizer

if TYPE_CHECKING:
    from selfsup.config import FinetuneConfig
    from selfsup.modalities.base import Batch

# settings of the image path that sequences have no use for; the first two are not recorded (the
# layer decay is, as None, like a CNN's)
IMAGE_ONLY_SETTINGS = ("crop_scale", "flip_prob", "layer_decay")
UNRECORDED_SETTINGS = ("crop_scale", "flip_prob")


@dataclass
class SequenceInputs:
    """Token batches for :func:`~selfsup.evaluate.finetune.finetune_model`: ``(ids, attention_mask)``
    model inputs, long sequences cropped to ``max_length`` tokens (at random in training when
    ``random_crop``, at the start in evaluation)."""

    tokenizer: Tokenizer
    max_length: int
    random_crop: bool = True
    noun: str = "sequences"
    # the test split's batches, tokenised by the first ``logits`` of a study and reused after
    _test_stream: Optional[SequenceBatchStream] = field(default=None, init=False, repr=False)

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
        stream = self._test_stream
        if (stream is None or stream.source is not test or stream.device != torch.device(device)
                or stream.batch_size != batch_size):
            stream = evaluation_stream(test, self.tokenizer, device, batch_size, self.max_length)
            self._test_stream = stream
        return stream_features(model, stream, precision)

    def recorded(self, settings: dict[str, Any]) -> dict[str, Any]:
        """The settings as used on sequences: without the image-only ones, with ``max_length``."""
        used = {k: v for k, v in settings.items() if k not in UNRECORDED_SETTINGS}
        return {**used, "max_length": self.max_length}


def check_sequence_settings(dataset: str, settings: FinetuneConfig) -> None:
    """A ConfigError if an image-only setting is changed for the sequences of ``dataset``."""
    changed = settings.changed_from_default(IMAGE_ONLY_SETTINGS)
    if changed:
        raise ConfigError(f"finetune {', '.join(changed)} appl{'ies' if len(changed) == 1 else 'y'} "
                          f"to images only and {dataset!r} holds sequences; leave "
                          f"{'it' if len(changed) == 1 else 'them'} at the default (long sequences "
                          "are cropped to random windows instead; --set augment=false crops at "
                          "the start)")
