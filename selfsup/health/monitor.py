"""Turn collapse diagnostics into warnings a person can act on, and keep them across a run.

Three failure modes are watched:

* collapse of the embeddings, read from :func:`selfsup.health.metrics.health_metrics` of a fixed
  batch (:func:`collapse_warnings`);
* a training loss that keeps falling while the online k-NN probe stands still: the method is
  solving its pretext task without learning features that separate the classes
  (:class:`LossProbeDivergence`);
* a training signal that is broken outright (:class:`TrainingSignal`): a loss that does not move
  at all (a temperature so high the logits are flat gives exactly ln(2B − 1) at every step), or
  weights that explode while the loss stays finite (SGD at a learning rate of 1e6).

:class:`HealthMonitor` combines them, produces the ``metrics.jsonl`` records and the verdict the
report shows, and saves its history in checkpoints so a resumed run keeps it.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Union

import torch

from selfsup.errors import ConfigError
from selfsup.health.metrics import health_metrics

# --- Thresholds -----------------------------------------------------------------------------
# Calibrated on random-init ResNets, whose pooled ReLU features are healthy but offset:
#                                      std*sqrt(D)  raw cosine  rank  centred rank / min(N, D)
#   torchvision ResNet-18, train-mode BN    0.48       0.77       356     447 / 512
#   torchvision ResNet-18, initial BN stats 0.15       0.97       140     365 / 512
#   torchvision ResNet-50, train-mode BN    0.47       0.78       724     876 / 1024
#   torchvision ResNet-50, initial BN stats 0.12       0.98       279     735 / 1024
#   CIFAR ResNet-18 (3x3 stem), initial BN  0.07       0.99        13     122 / 256
# (torchvision: 1024 noise images of 64x64; CIFAR: 256 digits upsampled to 32x32.) Healthy
# isotropic embeddings give std*sqrt(D) ≈ 1, while SimSiam without stop-gradient drives the std
# to 0 within a few epochs (Chen & He 2021, Fig. 2). The thresholds sit well below every healthy
# figure above, so a warning means something is really wrong.
#
# Deliberately NOT used: the raw mean cosine. ReLU features are non-negative, so every pair of
# embeddings has a large positive cosine even when healthy (0.77 to 0.99 above; 0.32 for
# ReLU(Gaussian)). Only the centred cosine, which removes the shared offset, is judged.
#
# Known limit: a deep random network with a 3x3 stem, evaluated with BatchNorm's *initial*
# running statistics, can map every input to nearly one direction (a CIFAR ResNet-50: raw cosine
# 0.9999, std*sqrt(D) 0.008, rank 1.6) and is then reported as collapsed. Check health in train
# mode or after the first epoch, when the running statistics are real.

# Spread of the normalised embeddings, std * sqrt(D): 1 for isotropic, 0 for a single point.
MIN_STD_X_SQRT_DIM = 0.02
# RankMe below 2: one singular value carries most of the spectrum, the embeddings lie on a line.
MIN_EFFECTIVE_RANK = 2.0
# Centred embeddings sum to zero, so their mean cosine is about −1/(N−1) unless the batch is very
# lopsided; it nears 1 only when all but a few embeddings coincide and a few outliers pull the mean.
MAX_MEAN_COSINE_CENTRED = 0.95
# Dimensional collapse (Jing et al. 2022): the embeddings vary in only a few directions. Judged on
# the centred rank so the positive offset of ReLU features does not count as a direction, and
# relative to min(N, D), the most a batch of N embeddings can reach. 2% keeps it quiet for every
# network above (>= 47% of min(N, D)) and asks a 128-d projector for only 2.56 directions.
MIN_RANK_FRACTION = 0.02

COLLAPSE_ADVICE = (
    "for SimSiam and BYOL check the stop-gradient and the predictor, for BYOL, MoCo and DINO the "
    "momentum (teacher) update, for DINO the centring and the teacher temperature; a lower "
    "learning rate or a longer warm-up also helps"
)
DIMENSIONAL_ADVICE = (
    "the representation uses only a few directions (dimensional collapse); for SimSiam and BYOL "
    "check the stop-gradient and the predictor first (without them the projector output collapses "
    "onto a few directions); otherwise a wider projector, weaker augmentation or a lower learning "
    "rate usually help, and the encoder features before the projector are often less affected"
)


def collapse_warnings(metrics: dict[str, Any]) -> list[str]:
    """Human-readable warnings when ``metrics`` (from ``health_metrics``) look collapsed.

    At most one message: complete collapse (every embedding about the same point or direction),
    else dimensional collapse (the embeddings vary in only a few directions). An empty list means
    no sign of collapse.
    """
    dim = metrics["dim"]
    spread = metrics["embedding_std_x_sqrt_dim"]
    rank = metrics["effective_rank"]
    cosine_centred = metrics["mean_cosine_centred"]

    # Each finding: what was seen, and what it means. One message reports them all.
    findings: list[tuple[str, str]] = []
    if spread < MIN_STD_X_SQRT_DIM:
        seen = f"std of the normalised embeddings x sqrt(dim) is {spread:.3g} (healthy ≈ 1)"
        meaning = "the embeddings have collapsed to a point (they all point the same way)"
        findings.append((seen, meaning))
    if rank < MIN_EFFECTIVE_RANK:
        seen = f"effective rank {rank:.2f} of {dim} dims"
        findings.append((seen, "the embeddings have collapsed to a single direction"))
    if cosine_centred > MAX_MEAN_COSINE_CENTRED:
        seen = f"mean cosine of the centred embeddings is {cosine_centred:.3f} (healthy ≈ 0)"
        findings.append((seen, "all but a few embeddings coincide"))
    if findings:
        seen = " and ".join(observation for observation, _ in findings)
        return [f"{seen}: {findings[0][1]}; {COLLAPSE_ADVICE}"]

    attainable = min(dim, metrics["num_samples"])
    rank_floor = max(MIN_EFFECTIVE_RANK, MIN_RANK_FRACTION * attainable)
    centred_rank = metrics["effective_rank_centred"]
    if centred_rank < rank_floor:
        return [
            f"effective rank of the centred embeddings is {centred_rank:.1f} of {dim} dims "
            f"(below {rank_floor:.1f}, {MIN_RANK_FRACTION:.0%} of the {attainable} a batch of "
            f"{metrics['num_samples']} can reach): {DIMENSIONAL_ADVICE}"
        ]
    return []


class LossProbeDivergence:
    """Warns when the training loss keeps falling while the online k-NN probe stops improving.

    Over the last ``window`` probes the probe must set a new best: its best accuracy in the window
    is compared with its best before the window (gain, absolute), and the loss at the last probe
    before the window with the loss at the latest probe (drop, relative to |loss|). The warning
    fires when the gain is at most ``min_gain`` while the drop exceeds ``min_drop``.

    Why "a new best" rather than first-vs-last gain: late in a healthy run the probe still creeps
    up by a few tenths of a point per probe, within the noise of a 1k–10k-sample probe, so a gain
    threshold fires on healthy runs (seen on SimCLR/Fashion-MNIST: +0.3 points over 10 epochs). A
    probe that makes no new high over several probes while the loss falls by a few percent is the
    pattern of a shortcut or a collapse. L(e) is the latest loss recorded at or before epoch e:
    record an epoch's loss before its probe.
    """

    def __init__(self, window: int = 4, min_gain: float = 0.0, min_drop: float = 0.02) -> None:
        if window < 1:
            raise ConfigError(f"the loss/probe divergence window must hold at least 1 probe, got {window}")
        self.window = window
        self.min_gain = min_gain
        self.min_drop = min_drop
        self.losses: dict[int, float] = {}
        self.probes: dict[int, float] = {}

    def update_loss(self, epoch: int, loss: float) -> None:
        """Record the mean training loss of ``epoch``."""
        self.losses[int(epoch)] = float(loss)

    def update_probe(self, epoch: int, accuracy: float) -> None:
        """Record the k-NN probe accuracy (a fraction in [0, 1]) measured after ``epoch``."""
        self.probes[int(epoch)] = float(accuracy)

    def _loss_at(self, epoch: int) -> Optional[float]:
        earlier = [e for e in self.losses if e <= epoch]
        return self.losses[max(earlier)] if earlier else None

    def warning(self) -> Optional[str]:
        """The divergence warning for the latest ``window`` probes, or None when they look fine."""
        epochs = sorted(self.probes)
        if len(epochs) <= self.window:
            return None
        before, recent = epochs[: -self.window], epochs[-self.window:]
        loss_then, loss_now = self._loss_at(before[-1]), self._loss_at(recent[-1])
        if loss_then is None or loss_now is None:
            return None
        best_before = max(self.probes[e] for e in before)
        best_recent = max(self.probes[e] for e in recent)
        gain = best_recent - best_before
        drop = (loss_then - loss_now) / max(abs(loss_then), 1e-12)
        if not (gain <= self.min_gain and drop > self.min_drop):
            return None
        return (
            f"from epoch {before[-1]} to {recent[-1]} the training loss fell by {drop:.1%} "
            f"({loss_then:.4g} → {loss_now:.4g}) but the k-NN probe set no new best in its last "
            f"{self.window} checks (best {best_recent:.2%} vs {best_before:.2%} before, "
            f"{100 * gain:+.2f} points): the method is getting better at its pretext task without "
            "learning features that separate the classes — check the health figures for collapse, "
            "try stronger augmentation, or look for a shortcut in the views"
        )

    def state_dict(self) -> dict[str, Any]:
        """The recorded histories, as JSON-ready lists of [epoch, value] pairs."""
        return {
            "losses": [[e, v] for e, v in sorted(self.losses.items())],
            "probes": [[e, v] for e, v in sorted(self.probes.items())],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the histories saved by :meth:`state_dict` (thresholds come from ``__init__``)."""
        self.losses = {int(e): float(v) for e, v in state["losses"]}
        self.probes = {int(e): float(v) for e, v in state["probes"]}


# A loss exactly equal (to the last bit) over this many logged steps is not being optimised;
# real training never repeats a float loss five logs running (log_every steps apart).
CONSTANT_LOSS_LOGS = 5
# Weights this many times their norm at the start of training have exploded: healthy runs stay
# within a few times (weight decay pulls them back); SGD at lr 1e6 reached 1e33.
WEIGHT_GROWTH_LIMIT = 1e3


class TrainingSignal:
    """Whether the loss moves and the weights stay bounded (see the module docstring)."""

    def __init__(self) -> None:
        self.recent_losses: list[float] = []  # the latest logged step losses, oldest first
        self.constant_since: Optional[int] = None  # the step from which they have not moved
        self.initial_norm: Optional[float] = None  # the weights' norm when training started
        self.norm: Optional[float] = None  # as of the latest check

    def update_loss(self, step: int, loss: float) -> None:
        if self.recent_losses and loss != self.recent_losses[-1]:
            self.recent_losses, self.constant_since = [], None
        if self.constant_since is None:
            self.constant_since = step
        self.recent_losses = (self.recent_losses + [loss])[-CONSTANT_LOSS_LOGS:]

    def update_norm(self, norm: float) -> None:
        if self.initial_norm is None:
            self.initial_norm = norm
        self.norm = norm

    def problems(self) -> list[str]:
        """What is broken, in words; [] when nothing is."""
        found = []
        if len(self.recent_losses) == CONSTANT_LOSS_LOGS:
            value = self.recent_losses[-1]
            trivial = " (zero: no other sample to compare with?)" if value == 0 else ""
            found.append(
                f"the training loss has been exactly {value:.6g}{trivial} at every logged step "
                f"since step {self.constant_since}: nothing is being learnt — a temperature so "
                "high the logits are flat, a learning rate of 0, a batch too small for the loss, "
                "or frozen parameters")
        norm, start = self.norm, self.initial_norm
        if norm is not None and start is not None and (
                not math.isfinite(norm) or norm > WEIGHT_GROWTH_LIMIT * max(start, 1e-12)):
            found.append(
                f"the weights have exploded: their norm is {norm:.3g}, {norm / max(start, 1e-12):.3g}"
                f" times its {start:.3g} at the start, although the loss stays finite — lower "
                "optim.lr (or use LARS/AdamW); the encoder is not usable")
        return found

    def state_dict(self) -> dict[str, Any]:
        return {"recent_losses": list(self.recent_losses), "constant_since": self.constant_since,
                "initial_norm": self.initial_norm, "norm": self.norm}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.recent_losses = [float(v) for v in state["recent_losses"]]
        self.constant_since = state["constant_since"]
        self.initial_norm, self.norm = state["initial_norm"], state["norm"]


EmbeddingBatch = Union[torch.Tensor, tuple[torch.Tensor, Optional[torch.Tensor]]]


class HealthMonitor:
    """Collects health checks and probe results during a run and judges them.

    ``check`` and ``probe`` return the records to append to ``metrics.jsonl``; ``verdict``
    summarises the latest state for the report. Everything it keeps is JSON-ready.
    """

    def __init__(
        self, probe_window: int = 4, probe_min_gain: float = 0.0, loss_min_drop: float = 0.02
    ) -> None:
        self.divergence = LossProbeDivergence(probe_window, probe_min_gain, loss_min_drop)
        self.signal = TrainingSignal()
        self.latest: dict[str, dict[str, Any]] = {}  # embedding name → its latest health record
        self.divergence_message: Optional[str] = None  # as of the latest probe

    def check(self, epoch: int, step: int, embeddings: dict[str, EmbeddingBatch]) -> list[dict]:
        """Health records for each named embedding batch.

        ``embeddings`` maps a name ("encoder", "projector") to ``(z, z_pair)``, where ``z_pair``
        holds a second view of the same inputs (for alignment) or None; a bare tensor means no pair.
        """
        records = []
        for name, batch in embeddings.items():
            z, z_pair = (batch, None) if isinstance(batch, torch.Tensor) else batch
            metrics = health_metrics(z, z_pair)
            record = {
                "kind": "health",
                "epoch": epoch,
                "step": step,
                "embedding": name,
                **metrics,
                "warnings": collapse_warnings(metrics),
            }
            records.append(record)
            # The spectrum is for plots; the verdict only needs the figures and warnings.
            self.latest[name] = {k: v for k, v in record.items() if k != "spectrum"}
        return records

    def step_loss(self, step: int, value: float) -> None:
        """Record a logged training-step loss (for :class:`TrainingSignal`)."""
        self.signal.update_loss(step, value)

    def weight_norm(self, norm: float) -> None:
        """Record the trained weights' norm (the first call: at the start of training)."""
        self.signal.update_norm(norm)

    def loss(self, epoch: int, value: float) -> None:
        """Record the mean training loss of ``epoch`` (before that epoch's probe)."""
        self.divergence.update_loss(epoch, value)

    def probe(self, epoch: int, step: int, accuracy: float) -> list[dict]:
        """Record a k-NN probe accuracy; returns the probe record and any divergence warning."""
        self.divergence.update_probe(epoch, accuracy)
        records: list[dict] = [
            {"kind": "probe", "epoch": epoch, "step": step, "knn_top1": float(accuracy)}
        ]
        self.divergence_message = self.divergence.warning()
        if self.divergence_message is not None:
            records.append(
                {
                    "kind": "warning",
                    "epoch": epoch,
                    "step": step,
                    "source": "loss_probe_divergence",
                    "message": self.divergence_message,
                }
            )
        return records

    def verdict(self) -> dict[str, Any]:
        """``{"status", "messages"}`` from the latest checks.

        status is "unhealthy" when the training signal is broken (a loss that does not move,
        exploding weights), else "collapsed" when the latest check of any embedding warns, else
        "stalled" when the latest probe shows the loss/probe divergence, else "healthy" — or
        "unknown" when no health check or probe has been recorded at all.
        """
        broken = self.signal.problems()
        if broken:
            return {"status": "unhealthy", "messages": broken}
        collapse = [
            f"{name}: {warning}" for name, rec in self.latest.items() for warning in rec["warnings"]
        ]
        stalled = [self.divergence_message] if self.divergence_message else []
        if collapse:
            return {"status": "collapsed", "messages": collapse + stalled}
        if stalled:
            return {"status": "stalled", "messages": stalled}
        if not self.latest and not self.divergence.probes:
            return {"status": "unknown", "messages": ["no health check or probe was recorded"]}
        summary = [
            f"{name} (epoch {rec['epoch']}): effective rank {rec['effective_rank']:.1f} of "
            f"{rec['dim']} dims, std x sqrt(dim) {rec['embedding_std_x_sqrt_dim']:.2f}; no sign "
            "of collapse"
            for name, rec in self.latest.items()
        ]
        return {"status": "healthy", "messages": summary}

    def state_dict(self) -> dict[str, Any]:
        """History to save in a checkpoint (JSON-ready)."""
        return {
            "divergence": self.divergence.state_dict(),
            "latest": self.latest,
            "divergence_message": self.divergence_message,
            "signal": self.signal.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved, so a resumed run keeps its history."""
        self.divergence.load_state_dict(state["divergence"])
        self.latest = {name: dict(rec) for name, rec in state["latest"].items()}
        self.divergence_message = state["divergence_message"]
        if "signal" in state:  # checkpoints from before it was watched start it afresh
            self.signal.load_state_dict(state["signal"])
