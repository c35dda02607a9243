"""DINO (Caron et al. 2021): self-distillation with no labels.

student:  every view  → encoder → head → logits s          (trained)
teacher:  global views → EMA(encoder → head) → logits t    (no gradient; updated in ``after_step``)

The head is a 3-layer MLP (GELU, as in the paper's code; BatchNorm only where the encoder has
BatchNorm, see ``DINOOptions``) to a bottleneck, L2-normalised, then a weight-normalised linear
layer onto K prototypes (its rows have unit norm, the paper's ``norm_last_layer``). The student
learns to predict, from every view, the teacher's centred and sharpened distribution over the
prototypes of each *other* global view (``selfsup.losses.dino_loss``). Local crops reach only the
student, which is what makes the task "local-to-global".

Evaluation uses the teacher: ``export_encoder`` (what the health monitor, the online k-NN probe and
``encoder.safetensors`` see) is the teacher's backbone, as in the paper, whose momentum teacher
gives better features than the student throughout training (§5.2, Fig. 6) and is the network its
k-NN, linear and attention results use. The teacher's BatchNorm running statistics are its own:
the EMA moves its weights only, and its forward passes on the global views (in training mode, as in
the paper's code) keep its statistics; copying the student's would bring in the student's
statistics over the small local crops too.

State that must survive a resume lives in the state dict: the centre and the current teacher
temperature are buffers, the number of steps taken is the module's extra state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.errors import ConfigError, DataError
from selfsup import heads
from selfsup.heads import MLPHead
from selfsup.losses import dino_loss, update_center
from selfsup.methods.base import BuildContext, Method, NO_CONTEXT, StepOutput
from selfsup.momentum import MomentumTarget
from selfsup.registry import METHODS


@dataclass
class DINOOptions:
    """DINO's head, temperatures and schedules.

    Head: the paper's 2048-wide hidden layers and 256-d bottleneck are used for encoders from 384-d
    (ViT-S) to 2048-d (ResNet-50), so they fit 256–512-d encoders unchanged. K = 65536 prototypes
    serves ImageNet's 1.3M images; 4096 still gives a 10-class, 60k-image set like Fashion-MNIST
    hundreds of prototypes per class, at 1/16 of the cost of the last layer and its logits.

    Temperatures: the student's 0.1 and the teacher's 0.04 are the paper's defaults; it raises the
    teacher's to 0.07 for some models, but only after a warm-up from 0.04 (0.07 from the start is
    unstable), which ``teacher_temp`` and ``warmup_teacher_temp_fraction`` (its 30 of 100 epochs)
    allow. On 8×8 digits the teacher stays close to uniform even at 0.04: with the small CNN (K =
    1024, 1000 steps) its mean per-image entropy fell only from 6.55 to 6.41 nats against log K =
    6.93, while the entropy of its mean output stayed at 6.76 (every prototype in use, no collapse
    onto one); so the lower value is the safer default for small images.

    Momentum: the paper's 0.996 suits ImageNet's ~125k steps of 100 epochs; 100 Fashion-MNIST
    epochs at batch 512 are ~12k steps, and 0.99 (an averaging horizon of 1/(1 − m) = 100 steps,
    about one epoch) keeps the teacher's lag a similarly small share of the run.

    freeze_last_layer_steps: the prototypes get no update for this many first steps (the paper
    freezes them for the first epoch to stabilise the start; 0 turns it off).

    head_batch_norm: a BatchNorm after each hidden Linear of the head. Unset (the default): only
    where the encoder itself has BatchNorm. The paper runs its ViTs entirely BatchNorm-free, head
    included (§3.1), and its code's default is a head without BatchNorm (``use_bn_in_head=False``).
    On a BatchNorm CNN that head failed here: with the small CNN on digits (K = 1024) the
    teacher's output became exactly uniform for every image (entropy log K) within 150 steps and
    stayed so to step 1000, and the student's k-NN accuracy fell to 0.61; with BatchNorm in the
    head the outputs stayed input-dependent (0.35 nats of information about the image after 1000
    steps) and the k-NN accuracies were 0.84-0.86. Our reading: the CNN's ReLU features share a
    large common component, which the head's BatchNorm removes, whereas a BatchNorm-free head with
    its small initial weights points every image's bottleneck the same way. true / false force it.
    head_activation: GELU, the paper's code's; "relu" with head_batch_norm=true gives the
    SimCLR-style head this library used before.
    """

    proj_hidden_dim: int = 2048
    proj_dim: int = 256  # the bottleneck before the prototypes
    proj_layers: int = 3
    num_prototypes: int = 4096
    student_temp: float = 0.1
    teacher_temp: float = 0.04  # reached at the end of the warm-up
    warmup_teacher_temp: float = 0.04
    warmup_teacher_temp_fraction: float = 0.3  # of all training steps
    center_momentum: float = 0.9
    base_momentum: float = 0.99  # teacher EMA, rises to 1 on a cosine schedule
    freeze_last_layer_steps: int = 0
    head_batch_norm: bool | None = None  # None: BatchNorm in the head iff the encoder has it
    head_activation: str = "gelu"


def teacher_temp_at(step: int, total_steps: int, start: float, end: float,
                    warmup_fraction: float) -> float:
    """Teacher temperature at ``step``: linear from ``start`` to ``end`` over the first
    ``warmup_fraction · total_steps`` steps, then ``end``."""
    warmup_steps = math.ceil(warmup_fraction * total_steps)
    if step >= warmup_steps:
        return end
    return start + (end - start) * step / warmup_steps


class DINOHead(nn.Module):
    """MLP → bottleneck → L2-norm → weight-normalised linear (unit-norm rows) onto K prototypes.

    With unit-norm prototypes and a unit-norm input the logits are cosines in [−1, 1]: the
    weight-norm layer of the paper with its gain fixed at 1. The MLP's Linear layers start from a
    normal of std 0.02 with zero biases, the paper's code's initialisation (its ``trunc_normal_``
    cuts at ±2, i.e. ±100 std, which changes nothing).
    """

    def __init__(self, in_dim: int, hidden_dim: int, bottleneck_dim: int, num_prototypes: int,
                 num_layers: int = 3, batch_norm: bool = False, activation: str = "gelu") -> None:
        super().__init__()
        self.mlp = MLPHead(in_dim, hidden_dim, bottleneck_dim, num_layers, batch_norm=batch_norm,
                           activation=activation)
        for layer in self.mlp.modules():
            if isinstance(layer, nn.Linear):
                nn.init.trunc_normal_(layer.weight, std=0.02)
                if layer.bias is not None:
                    nn.init.zeros_(layer.bias)
        self.prototypes = nn.Linear(bottleneck_dim, num_prototypes, bias=False)
        self.freeze_prototypes = False  # set by DINO.after_step during the first steps

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        """Prototype logits of bottleneck features ``z``."""
        weight = self.prototypes.weight
        if self.freeze_prototypes:
            # No gradient reaches the prototypes, so their .grad stays None and the optimiser skips
            # them entirely (no momentum, no weight decay), as the paper's cancel_gradients does.
            weight = weight.detach()
        # float32 even under bf16 autocast: bf16 resolves cosines near 1 only to ~0.004, which the
        # teacher's temperature of 0.04 would blow up to logit steps of ~0.1
        with torch.autocast(z.device.type, enabled=False):
            return F.linear(F.normalize(z.float(), dim=1), F.normalize(weight.float(), dim=1))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.logits(self.mlp(h))


def has_batchnorm(module: nn.Module) -> bool:
    """Whether any layer of ``module`` is a BatchNorm."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


def same_size_runs(views: list[torch.Tensor]) -> list[list[torch.Tensor]]:
    """Consecutive views grouped by shape: each group goes through a network as one batch."""
    runs: list[list[torch.Tensor]] = []
    for view in views:
        if runs and runs[-1][0].shape == view.shape:
            runs[-1].append(view)
        else:
            runs.append([view])
    return runs


@METHODS.register("dino", "DINO: a student matches a momentum teacher's centred, sharpened "
                          "prototype distribution across multi-crop views")
class DINO(Method):
    Options = DINOOptions
    view_recipe = "multicrop"
    # Starting point: solo-learn's CIFAR-10 ResNet-18 recipe (lr per 256 images); not yet
    # tuned on Fashion-MNIST.
    config_defaults = {"optim": {"name": "lars", "lr": 0.3, "weight_decay": 1e-6}}
    num_global_views = 2

    compares_samples = True

    def __init__(self, encoder: nn.Module, options: DINOOptions | None = None,
                 context: BuildContext = NO_CONTEXT) -> None:
        super().__init__(encoder, context)
        self.options = o = options or DINOOptions()
        _check_options(o)
        head_batch_norm = has_batchnorm(encoder) if o.head_batch_norm is None else o.head_batch_norm
        self.head = DINOHead(encoder.out_dim, o.proj_hidden_dim, o.proj_dim, o.num_prototypes,
                             o.proj_layers, head_batch_norm, o.head_activation)
        self.teacher = MomentumTarget(self._student(), o.base_momentum, copy_buffers=False)
        self.register_buffer("center", torch.zeros(o.num_prototypes))
        # A buffer rather than a Python float: a compiled forward reads it without recompiling at
        # every warm-up step, and after_step sets it without a host-device sync.
        first_temperature = teacher_temp_at(0, 1, o.warmup_teacher_temp, o.teacher_temp,
                                            o.warmup_teacher_temp_fraction)  # any run length
        self.register_buffer("teacher_temperature", torch.tensor(first_temperature))
        self.steps_done = 0
        self.head.freeze_prototypes = o.freeze_last_layer_steps > 0

    def _student(self) -> nn.Sequential:
        """encoder → head, the network the teacher follows (built on demand so the state dict holds
        each student weight once)."""
        return nn.Sequential(self.encoder, self.head)

    def forward(self, views: list[torch.Tensor]) -> StepOutput:
        if len(views) < self.num_global_views:
            raise DataError(f"DINO needs at least {self.num_global_views} views (global views "
                            f"first), got {len(views)}; use views.recipe=multicrop")
        o = self.options
        runs = same_size_runs(views)  # the globals as one batch, the locals as another
        bottlenecks = [self.head.mlp(self.encoder(torch.cat(run))) for run in runs]
        student_logits = [logits for run, z in zip(runs, bottlenecks)
                          for logits in self.head.logits(z).chunk(len(run))]
        with torch.no_grad():
            teacher_out = self.teacher(torch.cat(views[: self.num_global_views]))
        teacher_logits = teacher_out.chunk(self.num_global_views)
        loss = dino_loss(student_logits, teacher_logits, self.center, o.student_temp,
                         self.teacher_temperature)
        if self.training:  # the centre follows training batches only
            self.center.copy_(update_center(self.center, teacher_out, o.center_momentum, self.gather))
        return StepOutput(loss=loss, embeddings=bottlenecks[0][: len(views[0])],
                          logs={"teacher_temp": self.teacher_temperature.clone(),
                                "momentum": self.teacher.momentum})

    @torch.no_grad()
    def after_step(self, step: int, total_steps: int) -> None:
        o = self.options
        self.teacher.update(self._student(), step, total_steps)
        self.steps_done = step + 1
        temperature = teacher_temp_at(self.steps_done, total_steps, o.warmup_teacher_temp,
                                      o.teacher_temp, o.warmup_teacher_temp_fraction)
        self.teacher_temperature.fill_(temperature)
        self.head.freeze_prototypes = self.steps_done < o.freeze_last_layer_steps

    @property
    def may_skip_parameters(self) -> bool:
        """True when a step can leave trainable parameters without a gradient (the prototypes
        while frozen): DDP must then look for them (``find_unused_parameters``)."""
        return self.options.freeze_last_layer_steps > 0

    def get_extra_state(self) -> dict[str, Any]:
        return {"steps_done": self.steps_done}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.steps_done = int(state["steps_done"])
        self.head.freeze_prototypes = self.steps_done < self.options.freeze_last_layer_steps

    @property
    def export_encoder(self) -> nn.Module:
        """The teacher's backbone: the network evaluated and exported (see the module docstring)."""
        return self.teacher.net[0]

    def health_embeddings(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The teacher's backbone features and its head's bottleneck."""
        backbone, head = self.teacher.net
        h = backbone(x)
        return {"encoder": h, "projector": head.mlp(h)}


def _check_options(o: DINOOptions) -> None:
    """Reject settings that would silently break training, naming the key and a fix."""
    for key in ("student_temp", "teacher_temp", "warmup_teacher_temp"):
        if not getattr(o, key) > 0:
            raise ConfigError(f"method.{key} must be > 0, got {getattr(o, key)}")
    for key in ("center_momentum", "base_momentum", "warmup_teacher_temp_fraction"):
        if not 0 <= getattr(o, key) <= 1:
            raise ConfigError(f"method.{key} must be in [0, 1], got {getattr(o, key)}")
    for key in ("proj_hidden_dim", "proj_dim", "num_prototypes"):
        if getattr(o, key) < 1:
            raise ConfigError(f"method.{key} must be ≥ 1, got {getattr(o, key)}")
    if o.head_activation not in heads.ACTIVATIONS:
        raise ConfigError(f"method.head_activation must be one of {', '.join(heads.ACTIVATIONS)}, "
                          f"got {o.head_activation!r}")
    if o.head_batch_norm not in (None, True, False):
        raise ConfigError(f"method.head_batch_norm must be true, false or unset (BatchNorm in the "
                          f"head iff the encoder has it), got {o.head_batch_norm!r}")
    if o.proj_layers < 1 or o.freeze_last_layer_steps < 0:
        raise ConfigError(f"method.proj_layers must be ≥ 1 and method.freeze_last_layer_steps ≥ 0, "
                          f"got {o.proj_layers} and {o.freeze_last_layer_steps}")
