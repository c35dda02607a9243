"""The run directory's layout (selfsup.run_dir): the file names, their readers and writers, and that
no other module of the package spells a file name of it."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import numpy as np
import pytest

import selfsup
from selfsup.config import Config
from selfsup.errors import DataError
from selfsup.run_dir import RunDir, dataset_tag, read_tsne, write_json, write_tsne
from selfsup.train.metrics_log import parse_metrics

PACKAGE = Path(selfsup.__file__).parent

# The layout as users and older runs know it: renaming any of these breaks existing run dirs.
LAYOUT = {
    "config_file": "config.yaml",
    "metrics_file": "metrics.jsonl",
    "checkpoint_file": "checkpoints/last.pt",
    "tokenizer_file": "tokenizer.json",
    "encoder_weights": "encoder.safetensors",
    "encoder_spec": "encoder.json",
    "health_verdict_file": "health_verdict.json",
    "finetune_file": "finetune.json",
    "report_file": "report.md",
    "bo_cache_dir": "bo-embeddings",
    "effective_rank_plot": "effective_rank.png",
    "spectrum_plot": "spectrum.png",
    "loss_lr_plot": "loss_lr.png",
    "probe_plot": "probe.png",
    "held_out_perplexity_plot": "held_out_perplexity.png",
    "finetune_plot": "finetune_label_efficiency.png",
}


@pytest.mark.parametrize("attribute, name", sorted(LAYOUT.items()))
def test_the_layout_keeps_its_file_names(tmp_path, attribute, name):
    assert getattr(RunDir(tmp_path), attribute) == tmp_path / name


def test_an_evaluation_on_the_pretraining_data_uses_the_plain_names(tmp_path):
    run = RunDir(tmp_path)
    assert (run.eval_file(), run.tsne_file()) == (tmp_path / "eval.json", tmp_path / "tsne.npz")
    assert run.label_efficiency_plot(run.eval_file()) == tmp_path / "label_efficiency.png"
    assert run.tsne_plot(run.eval_file()) == tmp_path / "tsne.png"


@pytest.mark.parametrize("dataset, tag", [
    ("cifar10", "cifar10"),
    ("/data/away/table.csv", "table.csv"),  # a path: its file name
    ("my data!set", "my-data-set"),  # other characters as -
    ("--..", "data"),  # nothing left: a stand-in
])
def test_an_evaluation_on_another_data_set_is_named_after_it(tmp_path, dataset, tag):
    run = RunDir(tmp_path)
    assert dataset_tag(dataset) == tag
    assert run.eval_file(dataset) == tmp_path / f"eval-{tag}.json"
    assert run.tsne_file(dataset) == tmp_path / f"tsne-{tag}.npz"
    eval_file = run.eval_file(dataset)
    assert run.label_efficiency_plot(eval_file) == tmp_path / f"label_efficiency-{tag}.png"
    assert run.tsne_plot(eval_file) == tmp_path / f"tsne-{tag}.png"


def test_eval_files_lists_the_in_domain_evaluation_first_then_the_others_by_name(tmp_path):
    run = RunDir(tmp_path)
    assert run.eval_files() == []
    for name in ("eval-b.json", "eval-a.json", "eval.json", "evaluation.json"):
        (tmp_path / name).write_text("{}")
    (tmp_path / "eval-folder.json").mkdir()
    assert [p.name for p in run.eval_files()] == ["eval.json", "eval-a.json", "eval-b.json"]


def test_file_never_leaves_the_run_dir(tmp_path):
    assert RunDir(tmp_path).file("../../elsewhere/tsne-x.npz") == tmp_path / "tsne-x.npz"


def test_load_config_of_a_folder_without_one_says_what_to_pass(tmp_path):
    with pytest.raises(DataError, match=r"is not a selfsup run dir \(no config.yaml\); pass the "
                                        "--out directory"):
        RunDir(tmp_path).load_config()


def test_a_saved_config_loads_back(tmp_path):
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    config = Config()
    config.train.epochs = 3
    run.save_config(config)
    assert run.load_config().train.epochs == 3
    text, mapping = run.read_config_text()
    assert text == run.config_file.read_text() and mapping["train"]["epochs"] == 3
    assert RunDir(tmp_path / "none").read_config_text() == (None, {})


@pytest.mark.parametrize("content,reason", [
    (b"", "is empty: the run's settings are lost"),
    (b"train:\n  epochs: 3\n", "not a saved run config"),
    (b"method:\n  name: simclr\n\xff\xfe\n", "is not UTF-8 text"),
    (b"method: [\n", "is not valid YAML"),
])
def test_a_damaged_saved_config_is_a_named_error_not_the_defaults(tmp_path, content, reason):
    """An emptied config.yaml once read as the defaults: an 8×8 digits run evaluated as a
    Fashion-MNIST one. A saved config is read as written, or refused by name."""
    run = RunDir(tmp_path)
    run.config_file.write_bytes(content)
    with pytest.raises(DataError, match=re.escape(str(run.config_file)) + ".*" + reason):
        run.load_config()


def test_write_json_is_indented_and_leaves_no_temporary_file(tmp_path):
    run = RunDir(tmp_path)
    path = run.write_json(run.health_verdict_file, {"status": "healthy", "messages": []})
    assert path.read_text() == json.dumps({"status": "healthy", "messages": []}, indent=2)
    assert [p.name for p in tmp_path.iterdir()] == ["health_verdict.json"]
    assert run.read_json("health_verdict.json") == {"status": "healthy", "messages": []}
    assert write_json(tmp_path / "sub" / "x.json", [1]).read_text() == "[\n  1\n]"


def test_read_json_names_a_damaged_file(tmp_path):
    run = RunDir(tmp_path)
    assert run.read_json(run.eval_file()) is None
    run.eval_file().write_text("{oops")
    with pytest.raises(DataError, match="eval.json is not valid JSON"):
        run.read_json(run.eval_file())
    run.eval_file().write_text("[1, 2]")
    with pytest.raises(DataError, match="must hold a JSON object"):
        run.read_json(run.eval_file())


def test_read_metrics_skips_a_torn_last_line(tmp_path):
    run = RunDir(tmp_path)
    assert run.read_metrics() == []
    log = run.metrics_log()
    log.write({"kind": "step", "step": 1, "loss": 0.5})
    with open(run.metrics_file, "a") as f:
        f.write('{"kind": "step", "st')
    assert run.read_metrics() == [{"kind": "step", "step": 1, "loss": 0.5}]


def test_one_parser_reads_the_log_line_by_line_bad_bytes_included(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b'{"kind": "step", "step": 1}\n\xff\xfe bad bytes\n[1, 2]\n\n'
                     b'{"kind": "step", "step": 2}\n{"kind": "st')
    parsed = parse_metrics(path)
    assert parsed.records == [(1, {"kind": "step", "step": 1}), (5, {"kind": "step", "step": 2})]
    assert [number for number, _ in parsed.bad_lines] == [2, 3]
    assert "utf-8" in parsed.bad_lines[0][1] and parsed.torn_last_line == 6
    assert RunDir(tmp_path).read_metrics() == [record for _, record in parsed.records]


def test_a_tsne_round_trips(tmp_path):
    path = RunDir(tmp_path).tsne_file("other")
    coords = np.arange(8, dtype=np.float32).reshape(4, 2)
    write_tsne(path, coords, np.array([0, 1, 0, 1]), np.array(["cat", "dog"]))
    tsne = read_tsne(path)
    assert np.array_equal(tsne.coords, coords) and tsne.class_names == ["cat", "dog"]
    assert read_tsne(tmp_path / "tsne.npz") is None


def test_has_encoder_needs_both_files(tmp_path):
    run = RunDir(tmp_path)
    run.encoder_spec.write_text(json.dumps({"backbone": {"name": "small-cnn"}}))
    assert not run.has_encoder()
    run.encoder_weights.write_bytes(b"weights")
    assert run.has_encoder() and run.read_encoder_spec() == {"backbone": {"name": "small-cnn"}}


# ------------------------------------------------------------------------------------------------
# no module but run_dir.py spells a file name of the run dir

SPELLINGS = re.compile("|".join([
    r"\b(config\.yaml|metrics\.jsonl|encoder\.json|encoder\.safetensors|health_verdict\.json"
    r"|finetune\.json|report\.md|tokenizer\.json|last\.pt)\b",
    r"\bcheckpoints/",
    r"\beval(-\{\})?\.json\b",  # eval.json, f"eval-{name}.json"
    r"\btsne(-\{\})?\.npz\b",
    r"[\w{}-]+\.png\b",  # a plot or picture, f"label_efficiency{suffix}.png"
]))
EXACT = {"checkpoints", "bo-embeddings"}  # folder names, also words of prose


def _strings(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, text) of every string in the code, docstrings and other bare string statements
    left out; an f-string as its text with ``{}`` for each placeholder."""
    bare = {id(node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Expr) and isinstance(node.value, (ast.Constant, ast.JoinedStr))}
    found = []
    for node in ast.walk(tree):
        if id(node) in bare:
            continue
        if isinstance(node, ast.JoinedStr):
            text = "".join(part.value if isinstance(part, ast.Constant) else "{}"
                           for part in node.values)
            found.append((node.lineno, text))
            bare.update(id(part) for part in node.values)  # its pieces are checked as a whole
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            found.append((node.lineno, node.value))
    return found


def _spellings(source: str) -> list[tuple[int, str]]:
    return [(line, text) for line, text in sorted(_strings(ast.parse(source)))
            if SPELLINGS.search(text) or text in EXACT]


def test_the_check_finds_spellings_in_strings_and_f_strings_but_not_in_docstrings():
    source = '''
"""The module writes config.yaml."""
def f(run_dir, name, suffix):
    """Reads eval.json."""
    a = run_dir / "metrics.jsonl"
    b = f"eval-{name}.json"
    c = f"label_efficiency{suffix}.png"
    d = run_dir / "checkpoints"
    e = f"{run_dir} holds no checkpoint (checkpoints/last.pt)"
    g = "train with checkpoints at every epoch; images: .png, .jpg"
'''
    assert [line for line, _ in _spellings(source)] == [5, 6, 7, 8, 9]


def test_no_module_but_run_dir_spells_a_file_name_of_the_run_dir():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name in ("run_dir.py", "run_files.py") and path.parent == PACKAGE:
            continue
        for line, text in _spellings(path.read_text()):
            offenders.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {text!r}")
    assert not offenders, ("file names of the run dir belong in selfsup/run_files.py (RunDir "
                           "owns them):\n"
                           + "\n".join(offenders))
