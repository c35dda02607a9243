"""Evaluation protocols against hand computations, properties and scikit-learn on real digits."""

import json
import math
import statistics

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from selfsup.data.fasta import SequenceRecord, write_fasta
from selfsup.errors import ConfigError, DataError
from selfsup.evaluate import (
    choose_knn_k,
    evaluate_feature_sets,
    evaluate_features,
    knn_accuracy,
    knn_predict,
    linear_probe,
    stratified_subset,
    tsne_embedding,
)
from selfsup.evaluate.knn import KNN_K_CLASS_FACTOR, knn_k_limit, online_knn_k
from selfsup.evaluate.linear import DEFAULT_WEIGHT_DECAYS, feature_scalings, stratified_folds
from selfsup.config import EvalConfig
from selfsup.apps.embeddings import embed_run
from selfsup.evaluate.run import evaluate_run, load_run_config
from selfsup.report import write_report
from selfsup.evaluate.tsne import stratified_sample
from method_helpers import save_image_run, save_token_run


def blobs(n_per_class: int, num_classes: int = 3, dim: int = 10, spread: float = 0.5, seed=0):
    """Well-separated Gaussian blobs: class c is centred at 4 · e_c."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(num_classes).repeat_interleave(n_per_class)
    centres = 4 * torch.eye(num_classes, dim)
    feats = centres[labels] + spread * torch.randn(len(labels), dim, generator=generator)
    return feats, labels


@pytest.fixture(scope="module")
def digits():
    data = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        data.data, data.target, test_size=0.25, stratify=data.target, random_state=0
    )
    as_float = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    return as_float(x_train), torch.tensor(y_train), as_float(x_test), torch.tensor(y_test)


# --- k-NN --------------------------------------------------------------------------------------


def with_cosine(c: float, norm: float = 1.0, sign: float = 1.0) -> list[float]:
    """A 2-D vector whose cosine with the query (1, 0) is c (norms must not matter)."""
    return [norm * c, sign * norm * math.sqrt(1 - c * c)]


# Query (1, 0). Class 0: one neighbour at cosine 1.0; class 1: two at 0.6; class 2: five at 0.1.
BANK = torch.tensor(
    [with_cosine(1.0, norm=5)]
    + [with_cosine(0.6), with_cosine(0.6, norm=2, sign=-1)]
    + [with_cosine(0.1, norm=n, sign=s) for n, s in [(1, 1), (2, -1), (3, 1), (4, -1), (5, 1)]]
)
BANK_LABELS = torch.tensor([0, 1, 1, 2, 2, 2, 2, 2])
QUERY = torch.tensor([[1.0, 0.0]])


@pytest.mark.parametrize(
    "k, temperature, expected",
    [
        # k=3, T=0.1: class 0 scores e^10 ≈ 22026 > class 1's 2·e^6 ≈ 807, though class 1 has
        # the majority of the three neighbours.
        (3, 0.1, 0),
        # k=3, T=1: e^1 ≈ 2.72 < 2·e^0.6 ≈ 3.64: with flat weights the majority wins.
        (3, 1.0, 1),
        # k=200 > bank (all 8), T=1: class 2 scores 5·e^0.1 ≈ 5.53, the largest.
        (200, 1.0, 2),
    ],
)
def test_knn_weighted_vote_matches_hand_computation(k, temperature, expected):
    predicted = knn_predict(BANK, BANK_LABELS, QUERY, num_classes=3, k=k, temperature=temperature)
    assert predicted.tolist() == [expected]


def test_knn_chunked_equals_unchunked_and_large_k_uses_whole_bank():
    generator = torch.Generator().manual_seed(0)
    train = torch.randn(300, 8, generator=generator)
    labels = torch.randint(0, 5, (300,), generator=generator)
    queries = torch.randn(77, 8, generator=generator)
    whole = knn_predict(train, labels, queries, 5, k=20, chunk_size=1024)
    assert torch.equal(knn_predict(train, labels, queries, 5, k=20, chunk_size=10), whole)
    whole_bank = knn_predict(train, labels, queries, 5, k=300)
    assert torch.equal(knn_predict(train, labels, queries, 5, k=10_000), whole_bank)


def test_knn_small_temperature_does_not_overflow():
    feats, labels = blobs(20)
    assert knn_accuracy(feats, labels, feats, labels, 3, k=10, temperature=0.001) == 1.0


def test_knn_rejects_bad_inputs():
    feats, labels = blobs(5)
    with pytest.raises(DataError, match="num_classes"):
        knn_predict(feats, labels, feats, num_classes=2)
    with pytest.raises(DataError, match="labels"):
        knn_predict(feats, labels[:-1], feats, num_classes=3)
    with pytest.raises(DataError, match="query_feats"):
        knn_predict(feats, labels, feats[:, :4], num_classes=3)
    with pytest.raises(ConfigError):
        knn_predict(feats, labels, feats, num_classes=3, temperature=0)


# --- linear probe ------------------------------------------------------------------------------


def test_linear_probe_separates_blobs_and_is_deterministic():
    train, train_labels = blobs(40)
    test, test_labels = blobs(40, seed=1)
    result = linear_probe(train, train_labels, test, test_labels, num_classes=3, seed=0)
    assert result["accuracy"] >= 0.98
    assert linear_probe(train, train_labels, test, test_labels, num_classes=3, seed=0) == result


def test_linear_probe_ignores_per_feature_scale_and_offset():
    train, train_labels = blobs(30, spread=1.5)
    test, test_labels = blobs(30, spread=1.5, seed=1)
    generator = torch.Generator().manual_seed(0)
    scale = 10 ** (2 * torch.rand(10, generator=generator) - 1)  # 0.1 to 10 per feature
    offset = 5 * torch.randn(10, generator=generator)
    # standardising is what makes it so (the "uniform" scaling keeps features' relative sizes)
    plain = linear_probe(train, train_labels, test, test_labels, 3, scalings=("standardise",))
    rescaled = linear_probe(
        scale * train + offset, train_labels, scale * test + offset, test_labels, 3,
        scalings=("standardise",),
    )
    assert rescaled["accuracy"] == pytest.approx(plain["accuracy"], abs=1 / 90)
    assert rescaled["weight_decay"] == pytest.approx(plain["weight_decay"])


def test_linear_probe_is_near_chance_on_shuffled_labels():
    generator = torch.Generator().manual_seed(0)
    train, train_labels = blobs(60)
    test, test_labels = blobs(100, seed=1)
    shuffled_train = train_labels[torch.randperm(len(train_labels), generator=generator)]
    shuffled_test = test_labels[torch.randperm(len(test_labels), generator=generator)]
    accuracy = linear_probe(train, shuffled_train, test, shuffled_test, num_classes=3)["accuracy"]
    assert accuracy < 0.45  # chance is 1/3; 300 test points make 0.45 about 4 std above it


def test_linear_probe_never_looks_at_test_labels_to_choose_weight_decay():
    train, train_labels = blobs(30, spread=2.0)
    test, test_labels = blobs(30, spread=2.0, seed=1)
    flipped = (test_labels + 1) % 3
    honest = linear_probe(train, train_labels, test, test_labels, num_classes=3)
    misled = linear_probe(train, train_labels, test, flipped, num_classes=3)
    assert honest["weight_decay"] == misled["weight_decay"]
    assert honest["accuracy"] > 0.5 > misled["accuracy"]


def test_linear_probe_handles_one_example_per_class():
    # No noise dimensions: with 1 example per class, noise dimensions scaled up to unit variance
    # would swamp any linear classifier, however well chosen.
    unlabelled, all_labels = blobs(30, dim=3)
    one_each = torch.tensor([0, 30, 60])
    test, test_labels = blobs(30, dim=3, seed=1)
    result = linear_probe(
        unlabelled[one_each], all_labels[one_each], test, test_labels, num_classes=3,
        standardise_with=unlabelled,
    )
    # No fold can be validated: standardised features and the strongest decay of the grid; the
    # blobs are still told apart.
    assert result["weight_decay"] == pytest.approx(max(DEFAULT_WEIGHT_DECAYS))
    assert result["scaling"] == "standardise"
    assert result["accuracy"] > 0.9


def sparse_documents(n: int, classes: int = 4, topic_words: int = 5, rare_words: int = 2000,
                     seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows shaped like TF-IDF: two of its class's topic words (frequent, informative) and three
    rare words (each in a handful of rows, noise), L2-normalised. Linearly separable."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    feats = torch.zeros(n, classes * topic_words + rare_words)
    for row, label in enumerate(labels.tolist()):
        topic = label * topic_words + torch.randperm(topic_words, generator=generator)[:2]
        rare = classes * topic_words + torch.randint(rare_words, (3,), generator=generator)
        feats[row, topic] = feats[row, rare] = 1.0
    return feats / feats.norm(dim=1, keepdim=True), labels


def test_linear_probe_reads_sparse_features_at_one_percent_of_labels():
    # Standardising blows each rare word up to the size of a topic word, and with 40 labelled rows
    # the noise wins: the old probe (standardised features, decay on one 20 % split) scored 0.79,
    # 0.87 and 0.84 on these three subsets. Keeping the words' relative sizes separates them.
    train, train_labels = sparse_documents(4000)
    test, test_labels = sparse_documents(2000, seed=1)
    for seed in range(3):
        subset = stratified_subset(train_labels, 0.01, seed)
        result = linear_probe(train[subset], train_labels[subset], test, test_labels, 4,
                              seed=seed, standardise_with=train)
        assert len(subset) == 40
        assert result["scaling"] == "uniform"
        assert result["accuracy"] >= 0.98


def test_fitting_in_the_rows_span_gives_the_full_fits_optimum():
    # 30 rows of 200 features: RowSpace fits 30-d projections instead of 200-d rows. Mapped back,
    # its W and b must be the full problem's (the optimum lies in the rows' span).
    from selfsup.evaluate.linear import RowSpace, _fit

    generator = torch.Generator().manual_seed(0)
    feats, labels = torch.randn(30, 200, generator=generator), torch.arange(30) % 3
    feats[:, :3] += 2 * torch.nn.functional.one_hot(labels, 3)
    full = _fit(feats, labels, 3, 0.1, tolerance=1e-7, max_iterations=1000)
    space = RowSpace(feats)
    assert space.x.shape == (30, 30)
    reduced = space.to_full(_fit(space.x, labels, 3, 0.1, tolerance=1e-7, max_iterations=1000))
    torch.testing.assert_close(reduced[0], full[0], atol=1e-4, rtol=1e-3)
    torch.testing.assert_close(reduced[1], full[1], atol=1e-4, rtol=1e-3)


def test_group_folds_keep_each_group_in_one_fold_and_balance_classes():
    generator = torch.Generator().manual_seed(0)
    groups = torch.randint(0, 60, (400,), generator=generator)
    labels = groups % 3  # a group's items share its class, as a protein family shares a location
    folds = stratified_folds(labels, 5, seed=0, groups=groups)
    for group in torch.unique(groups).tolist():
        assert len(torch.unique(folds[groups == group])) == 1
    for cls in range(3):  # each class spread over the folds within about one group's size
        per_fold = torch.bincount(folds[labels == cls], minlength=5)
        assert int(per_fold.max() - per_fold.min()) <= int(torch.bincount(groups).max())
    assert torch.equal(stratified_folds(labels, 5, seed=0, groups=groups), folds)


def test_choose_knn_k_leaves_the_whole_group_out():
    # Each group holds a row and its twin, of one class; the other class's rows are a little
    # further away. Leaving out only the row itself, the twin wins (accuracy 1); leaving out
    # its group, the nearest neighbours are of the other class.
    base = torch.randn(30, 5, generator=torch.Generator().manual_seed(0))
    feats = torch.cat([base, base + 1e-3])
    labels = (torch.arange(60) % 30 < 15).long()
    groups = torch.arange(60) % 30
    alone = choose_knn_k(feats, labels, 2, grid=(1,))
    grouped = choose_knn_k(feats, labels, 2, grid=(1,), groups=groups)
    assert alone["accuracy"][1] == 1.0 and grouped["accuracy"][1] < 0.8


def test_stratified_folds_deal_every_class_across_folds():
    labels = torch.tensor([0] * 12 + [1] * 7 + [2] * 3)
    folds = stratified_folds(labels, 5, seed=0)
    assert sorted(torch.bincount(folds, minlength=5).tolist()) == [4, 4, 4, 5, 5]
    for cls in range(3):  # each class spread as evenly as it can be
        per_fold = torch.bincount(folds[labels == cls], minlength=5)
        assert int(per_fold.max() - per_fold.min()) <= 1
    assert torch.equal(stratified_folds(labels, 5, seed=0), folds)


def test_linear_probe_on_digits_is_high_and_agrees_with_sklearn(digits):
    x_train, y_train, x_test, y_test = digits
    ours = linear_probe(x_train, y_train, x_test, y_test, num_classes=10)["accuracy"]
    scaler = StandardScaler().fit(x_train.numpy())
    reference = LogisticRegression(max_iter=2000).fit(scaler.transform(x_train.numpy()), y_train)
    theirs = reference.score(scaler.transform(x_test.numpy()), y_test.numpy())
    assert ours > 0.9
    assert abs(ours - theirs) < 0.03


def test_knn_on_digits_is_high(digits):
    x_train, y_train, x_test, y_test = digits
    assert knn_accuracy(x_train, y_train, x_test, y_test, num_classes=10, k=20) > 0.9


# --- label-fraction protocol -------------------------------------------------------------------


def test_stratified_subset_counts_and_determinism():
    labels = torch.tensor([0] * 100 + [1] * 50 + [2] * 7 + [3] * 1)
    subset = stratified_subset(labels, 0.1, seed=0)
    # round(0.1 × count), at least one: 10, 5, round(0.7) = 1, max(1, 0) = 1.
    assert torch.bincount(labels[subset], minlength=4).tolist() == [10, 5, 1, 1]
    assert len(set(subset.tolist())) == len(subset)
    assert torch.equal(stratified_subset(labels, 0.1, seed=0), subset)
    assert not torch.equal(stratified_subset(labels, 0.1, seed=1), subset)
    assert torch.equal(stratified_subset(labels, 1.0, seed=3), torch.arange(len(labels)))


@pytest.mark.parametrize("fraction", [0, -0.5, 1.5])
def test_stratified_subset_rejects_bad_fractions(fraction):
    with pytest.raises(ConfigError, match="fraction"):
        stratified_subset(torch.tensor([0, 1]), fraction, seed=0)


# --- choosing k ---------------------------------------------------------------------------------


def test_choose_knn_k_stays_within_the_smallest_class():
    # 2,500 rows, smallest class 19: k = 200 would let the 18 other members be outvoted by
    # neighbours of other classes; the limit is KNN_K_CLASS_FACTOR × 19 = 38.
    generator = torch.Generator().manual_seed(0)
    sizes = [19, 481, 1000, 1000]
    labels = torch.cat([torch.full((size,), cls) for cls, size in enumerate(sizes)])
    feats = torch.randn(len(labels), 8, generator=generator) + 3 * torch.eye(4, 8)[labels]
    assert knn_k_limit(labels) == KNN_K_CLASS_FACTOR * 19
    chosen = choose_knn_k(feats, labels, 4)
    assert chosen["k"] <= KNN_K_CLASS_FACTOR * 19
    assert set(chosen["accuracy"]) == {5, 10, 20}  # the grid's values within the limit
    assert chosen["accuracy"][chosen["k"]] == max(chosen["accuracy"].values())
    assert choose_knn_k(feats, labels, 4) == chosen  # deterministic


def test_choose_knn_k_leaves_each_query_out():
    # Every row has an exact twin of the other class: counting itself, a row would win every vote
    # at k = 1 (accuracy 1). Left out, its nearest neighbour is the twin of the wrong class.
    feats = torch.randn(40, 5, generator=torch.Generator().manual_seed(0)).repeat(2, 1)
    labels = torch.cat([torch.zeros(40), torch.ones(40)]).long()
    chosen = choose_knn_k(feats, labels, 2, grid=(1,))
    assert chosen == {"k": 1, "accuracy": {1: 0.0}}


def test_online_knn_k_is_fixed_or_capped():
    labels = torch.tensor([0] * 30 + [1] * 500)
    assert online_knn_k("auto", labels) == 60  # 2 × 30, below the grid's largest (200)
    assert online_knn_k("auto", torch.tensor([0] * 500 + [1] * 500)) == 200
    assert online_knn_k(500, labels) == 500
    assert online_knn_k(5000, labels) == len(labels)


def test_evaluate_features_records_the_chosen_k():
    train, train_labels = blobs(30)
    test, test_labels = blobs(20, seed=1)
    auto = evaluate_features(train, train_labels, test, test_labels, 3, fractions=(1.0,))
    assert auto["knn_k"] <= KNN_K_CLASS_FACTOR * 30
    assert auto["knn_k_selection"][str(auto["knn_k"])] == max(auto["knn_k_selection"].values())
    fixed = evaluate_features(train, train_labels, test, test_labels, 3, fractions=(1.0,), knn_k=7)
    assert fixed["knn_k"] == 7 and "knn_k_selection" not in fixed
    with pytest.raises(ConfigError, match="knn_k"):
        evaluate_features(train, train_labels, test, test_labels, 3, knn_k="many")


def test_evaluate_features_keys_runs_and_ranges():
    train, train_labels = blobs(30)
    test, test_labels = blobs(20, seed=1)
    result = evaluate_features(
        train, train_labels, test, test_labels, 3, fractions=(0.1, 1.0), seeds=2, knn_k=10
    )
    assert set(result["linear_top1"]) == set(result["linear_top1_std"]) == {"0.1", "1.0"}
    assert [len(result["linear_runs"][key]) for key in ("0.1", "1.0")] == [2, 1]
    for key, runs in result["linear_runs"].items():
        assert result["linear_top1"][key] == pytest.approx(statistics.fmean(runs))
        assert result["linear_top1_std"][key] == pytest.approx(statistics.pstdev(runs))
        assert all(0 <= accuracy <= 1 for accuracy in runs)
    assert result["linear_top1_std"]["1.0"] == 0.0
    assert 0.9 <= result["knn_top1"] <= 1.0


def test_evaluate_feature_sets_ranks_informative_features_above_noise():
    train, train_labels = blobs(30)
    test, test_labels = blobs(20, seed=1)
    generator = torch.Generator().manual_seed(0)
    noise = (torch.randn(90, 10, generator=generator), torch.randn(60, 10, generator=generator))
    results = evaluate_feature_sets(
        {"ssl": (train, test), "random_init": noise},
        train_labels, test_labels, 3, fractions=(1.0,), knn_k=10,
    )
    assert set(results) == {"ssl", "random_init"}
    ssl, noise = results["ssl"], results["random_init"]
    assert ssl["knn_top1"] > noise["knn_top1"] + 0.3
    assert ssl["linear_top1"]["1.0"] > noise["linear_top1"]["1.0"] + 0.3


# --- t-SNE -------------------------------------------------------------------------------------


def test_stratified_sample_keeps_class_shares():
    labels = np.array([0] * 60 + [1] * 30 + [2] * 10)
    keep = stratified_sample(labels, 20, seed=0)
    assert np.bincount(labels[keep]).tolist() == [12, 6, 2]
    assert np.array_equal(stratified_sample(labels, 20, seed=0), keep)
    # Shares 5 × (0.6, 0.3, 0.1) = (3, 1.5, 0.5): the largest remainder (class 1, tie broken by
    # order) gets the fifth row.
    assert np.bincount(labels[stratified_sample(labels, 5, seed=0)]).tolist() == [3, 2]


def test_tsne_keeps_blobs_apart_and_is_deterministic():
    feats, labels = blobs(60, dim=60)
    coords, sampled = tsne_embedding(feats, labels, n=90, seed=0)
    assert coords.shape == (90, 2) and np.bincount(sampled).tolist() == [30, 30, 30]
    coords_again, _ = tsne_embedding(feats, labels, n=90, seed=0)
    assert np.allclose(coords, coords_again)
    # Every point's nearest other point on the map is of its own class.
    distances = np.linalg.norm(coords[:, None] - coords[None], axis=-1)
    np.fill_diagonal(distances, np.inf)
    assert np.array_equal(sampled[distances.argmin(axis=1)], sampled)


# --- a run on data its encoder cannot read ------------------------------------------------------

PROTEINS = ["MKVLAWY", "QRSTNPG", "MKWWDEF", "LLKVHIE"] * 5
READS = ["ACGTTGCA", "GGATCCAA", "TTAGCATG", "CATGCATG"] * 5


def unlabelled_fasta(path, sequences):
    """An unlabelled FASTA file of ``sequences``, records s0, s1, …"""
    return write_fasta([SequenceRecord(f"s{i}", "", s) for i, s in enumerate(sequences)], path)


@pytest.mark.parametrize("run, sequences, message", [
    ("protein", READS, "holds dna sequences but the encoder of .* reads protein tokens"),
    ("image", PROTEINS, "holds protein sequences but .* holds an image encoder"),
    ("protein", PROTEINS, r"has no labels.*labelled protein data set \(swissprot-loc\)"),
])
def test_evaluate_refuses_data_its_encoder_cannot_read(tmp_path, run, sequences, message):
    run_dir = tmp_path / run
    save_token_run(run_dir) if run == "protein" else save_image_run(run_dir)
    fasta = unlabelled_fasta(tmp_path / "data.fasta", sequences)
    with pytest.raises(DataError, match=message):
        evaluate_run(run_dir, dataset=str(fasta), device="cpu",
                     log=lambda line: pytest.fail(f"evaluated despite bad input: {line}"))


def test_embed_reads_the_run_data_with_its_options(tmp_path):
    # protein sequences that happen to use nucleotide letters only: the file alone reads as DNA
    fasta = unlabelled_fasta(tmp_path / "acgt-proteins.fasta", READS[:4])
    run_dir = tmp_path / "run"
    encoder, tokenizer = save_token_run(run_dir, dataset=str(fasta))
    with pytest.raises(DataError, match="holds dna sequences"):
        embed_run(run_dir, None, "all", tmp_path / "guessed.npy", device="cpu")
    config = load_run_config(run_dir)
    config.data.options = {"alphabet": "protein"}  # as `--set data.options.alphabet=protein`
    config.save(run_dir / "config.yaml")
    feats = embed_run(run_dir, None, "all", tmp_path / "feats.npy", device="cpu")
    with torch.no_grad():
        alone = torch.cat([encoder(tokenizer.encode_batch([s]).ids) for s in READS[:4]])
    np.testing.assert_allclose(feats, alone.numpy(), atol=1e-5, rtol=1e-5)
    assert np.array_equal(np.load(tmp_path / "feats.npy"), feats)


def protein_table(path, rows):
    """A labelled CSV table with its own split column: rows of (sequence, label, split)."""
    path.write_text("sequence,label,split\n" + "".join(f"{s},{l},{p}\n" for s, l, p in rows))
    return str(path)


def tagged_proteins(count: int, split: str, seed: int) -> list[tuple[str, str, str]]:
    """Proteins whose class shows in their letters (class a: rich in A, class k: rich in K)."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("ACDEFGHIKLMNPQRSTVWY"))
    rows = []
    for index in range(count):
        label = "a" if index % 2 else "k"
        body = "".join(rng.choice(letters, 12)) + (label.upper() * 6)
        rows.append(("".join(rng.permutation(list(body))), label, split))
    return rows


def test_evaluating_on_another_data_set_keeps_eval_json_and_names_both(tmp_path):
    home = protein_table(tmp_path / "home.csv",
                         tagged_proteins(40, "train", 0) + tagged_proteins(20, "test", 1))
    run_dir = tmp_path / "run"
    save_token_run(run_dir, dataset=home)
    settings = EvalConfig(label_fractions=[0.5, 1.0], seeds=1, tsne_samples=20)
    quiet = lambda line: None  # noqa: E731
    in_domain = evaluate_run(run_dir, device="cpu", eval_config=settings, log=quiet)
    assert in_domain["dataset"] == in_domain["pretraining_dataset"] == home
    assert in_domain["knn_k"] <= 2 * 20 and in_domain["protocol"]["knn_k"] == "auto"
    before = (run_dir / "eval.json").read_bytes(), (run_dir / "tsne.npz").read_bytes()

    # another table: one sequence labelled both ways, and a class of one training protein
    away_rows = tagged_proteins(30, "train", 2) + tagged_proteins(10, "test", 3)
    twin = away_rows[0][0]
    away_rows += [(twin, "a" if away_rows[0][1] == "k" else "k", "test"), ("MKWWWV", "w", "train")]
    away = protein_table(tmp_path / "away table.csv", away_rows)
    logged: list[str] = []
    other = evaluate_run(run_dir, dataset=away, device="cpu", eval_config=settings,
                         log=logged.append)
    assert ((run_dir / "eval.json").read_bytes(), (run_dir / "tsne.npz").read_bytes()) == before
    written = json.loads((run_dir / "eval-away-table.csv.json").read_text())
    assert written == json.loads(json.dumps(other))
    assert (run_dir / "tsne-away-table.csv.npz").is_file()
    assert written["dataset"] == away and written["pretraining_dataset"] == home
    checks = written["data_checks"]
    assert checks["conflicting_labels"]["groups"] == 1
    assert checks["conflicting_labels"]["items"] == 2
    assert [entry["class"] for entry in checks["small_classes"]["classes"]] == ["w"]
    assert checks["test_in_train"] == 1  # the twin
    assert any("carry different labels" in line for line in logged)
    assert any("fewer than 2 labelled items" in line for line in logged)
    assert "data_checks" in in_domain and in_domain["data_checks"] == {}

    report = write_report(run_dir).read_text()
    assert f"Pretrained on {home}; evaluated on {home}, {away}." in report
    assert f"### On {home}" in report and f"### On {away}" in report
    assert "label_efficiency-away-table.csv.png" in report and "tsne-away-table.csv.png" in report
    assert "carry different labels (2 items)" in report


@pytest.mark.gpu
def test_protocols_give_the_same_answers_on_cuda(digits):
    x_train, y_train, x_test, y_test = digits
    on_cuda = [t.cuda() for t in digits]
    cpu_knn = knn_predict(x_train, y_train, x_test, 10, k=20)
    cuda_knn = knn_predict(on_cuda[0], on_cuda[1], on_cuda[2], 10, k=20, chunk_size=100)
    assert cuda_knn.device.type == "cuda"
    assert (cuda_knn.cpu() == cpu_knn).float().mean() > 0.99  # ties may break differently
    cpu_probe = linear_probe(x_train, y_train, x_test, y_test, 10)
    cuda_probe = linear_probe(*on_cuda, 10)
    assert cuda_probe["accuracy"] == pytest.approx(cpu_probe["accuracy"], abs=0.01)


def test_sparse_rows_fit_as_the_dense_ones():
    # TF-IDF-like rows (0.25 % non-zero) go the sparse way from SPARSE_MIN_ROWS on, centred by a
    # rank-one correction instead of being filled in: the same optimum as the dense centred rows.
    from selfsup.evaluate.linear import SPARSE_BELOW, _fit, _sparse_rows

    feats, labels = sparse_documents(300)
    assert float((feats != 0).float().mean()) < SPARSE_BELOW
    mean = feats.mean(dim=0)
    dense = _fit(feats - mean, labels, 4, 1e-2, tolerance=1e-7, max_iterations=500)
    sparse = _fit(_sparse_rows(feats), labels, 4, 1e-2, tolerance=1e-7, max_iterations=500,
                  offset=mean)
    # L-BFGS in fp32 stops within its tolerance at slightly different points on different CPUs
    # (1.4e-3 apart on a weight of 1.7 on an AMD EPYC). Centring moves the optimum's bias, not its
    # weights (the bias is not decayed): without the offset the bias is 5e-3 off, so the bias's
    # tolerance is what tells a centred fit from an uncentred one.
    torch.testing.assert_close(sparse[0], dense[0], atol=3e-3, rtol=0)
    torch.testing.assert_close(sparse[1], dense[1], atol=1.5e-3, rtol=0)


def test_cross_validation_ranks_decays_by_accuracy_before_cross_entropy(monkeypatch):
    # Two decays whose fits (stand-ins with W = 0, so every row gets the bias as its logits)
    # disagree: the strong decay's confident bias for class 0 is right on 60 % of the rows but
    # costs a cross-entropy of ~2.0; the weak decay's slight lean to class 1 is right on 40 % at
    # ~0.65. Cross-entropy alone would pick the weak decay; the probe must pick the strong one.
    from selfsup.evaluate import linear

    y = torch.tensor([0] * 6 + [1] * 4).repeat(5)
    x = torch.randn(len(y), 3)
    folds = linear.CV_FOLDS
    held = torch.zeros(len(y), folds, dtype=torch.bool)
    for fold in range(folds):
        held[fold * 10:(fold + 1) * 10, fold] = True
    biases = {1.0: torch.tensor([5.0, 0.0]), 0.1: torch.tensor([0.0, 0.1])}

    def fit(x, y, num_classes, decay, **_):
        return torch.zeros(x.shape[1], num_classes * folds), biases[decay].repeat(folds)

    monkeypatch.setattr(linear, "_fit", fit)
    choice = linear._sweep(linear.RowSpace(x), y, held, 2, [1.0, 0.1], "standardise")
    assert choice.weight_decay == 1.0
    assert choice.score[0] == pytest.approx(0.6) and -choice.score[1] > 1.5


def test_feature_scalings_match_torch_statistics_over_many_row_chunks():
    # 10,000 rows: the std is summed over three row chunks; a large offset tests the centring
    x = torch.randn(10_000, 6, generator=torch.Generator().manual_seed(0)) * torch.arange(1., 7.) + 50
    x[:, 2] = 3.0  # a constant feature keeps scale 1 (it is 0 after centring)
    scalings = feature_scalings(x, ["standardise", "uniform"])
    std = x.double().std(dim=0, correction=0)
    torch.testing.assert_close(scalings["standardise"].mean, x.mean(dim=0))
    torch.testing.assert_close(scalings["standardise"].scale.double(),
                               torch.where(std > 1e-8, std, torch.ones_like(std)), rtol=1e-4, atol=0)
    assert float(scalings["uniform"].scale) == pytest.approx(float(std.pow(2).mean().sqrt()), rel=1e-4)
