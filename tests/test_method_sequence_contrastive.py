"""seq-contrastive on proteins and text: the recipe each modality gets, what its views keep, and
that the encoder learns (DNA's views and the loss formula: test_method_dna_contrastive.py)."""

from __future__ import annotations

import pytest
import torch
from method_helpers import step_losses

from selfsup.backbones import build_backbone
from selfsup.data import load_split
from selfsup.methods import build_method
from selfsup.methods.sequence_contrastive import SequenceContrastive
from selfsup.tokenize import ProteinTokenizer
from selfsup.views.sequence import content_mask
from selfsup.views.sequence_recipes import make_sequence_views

PROTEIN = ProteinTokenizer()
OFF = {"substitution_prob": 0.0, "mask_prob": 0.0}  # crops only: views are windows of the source


@pytest.fixture(scope="module")
def proteins() -> list[str]:
    """120 real Swiss-Prot proteins, cut to 60 residues (tiny and quick)."""
    return [sequence[:60] for sequence in load_split("swissprot-loc", "train").sequences[:120]]


def test_each_modality_gets_its_own_contrastive_recipe():
    from selfsup.tokenize.text import TextTokenizer

    text = TextTokenizer.train(["the cat sat on the mat", "a dog ran in the park"] * 20, 300)
    assert SequenceContrastive.view_recipe_for("protein") == "protein-contrastive"
    assert SequenceContrastive.view_recipe_for("dna") == "dna-contrastive"
    assert SequenceContrastive.view_recipe_for("text") == "text-contrastive"
    views = make_sequence_views("text-contrastive", text, {})
    assert views.options.rc_prob == 0 and views.options.crop_min_fraction == pytest.approx(0.3)


def test_protein_views_are_windows_of_their_own_sequence(proteins):
    """Both views of a row come from that row's protein: with noise off, each view's residues are
    one contiguous window of it, at least half its length (the protein recipe's crop)."""
    batch = PROTEIN.encode_batch(proteins)
    views = make_sequence_views("protein-contrastive", PROTEIN, OFF)
    for view in views(batch, torch.Generator().manual_seed(0)):
        for source, text in zip(proteins, PROTEIN.decode_batch(view)):
            assert text in source
            assert len(text) >= -(-len(source) // 2)  # ceil(len / 2)
    first, second = views(batch, torch.Generator().manual_seed(1))
    assert not torch.equal(first, second)  # two different windows, mostly


def test_protein_views_mask_and_substitute_at_their_rates(proteins):
    """15 % of the residues masked, 5 % substituted (of those left), within sampling tolerance."""
    batch = PROTEIN.encode_batch(proteins * 10)  # ~60,000 residues: rates to about ±0.5 %
    crops_off = {"crop_prob": 0.0}
    views = make_sequence_views("protein-contrastive", PROTEIN, crops_off)
    view, _ = views(batch, torch.Generator().manual_seed(2))
    residues = content_mask(batch.ids, PROTEIN)
    masked = (view == PROTEIN.mask_id) & residues
    changed = (view != batch.ids) & residues & ~masked
    assert masked.sum() / residues.sum() == pytest.approx(0.15, abs=0.01)
    assert changed.sum() / (residues & ~masked).sum() == pytest.approx(0.05, abs=0.01)


def _losses(proteins: list[str], freeze_encoder: bool, steps: int = 25) -> list[float]:
    torch.manual_seed(0)
    encoder = build_backbone({"name": "bag-tiny", "vocab_size": PROTEIN.vocab_size,
                              "pad_id": PROTEIN.pad_id}, 0, 0)
    method = build_method({"name": "seq-contrastive", "proj_dim": 16}, encoder)
    if freeze_encoder:
        encoder.requires_grad_(False)
    trained = [p for p in method.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=1e-2)
    views = make_sequence_views("protein-contrastive", PROTEIN, {})
    generator = torch.Generator().manual_seed(0)
    batch = PROTEIN.encode_batch(proteins)
    return step_losses(method, optimizer, lambda: views(batch, generator), steps)


def test_training_the_encoder_lowers_the_loss_beyond_the_projector_alone(proteins):
    """On real proteins the loss falls, and further than when only the projector learns (the
    frozen random encoder): the encoder itself learns something."""
    trained, frozen = _losses(proteins, False), _losses(proteins, True)
    assert sum(trained[-5:]) / 5 < sum(trained[:3]) / 3 - 0.3
    assert sum(trained[-5:]) / 5 < sum(frozen[-5:]) / 5 - 0.1
