"""The text tokeniser of a data-parallel run: rank 0 alone learns it, the other processes load
rank 0's file. Two gloo processes on the CPU run a tiny MLM run on a few 20newsgroups-format texts.

To show that agreement does not rest on every process learning the same vocabulary by itself, the
processes other than rank 0 learn from other texts whenever they call ``TextTokenizer.train``:
they would then hold another vocabulary. One process on its own learns and saves it as before.
"""

from __future__ import annotations

import json
import os
import random
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from selfsup.config import Config
from selfsup.run_config import load_config
from selfsup.data.text_datasets import FILES
from selfsup.tokenize.text import TOKENIZER_FILE, TextTokenizer
from selfsup.train import Trainer

from conftest import TINY_MLM
from method_helpers import free_port

WORLD = 2
WORDS = ("the shuttle launch orbit moon comet brakes engine wheel doctor side effects patient "
         "graphics window screen driver hockey goal season church faith space").split()
GROUPS = ("sci.space", "rec.autos", "sci.med", "comp.graphics")
TINY_TEXT_RUN = TINY_MLM + [
    "data.dataset=20newsgroups", "data.vocab_size=300", "train.batch_size=8",
    "train.steps_per_epoch=1", "train.probe_every=1", "train.probe_train_samples=16",
    "train.probe_test_samples=16",
]

def write_texts(folder: Path) -> None:
    """Small train and test splits in the Orange ``.tab`` format of 20newsgroups."""
    rng = random.Random(0)
    header = "Category\tText\nd\tstring\nclass\t\n\n"
    for split, count in (("train", 48), ("test", 16)):
        rows = [f"{rng.choice(GROUPS)}\t{' '.join(rng.choices(WORDS, k=rng.randint(4, 12)))}"
                for _ in range(count)]
        (folder / FILES[split]).write_text(header + "".join(row + "\n" for row in rows),
                                           encoding="utf-8")


def _worker(rank: int, port: int, runs: dict[str, Config], out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    learn = TextTokenizer.train.__func__
    calls: list[int] = []

    def counted(cls, texts, vocab_size):
        calls.append(rank)
        # any process but rank 0 learns from other texts: a vocabulary of its own
        return learn(cls, texts if rank == 0 else list(texts)[::2], vocab_size)

    TextTokenizer.train = classmethod(counted)  # a spawned process: nothing to restore
    dist.init_process_group("gloo", timeout=timedelta(seconds=60))
    results: dict[str, Any] = {}
    trainer = Trainer(runs["learnt"])
    trainer.fit()
    results["calls"] = list(calls)
    results["vocabulary"] = trainer.parts.modality.tokenizer.backend.get_vocab(with_added_tokens=True)
    results["sha256"] = trainer.parts.modality.tokenizer.sha256
    results["path"] = str(trainer.parts.modality.tokenizer.path)
    results["parameters"] = {k: v.clone() for k, v in trainer.parts.method.state_dict().items()}
    try:  # a vocabulary too small to learn: rank 0 fails, and the others must not wait for it
        Trainer(runs["failing"]).fit()
        results["failure"] = None
    except Exception as error:  # noqa: BLE001
        results["failure"] = f"{type(error).__name__}: {error}"
    torch.save(results, Path(out) / f"rank{rank}.pt")
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict[str, Any]]:
    data = tmp_path_factory.mktemp("texts")
    write_texts(data)
    out = tmp_path_factory.mktemp("ranks")
    base = TINY_TEXT_RUN + [f"data.data_dir={data}"]
    runs = {"learnt": load_config(None, [*base, f"out={out / 'learnt'}"]),
            "failing": load_config(None, [*base, "data.vocab_size=100", f"out={out / 'failing'}"])}
    mp.spawn(_worker, args=(free_port(), runs, str(out)), nprocs=WORLD, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def test_rank_0_alone_learns_the_text_tokeniser_and_every_rank_holds_its_file(ranks):
    assert [r["calls"] for r in ranks] == [[0], []]
    rank0, rank1 = ranks
    assert rank1["vocabulary"] == rank0["vocabulary"]
    assert len(rank0["vocabulary"]) == 300
    saved = Path(rank0["path"])
    assert saved.name == TOKENIZER_FILE and rank1["path"] == rank0["path"]
    assert rank1["sha256"] == rank0["sha256"] == TextTokenizer.load(saved).sha256
    # the same vocabulary, so the same embedding rows: DDP kept the parameters identical
    for name, value in rank0["parameters"].items():
        torch.testing.assert_close(rank1["parameters"][name], value, rtol=0, atol=0)


def test_when_rank_0_cannot_learn_the_tokeniser_every_rank_stops(ranks):
    assert ranks[0]["failure"].startswith("ConfigError") and "vocab_size=100" in ranks[0]["failure"]
    assert ranks[1]["failure"] == ("DataError: rank 0 could not make the text tokeniser; its error "
                                   "says why")


def test_one_process_learns_saves_and_records_the_tokeniser(tmp_path, monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    write_texts(tmp_path)
    learn = TextTokenizer.train.__func__
    calls: list[int] = []

    def counted(cls, texts, vocab_size):
        calls.append(len(texts))
        return learn(cls, texts, vocab_size)

    monkeypatch.setattr(TextTokenizer, "train", classmethod(counted))
    config = load_config(None, TINY_TEXT_RUN + [f"data.data_dir={tmp_path}",
                                                f"out={tmp_path / 'run'}"])
    trainer = Trainer(config)
    run_dir = trainer.fit()
    assert calls == [48]  # the training split alone
    spec = json.loads((run_dir / "encoder.json").read_text())
    saved = TextTokenizer.load(run_dir / TOKENIZER_FILE, spec["tokenizer"]["sha256"])
    assert saved.to_json() == trainer.parts.modality.tokenizer.to_json()
