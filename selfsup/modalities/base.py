"""The Modality contract: everything that differs between kinds of data, answered in one place.

A run's data set is read by one modality, chosen once from the data source (``source.modality``:
``"image"``, or a sequence alphabet, ``"protein"``, ``"dna"``, ``"text"``) or, for a trained
encoder, from its ``encoder.json``. The modality then answers every question on which images and
sequences part ways:

* training: the encoder's build arguments (an image shape, or a tokeniser), the method's build
  context, the batch stream, the views, the memory layout, the inputs of the health batch, and
  the ``encoder.json`` written beside the weights;
* evaluation: whether an encoder reads a data set, the encoder's features of a data set, the
  baselines it must beat (raw pixels, composition and k-mer profiles, TF-IDF) and any extras
  (a DNA encoder's reverse-complement consistency);
* fine-tuning: how labelled examples reach a classifier (:class:`FinetuneInputs`).

``train/``, ``evaluate/`` and ``report/`` ask the modality and never the data's type. A new kind
of data is one new module with a subclass registered in ``MODALITIES`` (see
``docs/architecture.md``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator, Optional, Protocol

import torch
from torch import nn

from selfsup.config import Config
from selfsup.errors import ConfigError, DataError
from selfsup.methods.base import BuildContext, Collectives
from selfsup.registry import MODALITIES

# (the model's inputs, labels) of one fine-tuning batch
Batch = tuple[tuple[torch.Tensor, ...], torch.Tensor]
FeatureSets = dict[str, tuple[torch.Tensor, torch.Tensor]]  # name → (train, test) features


class FinetuneInputs(Protocol):
    """How one kind of labelled data reaches a classifier in fine-tuning."""

    noun: str  # what one example is called in messages: "images", "sequences"

    def prepare(self, model: nn.Module, device: torch.device) -> nn.Module:
        """``model`` on ``device``, in the memory layout its inputs come in."""

    def training_epochs(self, train: Any, batch_size: int, seed: int,
                        device: torch.device) -> Callable[[int], Iterator[Batch]]:
        """epoch → the full, shuffled, augmented batches of ``train``, fixed by (seed, epoch)."""

    def logits(self, model: nn.Module, test: Any, device: torch.device, batch_size: int,
               precision: str) -> torch.Tensor:
        """float32 (N, classes) of ``model`` in eval mode on every test example, in order."""

    def recorded(self, settings: dict[str, Any]) -> dict[str, Any]:
        """The settings as this kind of data uses them, for the results file."""


class TrainingStream(Protocol):
    """Shuffled training batches of a source, the same for a given (seed, epoch)."""

    def __len__(self) -> int:
        """Batches per epoch."""

    def epoch(self, epoch: int) -> Iterator[tuple[Any, Optional[torch.Tensor]]]:
        """(inputs on the device, labels or None) of every batch of ``epoch``."""


class Modality(ABC):
    """One kind of data. Subclasses set the class attributes and implement the methods.

    Registering one: ``@register_modality("name", "one line of help")`` on the subclass.

    An instance is bound to what its data needs to be read: an image shape, or a tokeniser and a
    row length. Build one with :meth:`for_training` (from the training split) or
    :meth:`from_spec` (from a trained encoder's ``encoder.json``).
    """

    name: ClassVar[str]  # the key in MODALITIES and the value of ``source.modality``
    noun: ClassVar[str]  # one example in messages: "images", "sequences"
    labels_hint: ClassVar[str]  # where labelled data of this kind comes from, for messages

    # ------------------------------------------------------------------ construction
    @classmethod
    @abstractmethod
    def for_training(cls, source: Any, config: Config, run_dir: Path, resume: bool,
                     rank: int, share: Callable[[Any], Any]) -> "Modality":
        """The modality of a run's training split ``source``, on the process of ``rank``.
        ``share`` hands rank 0's value to every process (``broadcast_from_main``; every process
        calls it): what rank 0 alone makes (a learnt tokeniser, saved in ``run_dir``) the others
        load."""
        raise NotImplementedError

    @classmethod
    @abstractmethod
    def from_spec(cls, spec: dict[str, Any]) -> "Modality":
        """The modality a trained encoder reads, from its ``encoder.json``."""
        raise NotImplementedError

    # ------------------------------------------------------------------ training
    @abstractmethod
    def build_encoder(self, backbone: dict[str, Any]) -> nn.Module:
        """The backbone a config section names, fitted to this data."""
        raise NotImplementedError

    @abstractmethod
    def build_context(self, num_train: Optional[int] = None,
                      collectives: Optional[Collectives] = None) -> BuildContext:
        """What a method built for this data is told (:class:`BuildContext`)."""
        raise NotImplementedError

    @abstractmethod
    def make_views(self, recipe: str, options: dict[str, Any]) -> Callable:
        """The view maker of ``recipe`` with the ``views`` config section."""
        raise NotImplementedError

    @abstractmethod
    def batch_stream(self, source: Any, config: Config, device: torch.device, rank: int = 0,
                     world_size: int = 1) -> TrainingStream:
        """The training batches of ``source``: this process's share of every global batch."""
        raise NotImplementedError

    def memory_format(self, channels_last: bool) -> torch.memory_format:
        """The memory layout of model inputs (``channels_last``: the config's wish)."""
        return torch.contiguous_format

    @abstractmethod
    def sample_inputs(self, source: Any, indices: torch.Tensor,
                      device: torch.device) -> torch.Tensor:
        """The examples ``indices`` of ``source`` as one tensor on ``device`` (the health batch
        and the online probe's bank): what the views take."""
        raise NotImplementedError

    def model_input(self, x: torch.Tensor) -> torch.Tensor:
        """What an encoder takes from a tensor of :meth:`sample_inputs` without views."""
        return x

    @abstractmethod
    def encoder_spec(self, encoder: nn.Module, config: Config) -> dict[str, Any]:
        """``encoder.json``: how to rebuild ``encoder`` and read data for it."""
        raise NotImplementedError

    # ------------------------------------------------------------------ evaluation
    @abstractmethod
    def check_reads(self, source: Any, dataset: str, run_dir: str | Path) -> None:
        """Raise DataError unless this modality's encoder can read ``source`` (of ``dataset``)."""
        raise NotImplementedError

    def check_labelled(self, source: Any, dataset: str) -> None:
        """Raise DataError naming where labels come from when ``source`` has none."""
        if source.labels is None:
            raise DataError(f"data set {dataset!r} has no labels; evaluation and fine-tuning need "
                            f"labelled train and test splits: {self.labels_hint}")

    @abstractmethod
    def features(self, encoder: nn.Module, source: Any, device: torch.device,
                 batch_size: int, precision: str) -> torch.Tensor:
        """float32 (N, D) features of ``encoder`` in eval mode on every example, in order."""
        raise NotImplementedError

    @abstractmethod
    def example_inputs(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        """``n`` made-up examples as the encoder takes them (its positional arguments), drawn
        with ``generator``: to trace an exported encoder and check it against this one."""

    def token_features(self, encoder: nn.Module, source: Any, device: torch.device,
                       batch_size: int, precision: str) -> list:
        """Per-token features of every example: one float32 (L_i, D) array each. Only data made
        of tokens have them; the default refuses by name."""
        raise ConfigError(f"per-token embeddings are for sequence runs; this run's encoder reads "
                          f"{self.noun}: leave out --per-token")

    @abstractmethod
    def feature_sets(self, encoder: nn.Module, spec: dict[str, Any], train: Any, test: Any,
                     device: torch.device, batch_size: int, precision: str, baselines: bool,
                     seed: int) -> tuple[FeatureSets, dict[str, Any]]:
        """What evaluation probes, name → (train, test) features: "ssl" (``encoder``) and, with
        ``baselines``, the baselines it must beat (raw pixels, composition and k-mer profiles,
        TF-IDF) and "random_init" (the backbone of ``spec`` initialised afresh under ``seed``);
        and extra results for eval.json (a DNA encoder's reverse-complement consistency)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ fine-tuning
    @abstractmethod
    def finetune_inputs(self, settings: Any) -> FinetuneInputs:
        """How labelled examples reach a classifier under the fine-tuning ``settings``."""
        raise NotImplementedError

    def check_finetune_settings(self, dataset: str, settings: Any) -> None:
        """Raise ConfigError for a fine-tuning setting this data has no use for."""

    @classmethod
    def describe_finetune_augmentation(cls, recorded: dict[str, Any]) -> str:
        """The augmentation of a fine-tuning run in words, from its recorded settings
        (``FinetuneInputs.recorded``), for the report."""
        return "augmentation on" if recorded.get("augment") else "no augmentation"


def register_modality(name: str, help: str) -> Callable[[type[Modality]], type[Modality]]:
    """Decorator: register a Modality subclass in ``MODALITIES`` as ``name``, which also
    becomes its ``name`` (the value of ``source.modality`` for data of this kind)."""

    def add(cls: type[Modality]) -> type[Modality]:
        cls.name = name
        return MODALITIES.register(name, help)(cls)

    return add


def modality_of(source: Any) -> type[Modality]:
    """The modality class that reads ``source`` (by its ``modality`` attribute)."""
    return MODALITIES.get(source.modality)


def spec_modality(spec: dict[str, Any]) -> str:
    """The modality name of an ``encoder.json``; runs from before it was recorded are named by
    their tokeniser, and image encoders have none."""
    return spec.get("modality") or (spec.get("tokenizer") or {}).get("name") or "image"


def modality_for_spec(spec: dict[str, Any]) -> Modality:
    """The modality a trained encoder (its ``encoder.json``) reads."""
    return MODALITIES.get(spec_modality(spec)).from_spec(spec)
