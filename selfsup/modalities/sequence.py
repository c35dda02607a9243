"""Sequences of tokens: proteins, DNA reads and natural-language text.

One family: a tokeniser turns letters (or words) into ids, batches are length-bucketed and padded,
views are token-level (masking, crops, substitutions, the reverse complement), and the baselines
are profiles of the letters (amino-acid composition, k-mer frequencies) or of the words (TF-IDF).
What differs between the three is a tokeniser, the baselines and, for DNA, the
reverse-complement consistency of the encoder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, ClassVar, Optional, Sequence

import torch
from torch import nn

from selfsup.backbones import build_backbone
from selfsup.config import Config
from selfsup.data.sequence_loader import SequenceBatchStream
from selfsup.data.sequences import SequenceSource
from selfsup.errors import DataError
from selfsup.modalities.sequence_baselines import (
    DNA_K, RC_CONSISTENCY_READS, canonical_kmer_profile, encoder_features, kmer_profile,
    protein_composition, reverse_complement_consistency, sequence_feature_sets,
    token_encoder_inputs, token_features,
)
from selfsup.modalities.sequence_finetune import SequenceInputs, check_sequence_settings
from selfsup.modalities.text_baselines import FittedBaseline, TfidfFeatures
from selfsup.methods.base import BuildContext, Collectives, SINGLE_PROCESS
from selfsup.run_dir import RunDir
from selfsup.modalities.base import FeatureSets, Modality, register_modality
from selfsup.tokenize import make_tokenizer
from selfsup.tokenize.base import Tokenizer
from selfsup.views import make_sequence_views

HEALTH_MAX_TOKENS = 512  # sequences in the health batch and probe bank keep their first 512 tokens
FeatureFn = Callable[[Sequence[str]], torch.Tensor]


class SequenceModality(Modality):
    """Token sequences read by ``tokenizer``, rows of at most ``max_length`` tokens."""

    noun = "sequences"
    # baselines computed from the sequences alone, and those learnt from the training split
    baselines: ClassVar[dict[str, FeatureFn]] = {}
    fitted_baselines: ClassVar[dict[str, FittedBaseline]] = {}
    labelled_datasets: ClassVar[str] = "?"  # the built-in labelled data sets, for messages

    def __init__(self, tokenizer: Tokenizer, max_length: int) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length

    @property
    def labels_hint(self) -> str:  # type: ignore[override]
        return f"pass --dataset with a labelled {self.name} data set ({self.labelled_datasets})"

    @classmethod
    def for_training(cls, source: SequenceSource, config: Config, run_dir: Path, resume: bool,
                     rank: int, share: Callable[[Any], Any]) -> "SequenceModality":
        return cls(cls.training_tokenizer(source, config, run_dir, resume, rank, share),
                   config.data.max_length)

    @classmethod
    def training_tokenizer(cls, source: SequenceSource, config: Config, run_dir: Path,
                           resume: bool, rank: int, share: Callable[[Any], Any]) -> Tokenizer:
        """The tokeniser of the data's alphabet (``data.kmer``-mers for DNA)."""
        return make_tokenizer(cls.name, k=config.data.kmer)

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> "SequenceModality":
        return cls(*token_encoder_inputs(spec))

    # ------------------------------------------------------------------ training
    def build_encoder(self, backbone: dict[str, Any]) -> nn.Module:
        return build_backbone(backbone, 0, 0, tokenizer=self.tokenizer)

    def build_context(self, num_train: Optional[int] = None,
                      collectives: Optional[Collectives] = None) -> BuildContext:
        return BuildContext(tokenizer=self.tokenizer, num_train=num_train,
                            collectives=collectives or SINGLE_PROCESS)

    def make_views(self, recipe: str, options: dict[str, Any]) -> Callable:
        return make_sequence_views(recipe, self.tokenizer, options)

    def batch_stream(self, source: SequenceSource, config: Config, device: torch.device,
                     rank: int = 0, world_size: int = 1) -> SequenceBatchStream:
        return SequenceBatchStream(source, self.tokenizer, config.train.batch_size, device,
                                   config.train.seed, max_length=self.max_length,
                                   bucket_batches=config.data.bucket_batches, rank=rank,
                                   world_size=world_size)

    def sample_inputs(self, source: SequenceSource, indices: torch.Tensor,
                      device: torch.device) -> torch.Tensor:
        """Right-padded token ids (their attention mask is ids != <pad>)."""
        max_length = min(self.max_length, HEALTH_MAX_TOKENS)
        return source.encode(indices, self.tokenizer, max_length).ids.to(device)

    def encoder_spec(self, encoder: nn.Module, config: Config) -> dict[str, Any]:
        """The encoder's full options (vocabulary, reverse-complement invariance set by the
        method: the backbone's own ``config()``) and its tokeniser's."""
        return {"backbone": encoder.config(), "in_channels": 0, "image_size": 0,
                "dataset": config.data.dataset, "tokenizer": self.tokenizer.config(),
                "max_length": self.max_length, "modality": self.name}

    # ------------------------------------------------------------------ evaluation
    def check_reads(self, source: Any, dataset: str, run_dir: str | Path) -> None:
        if source.modality == "image":
            raise DataError(f"data set {dataset!r} holds images but {run_dir} holds a token encoder "
                            f"({self.name} sequences); pass --dataset with a {self.name} data set, "
                            "or use a run pretrained on images")
        if source.modality != self.name:
            raise DataError(f"data set {dataset!r} holds {source.modality} sequences but the "
                            f"encoder of {run_dir} reads {self.name} tokens; pass --dataset with a "
                            f"{self.name} data set ({self.labelled_datasets})")

    def features(self, encoder: nn.Module, source: SequenceSource, device: torch.device,
                 batch_size: int, precision: str) -> torch.Tensor:
        return encoder_features(encoder, source, self.tokenizer, device, batch_size,
                                self.max_length, precision)

    def token_features(self, encoder: nn.Module, source: SequenceSource, device: torch.device,
                       batch_size: int, precision: str) -> list:
        return token_features(encoder, source, self.tokenizer, device, batch_size,
                              self.max_length, precision)

    def feature_sets(self, encoder: nn.Module, spec: dict[str, Any], train: SequenceSource,
                     test: SequenceSource, device: torch.device, batch_size: int, precision: str,
                     baselines: bool, seed: int) -> tuple[FeatureSets, dict[str, Any]]:
        sets, makers = sequence_feature_sets(
            encoder, spec, train, test, device, batch_size, precision,
            self.baselines if baselines else None, self.fitted_baselines, seed)
        return sets, self.evaluation_extras(makers, test, seed)

    def evaluation_extras(self, makers: dict[str, Callable[[SequenceSource], torch.Tensor]],
                          test: SequenceSource, seed: int) -> dict[str, Any]:
        """Extra results for eval.json from the feature makers (name → source → features) of
        every set evaluated; none by default."""
        return {}

    def example_inputs(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        """Token ids of random ordinary tokens, rows of different lengths (right-padded), and
        their attention mask."""
        tok = self.tokenizer
        ordinary = tok.table("replacement", "cpu")  # the ids random replacements draw from
        width = min(self.max_length, 48)
        ids = torch.full((n, width), tok.pad_id, dtype=torch.int64)
        for row in range(n):
            length = int(torch.randint(width // 2, width - tok.num_special_tokens + 1, (1,),
                                       generator=generator))
            picks = ordinary[torch.randint(len(ordinary), (length,), generator=generator)]
            tokens = ([tok.cls_id] if tok.add_cls else []) + picks.tolist() + (
                [tok.eos_id] if tok.add_eos else [])
            ids[row, :len(tokens)] = torch.tensor(tokens)
        return ids, ids != tok.pad_id

    # ------------------------------------------------------------------ fine-tuning
    @classmethod
    def describe_finetune_augmentation(cls, recorded: dict[str, Any]) -> str:
        """The only augmentation is where long sequences are cut."""
        window = "a random" if recorded.get("augment") else "the first"
        return f"sequences longer than {recorded.get('max_length')} tokens cut to {window} window"

    def finetune_inputs(self, settings: Any) -> SequenceInputs:
        return SequenceInputs(self.tokenizer, self.max_length, settings.augment)

    def check_finetune_settings(self, dataset: str, settings: Any) -> None:
        check_sequence_settings(dataset, settings)


@register_modality("protein", "protein sequences, one token per amino acid; composition baseline")
class ProteinModality(SequenceModality):
    baselines = {"composition": protein_composition}
    labelled_datasets = "swissprot-loc"


@register_modality("dna", "DNA reads (k-mer tokens optional); a read and its reverse complement "
                            "are one locus; k-mer profile baselines")
class DnaModality(SequenceModality):
    baselines = {f"kmer{DNA_K}": kmer_profile, f"canonical_kmer{DNA_K}": canonical_kmer_profile}
    labelled_datasets = "16s-reads or 16s-gold"

    def evaluation_extras(self, makers: dict[str, Callable[[SequenceSource], torch.Tensor]],
                          test: SequenceSource, seed: int) -> dict[str, Any]:
        """Each set's reverse-complement consistency on up to ``RC_CONSISTENCY_READS`` test
        reads: {"rc_consistency": {name: {"rc_cosine", "random_pair_cosine"}}}."""
        order = torch.randperm(len(test), generator=torch.Generator().manual_seed(seed))
        reads = test.subset(order[:RC_CONSISTENCY_READS].sort().values)
        return {"rc_consistency": {name: reverse_complement_consistency(make, reads, seed)._asdict()
                                   for name, make in makers.items()}}


@register_modality("text", "natural-language text, a word-piece tokeniser learnt from the "
                             "training texts; TF-IDF baseline")
class TextModality(SequenceModality):
    fitted_baselines = {"tfidf": TfidfFeatures}
    labelled_datasets = "20newsgroups"

    @classmethod
    def training_tokenizer(cls, source: SequenceSource, config: Config, run_dir: Path,
                           resume: bool, rank: int, share: Callable[[Any], Any]) -> Tokenizer:
        """A tokeniser learnt from the training texts by rank 0 alone and saved in the run dir
        (a resumed run loads it); the other processes of a distributed run wait for it and load
        that very file (its SHA-256 checked), so every process holds rank 0's vocabulary.
        ``share`` is the broadcast from rank 0 (its own value for one process)."""
        from selfsup.tokenize.text import TextTokenizer  # needs the `tokenizers` package

        path = RunDir(run_dir).tokenizer_file
        if resume and path.is_file():
            return TextTokenizer.load(path)
        if rank == 0:
            sha256 = None
            try:
                tokenizer = TextTokenizer.train(source.sequences, config.data.vocab_size)
                tokenizer.save(path)
                sha256 = tokenizer.sha256
            finally:
                # The others wait for this hash: send None when learning or saving failed, so
                # that they stop too rather than wait out the process group's timeout.
                share(sha256)
            return tokenizer
        sha256 = share(None)
        if sha256 is None:
            raise DataError("rank 0 could not make the text tokeniser; its error says why")
        if not path.is_file():
            raise DataError(f"rank 0 saved the text tokeniser at {path}, but rank {rank} does not "
                            "see it: on several nodes the run directory must be on a file system "
                            "they all see")
        return TextTokenizer.load(path, sha256)

