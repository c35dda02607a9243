"""What the training loop does besides training: hooks called at the start, after each logged
interval's record, at the end of every epoch and at the end of the run.

The default hooks of ``selfsup pretrain`` (:func:`default_hooks`), in the order they run:

* :class:`MetricsLogger`: every record to ``metrics.jsonl``;
* :class:`HealthCheck`: the collapse diagnostics, the held-out loss and the online k-NN probe on a
  fixed held-out batch;
* :class:`Checkpointer`: the training state at every epoch boundary (exact resume);
* :class:`EncoderExport`: ``encoder.safetensors`` + ``encoder.json`` and the health verdict.

Hooks run on rank 0 alone (unless they say ``all_ranks``), with the plain method in eval mode
where they look at it; nothing in them communicates, so the other processes need not wait. A hook can be left out
(``Trainer(config, hooks=[...])``) or added (subclass :class:`Hook`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NoReturn, Optional, Protocol

import torch
from torch import nn

from selfsup.config import Config
from selfsup.data import load_split
from selfsup.errors import DataError
from selfsup.evaluate.knn import knn_accuracy, online_knn_k
from selfsup.run_dir import RunDir
from selfsup.train.checkpoint import save_checkpoint, save_encoder
from selfsup.health import HealthMonitor
from selfsup.train.device import autocast
from selfsup.train.parts import TrainingParts

HELD_OUT_SAMPLES = 256  # health-batch samples the held-out loss (perplexity) is measured on


class Loop(Protocol):
    """What hooks see of the loop that calls them (:class:`selfsup.train.trainer.Trainer`)."""

    config: Config
    run: RunDir
    parts: TrainingParts
    monitor: HealthMonitor  # the health figures and verdict, saved in every checkpoint
    wall_seconds: float  # training time so far, resumed runs included

    def emit(self, record: dict[str, Any]) -> None:
        """Hand a record of the run to every hook (the log writes it)."""

    def state(self, epoch: int, step: int) -> dict[str, Any]:
        """The training state after ``epoch`` epochs and ``step`` steps (a checkpoint)."""

    def diverged(self, epoch: int, step: int, what: str) -> NoReturn:
        """Stop the run because ``what`` happened, keeping the last good checkpoint."""


class Hook:
    """A piece of the run outside the training step. Every method is optional.

    Hooks run on rank 0 alone unless ``all_ranks`` (then on every process, e.g. one that stops
    the run, which every process must do alike)."""

    all_ranks: bool = False

    def on_start(self, trainer: Loop) -> None:
        """Once the parts are built, before a budget's calibration, a resume's restore and the
        first epoch."""

    def on_resume(self, trainer: Loop, step: int) -> None:
        """A resumed run restored its checkpoint of ``step`` (before any record of this run)."""

    def on_record(self, trainer: Loop, record: dict[str, Any]) -> None:
        """A record of the run: steps, epochs, health figures, run events."""

    def on_epoch_end(self, trainer: Loop, epoch: int, step: int) -> None:
        """After epoch ``epoch`` (counted from 0) ended at ``step``."""

    def on_end(self, trainer: Loop, step: int) -> None:
        """After the last epoch."""


class MetricsLogger(Hook):
    """Appends every record to the run's ``metrics.jsonl``; a resumed run's log is first cut back
    to its checkpoint's step."""

    def __init__(self, run: RunDir) -> None:
        self.log = run.metrics_log()

    def on_resume(self, trainer: Loop, step: int) -> None:
        self.log.truncate_after(step)  # the records past the checkpoint are redone

    def on_record(self, trainer: Loop, record: dict[str, Any]) -> None:
        self.log.write(record)


@dataclass
class HealthData:
    """The fixed held-out batch the health monitor and the online k-NN probe look at every time."""

    inputs: torch.Tensor  # on the device: what the views take (uint8 images, token ids)
    query_inputs: Optional[torch.Tensor]  # held-out labelled queries of the k-NN probe
    query_labels: Optional[torch.Tensor]
    bank_inputs: Optional[torch.Tensor]  # labelled training samples for the k-NN probe
    bank_labels: Optional[torch.Tensor]
    num_classes: int


def health_data(trainer: Loop) -> HealthData:
    """A fixed batch from the test split (else from train) and a labelled probe bank."""
    cfg, parts = trainer.config, trainer.parts
    samples = cfg.train.health_samples
    try:
        test = load_split(cfg.data.dataset, "test", cfg.data.data_dir, cfg.data.options)
    except DataError:
        test = None
    train = parts.train_data

    def inputs_of(source: Any, indices: torch.Tensor) -> torch.Tensor:
        return parts.modality.sample_inputs(source, indices, parts.device)

    # The health batch needs ≥ health_samples samples: the test split when it is that large.
    source = test if test is not None and len(test) >= samples else train
    pick = torch.Generator().manual_seed(12345)
    inputs = inputs_of(source, torch.randperm(len(source), generator=pick)[:samples])
    bank_inputs = bank_labels = query_inputs = query_labels = None
    num_classes = 0
    if train.labels is not None:
        if test is not None and test.labels is not None:  # queries: labelled held-out samples
            bank = torch.randperm(len(train), generator=pick)[: cfg.train.probe_train_samples]
            query_source = test
            queries = torch.randperm(len(test), generator=pick)[: cfg.train.probe_test_samples]
        else:  # no labelled test split: disjoint query and bank parts of the training set
            shuffled = torch.randperm(len(train), generator=pick)
            num_queries = min(cfg.train.probe_test_samples, len(train) // 5)
            query_source, queries = train, shuffled[:num_queries]
            bank = shuffled[num_queries:num_queries + cfg.train.probe_train_samples]
        if len(queries) > 0 and len(bank) > 0:
            bank_inputs = inputs_of(train, bank)
            bank_labels = train.labels[bank].to(parts.device)
            query_inputs = inputs_of(query_source, queries)
            query_labels = query_source.labels[queries].to(parts.device)
            num_classes = max(train.num_classes, query_source.num_classes)
    return HealthData(inputs, query_inputs, query_labels, bank_inputs, bank_labels, num_classes)


class HealthCheck(Hook):
    """Collapse diagnostics every ``train.health_every`` epochs, the method's held-out loss every
    epoch where it has one (``held_out_logs``: MLM's perplexity), and the online k-NN probe every
    ``train.probe_every`` epochs, into the trainer's health monitor; warnings are printed."""

    def __init__(self) -> None:
        self.data: Optional[HealthData] = None

    def on_start(self, trainer: Loop) -> None:
        self.data = health_data(trainer)
        trainer.monitor.weight_norm(weight_norm(trainer.parts.method))  # kept by a resumed run

    def on_record(self, trainer: Loop, record: dict[str, Any]) -> None:
        if record.get("kind") == "epoch":
            trainer.monitor.loss(record["epoch"], record["loss"])
        elif record.get("kind") == "step":
            trainer.monitor.step_loss(record["step"], record["loss"])

    @torch.no_grad()
    def _embed(self, trainer: Loop, inputs: torch.Tensor, fn, chunk: int = 1024
               ) -> dict[str, torch.Tensor]:
        parts = trainer.parts
        outs: dict[str, list[torch.Tensor]] = {}
        for start in range(0, len(inputs), chunk):
            x = parts.modality.model_input(inputs[start:start + chunk])
            with autocast(parts.device, parts.precision):
                for name, z in fn(x.contiguous(memory_format=parts.memory_format)).items():
                    outs.setdefault(name, []).append(z.float())
        return {name: torch.cat(values) for name, values in outs.items()}

    @torch.no_grad()
    def _held_out(self, trainer: Loop, inputs: torch.Tensor) -> dict[str, float]:
        """The method's loss and logs on fixed views of held-out inputs (eval mode, no update)."""
        parts = trainer.parts
        views = parts.views(inputs, torch.Generator(device=parts.device).manual_seed(778))
        with autocast(parts.device, parts.precision):
            out = parts.method(views)
        return {"loss": float(out.loss), **scalars(out.logs)}

    def on_epoch_end(self, trainer: Loop, epoch: int, step: int) -> None:
        cfg, parts, data = trainer.config.train, trainer.parts, self.data
        assert data is not None, "on_start builds the health data"
        method, monitor = parts.method, trainer.monitor
        last = epoch + 1 == parts.schedule.epochs
        method.eval()
        records: list[dict] = []
        if (epoch + 1) % cfg.health_every == 0 or last:
            clean = self._embed(trainer, data.inputs, method.health_embeddings)
            pair_gen = torch.Generator(device=parts.device).manual_seed(777)
            augmented = parts.views(data.inputs, pair_gen)[0]
            paired = self._embed(trainer, augmented, method.health_embeddings)
            for name, z in (*clean.items(), *paired.items()):
                if not bool(torch.isfinite(z).all()):
                    trainer.diverged(epoch, step, f"the {name} embeddings of the health batch "
                                                  "became NaN or infinite")
            records += monitor.check(epoch + 1, step, {k: (clean[k], paired[k]) for k in clean})
        if method.held_out_logs:
            records.append({"kind": "held_out", "epoch": epoch + 1, "step": step,
                            **self._held_out(trainer, data.inputs[:HELD_OUT_SAMPLES])})
        if data.bank_inputs is not None and ((epoch + 1) % cfg.probe_every == 0 or last):
            embed = lambda x: {"f": method.embed(x)}  # noqa: E731
            bank = self._embed(trainer, data.bank_inputs, embed)["f"]
            queries = self._embed(trainer, data.query_inputs, embed)["f"]
            evaluation = trainer.config.eval
            accuracy = knn_accuracy(bank, data.bank_labels, queries, data.query_labels,
                                    data.num_classes, k=online_knn_k(evaluation.knn_k, data.bank_labels),
                                    temperature=evaluation.knn_temperature)
            records += monitor.probe(epoch + 1, step, accuracy)
        monitor.weight_norm(weight_norm(method))
        records += [{"kind": "warning", "epoch": epoch + 1, "step": step,
                     "source": "training_signal", "message": problem}
                    for problem in monitor.signal.problems()]
        method.train()
        for record in records:
            trainer.emit(record)
            for message in ([record["message"]] if record.get("kind") == "warning" else
                            record.get("warnings", [])):
                print(f"WARNING (epoch {epoch + 1}): {message}")
        if cfg.progress:
            summary = [f"{r['embedding']} rank {r['effective_rank']:.1f}/{r['dim']}" for r in records
                       if r.get("kind") == "health"]
            summary += [f"k-NN {r['knn_top1']:.3f}" for r in records if r.get("kind") == "probe"]
            if summary:
                print("  health: " + ", ".join(summary))


class Checkpointer(Hook):
    """The training state (:meth:`Trainer.state`) at every epoch boundary, written atomically."""

    def on_epoch_end(self, trainer: Loop, epoch: int, step: int) -> None:
        save_checkpoint(trainer.run.checkpoint_file, trainer.state(epoch + 1, step))


class EncoderExport(Hook):
    """At the end: the encoder evaluation uses (``encoder.safetensors`` with ``encoder.json``, its
    modality's description) and the health monitor's verdict."""

    def on_end(self, trainer: Loop, step: int) -> None:
        parts = trainer.parts
        encoder = parts.method.export_encoder
        save_encoder(trainer.run, encoder, parts.modality.encoder_spec(encoder, trainer.config))
        trainer.run.write_json(trainer.run.health_verdict_file, trainer.monitor.verdict())


@torch.no_grad()
def weight_norm(module: nn.Module) -> float:
    """The L2 norm of all of ``module``'s parameters together (inf once any is not finite)."""
    norms = [p.detach().float().norm() for p in module.parameters()]
    return float(torch.stack(norms).norm()) if norms else 0.0


def default_hooks(run: RunDir) -> list[Hook]:
    """The hooks of ``selfsup pretrain``: log, health checks and probe, checkpoints, export."""
    return [MetricsLogger(run), HealthCheck(), Checkpointer(), EncoderExport()]


def scalars(logs: dict[str, Any]) -> dict[str, float]:
    """A method's extra logs of the latest step (loss terms, momentum, ...) as plain floats."""
    return {key: float(value.item() if isinstance(value, torch.Tensor) else value)
            for key, value in logs.items()}
