"""Settings of the model and of every trainer command, with their defaults and choices (section 5 of
the paper for the recipe). Plain dataclasses: importing them costs nothing (no torch)."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace

from imgprep.config import SEED_MIN, Settings, flag, setting
from imgprep.constants import PCA_LIGHTING_STD
from imgprep.errors import ImgprepError
from imgprep.loader_base import BACKENDS, NORMALIZE, LoaderSettings

__all__ = [
    "CONV_LAYERS",
    "ACTIVATIONS",
    "INIT_NAMES",
    "EXPERIMENT_NAMES",
    "AlexNetConfig",
    "ModelSettings",
    "TrainConfig",
    "EvalConfig",
    "ExperimentConfig",
    "TrainBenchConfig",
    "DemoConfig",
]

CONV_LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5")
ACTIVATIONS = ("relu", "tanh")  # section 3.1 compares the two
# paper: N(0, 0.01) weights, biases 1 in conv2/4/5 and fc6/7 (section 5); kaiming: He-normal, zero biases
INIT_NAMES = ("paper", "kaiming")
NORMALIZE_CHOICES = ("auto", *NORMALIZE)
LR_SCALINGS = ("none", "linear")
# What `train --resume` lets change: how the run is executed, how long, how it logs; never the
# recipe, the data order or the model. `data` may move (its classes and size are checked).
RESUME_MAY_CHANGE = (
    "data",
    "run_dir",
    "epochs",
    "log_every",
    "checkpoint_every",
    "devices",
    "compile",
    *(f.name for f in fields(LoaderSettings)),  # backend, workers, on_corrupt, prefetch, hw_decoder_load
)


def may_change() -> str:
    """The settings `--resume` lets change, as a user types them."""
    return ", ".join("DATA" if k == "data" else flag(k) for k in RESUME_MAY_CHANGE if k != "run_dir")


REFERENCE_BATCH = 128  # the paper's batch (section 5): the lr given is the lr at this batch
# the reviewer's open questions, each a series of trainings (`imgprep experiment NAME`)
EXPERIMENT_NAMES = (
    "ablate-conv",
    "dropout",
    "batch-momentum",
    "activation",
)  # auto: the one that fits the init (runtime.AUTO_NORMALIZE)


@dataclass(frozen=True, kw_only=True)
class ModelSettings(Settings):
    """The architecture switches a user chooses, declared once: `train` and `bench train` inherit
    them (and so have them as options); `model_config` makes the AlexNetConfig of a dataset."""

    width_mult: float = setting(1.0, "Model: width multiplier of every layer.", min=0, min_open=True)
    dropout: float = setting(0.5, "Model: dropout of fc6 and fc7.", min=0, max=1, max_open=True)
    activation: str = setting("relu", "Model: non-linearity.", choices=ACTIVATIONS)
    remove: tuple[str, ...] = setting(
        help="Model: leave out a conv layer (repeatable).", choices=CONV_LAYERS, default_factory=tuple
    )

    def model_config(self, num_classes: int) -> AlexNetConfig:
        """The architecture for `num_classes` classes with these switches."""
        return AlexNetConfig(num_classes, self.width_mult, self.dropout, self.activation, tuple(self.remove))


def _model_default(name: str):
    return next(f.default for f in fields(ModelSettings) if f.name == name)


@dataclass(frozen=True)
class AlexNetConfig:
    """The architecture of one model (its classes and `ModelSettings`' switches, whose defaults
    and bounds it takes); saved in checkpoints and compared on resume."""

    num_classes: int = 1000
    width_mult: float = _model_default("width_mult")
    dropout: float = _model_default("dropout")
    activation: str = _model_default("activation")
    remove: tuple[str, ...] = ()  # conv layers left out (ablation)

    def width(self, n: int) -> int:
        return max(1, int(round(n * self.width_mult)))

    def validate(self) -> None:
        """ValueError where a switch is outside `ModelSettings`' declaration of it (checked there,
        from the same `setting` metadata as the CLI's)."""
        try:
            ModelSettings(width_mult=self.width_mult, dropout=self.dropout, activation=self.activation,
                          remove=tuple(self.remove))  # fmt: skip
        except ImgprepError as exc:
            raise ValueError(str(exc)) from None
        if not isinstance(self.num_classes, int) or self.num_classes < 1:
            raise ValueError(f"num_classes {self.num_classes!r}: must be a whole number >= 1")


@dataclass(frozen=True)
class TrainConfig(ModelSettings, LoaderSettings):
    """Settings of one training run; saved in RUN_DIR/config.json and in every checkpoint."""

    data: str
    run_dir: str
    epochs: int = setting(90, "Epochs to train.", min=1)
    batch_size: int = setting(128, "Global batch size (divided over DDP ranks).", min=1)
    lr: float = setting(0.01, "Learning rate (at batch 128 with --lr-scaling linear).", min=0, min_open=True)
    lr_scaling: str = setting(
        "none",
        "linear: lr x batch / 128 (Goyal et al. 2017), for larger batches than the paper's.",
        choices=LR_SCALINGS,
    )
    warmup_epochs: int = setting(
        0, "Epochs over which the lr rises linearly from near 0 to its value (with larger batches).", min=0
    )
    momentum: float = setting(0.9, "SGD momentum.", min=0, max=1)
    weight_decay: float = setting(5e-4, "Weight decay.", min=0)
    lr_patience: int = setting(1, "Epochs without a better validation error before the lr is divided by 10.", min=0)
    lr_drops: int = setting(3, "At most this many lr drops.", min=0)
    init: str = setting("paper", "Initialisation: the paper's, or He-normal for small runs.", choices=INIT_NAMES)
    devices: str = setting("auto", "auto, cpu, cuda:0, or cuda:0,cuda:1 (tower A, tower B: the paper's two-GPU split).")
    seed: int = setting(0, "Seed of the weights, the data order and the augmentation.", min=SEED_MIN)
    normalize: str = setting(
        "auto",
        "Pixel normalization (auto: mean image for the paper's init, also divided by the std for He init).",
        choices=NORMALIZE_CHOICES,
    )
    lighting_std: float = setting(PCA_LIGHTING_STD, "Std of the PCA lighting coefficients (0: off).", min=0)
    bf16: bool = setting(True, "bf16 autocast on a GPU.")
    channels_last: bool = setting(True, "channels_last memory format on a GPU.")
    compile: bool | None = setting(
        None, "torch.compile the model, with CUDA graphs on one GPU [default: on for CUDA, off on the CPU]."
    )
    steps_per_epoch: int = setting(0, "Cap batches per epoch (0: all).", min=0)
    log_every: int = setting(10, "Steps between lines of metrics.jsonl.", min=1)
    checkpoint_every: int = setting(
        0,
        "Also checkpoint every N steps, inside epochs (0: at each epoch's end, and on SIGTERM where it stands).",
        min=0,
    )

    @property
    def base_lr(self) -> float:
        """The lr after warm-up: `lr`, scaled by batch / 128 with linear scaling."""
        return self.lr * self.batch_size / REFERENCE_BATCH if self.lr_scaling == "linear" else self.lr


@dataclass(frozen=True)
class EvalConfig(LoaderSettings):
    """Settings of `imgprep eval`: a run's last checkpoint on a dataset's validation split."""

    run_dir: str
    data: str
    ten_crop: bool = setting(False, "Average the softmax over the paper's ten views.")
    batch_size: int = setting(64, "Batch size (at most the split's size).", min=1)
    devices: str = setting("auto", "auto, cpu, cuda:0, or cuda:0,cuda:1 (tower A, tower B).")


@dataclass(frozen=True)
class ExperimentConfig(LoaderSettings):
    """Shared settings of an experiment series (reduced scale by default; `full` = the recipe)."""

    data: str
    out: str  # results folder; the runs are kept in out/runs/
    epochs: int = setting(8, "Epochs per run.", min=1)
    width_mult: float = setting(0.25, "Width multiplier of the network.", min=0, min_open=True)
    batch_size: int = setting(64, "Batch size.", min=1)
    lr: float = setting(0.01, "Learning rate (the reference for the linear scaling rule).", min=0, min_open=True)
    init: str = setting("kaiming", "Initialisation.", choices=INIT_NAMES)
    seed: int = setting(0, "Seed of the first run of each cell; the others take seed + 1, seed + 2, ...", min=SEED_MIN)
    seeds: int = setting(3, "Runs per cell, each with its own seed (results show mean +- std).", min=1)
    steps_per_epoch: int = setting(0, "Cap batches per epoch (0: all).", min=0)
    full: bool = setting(False, "The paper's recipe: width 1, 90 epochs, batch 128, paper init.")
    dropouts: tuple[float, ...] = setting((0.0, 0.25, 0.5, 0.75), "dropout: the rates.")
    batch_sizes: tuple[int, ...] = setting((32, 64, 128), "batch-momentum: the batch sizes.")
    momenta: tuple[float, ...] = setting((0.0, 0.5, 0.9), "batch-momentum: the momenta.")
    reference_batch: int = setting(128, "batch-momentum: lr = lr * batch / this.", min=1)
    target_error: float = setting(0.25, "activation: training top-1 error to reach.", min=0, max=1)

    def resolved(self) -> ExperimentConfig:
        if self.full:
            return replace(self, epochs=90, width_mult=1.0, batch_size=128, init="paper", full=False)
        return self

    def train_config(self, name: str, **kw) -> TrainConfig:
        return TrainConfig(
            self.data,
            os.path.join(self.out, "runs", name),
            epochs=self.epochs,
            batch_size=kw.pop("batch_size", self.batch_size),
            lr=kw.pop("lr", self.lr),
            init=self.init,
            width_mult=self.width_mult,
            seed=kw.pop("seed", self.seed),
            steps_per_epoch=self.steps_per_epoch,
            lr_patience=2,
            **{**self.loader_settings(), **kw},
        )


@dataclass(frozen=True)
class TrainBenchConfig(ModelSettings, LoaderSettings):
    """Settings of `imgprep bench train`."""

    data: str
    batch_size: int = setting(128, "Batch size.", min=1)
    steps: int = setting(5, "Timed steps per figure.", min=1)
    repeats: int = setting(3, "Runs per figure (median and spread reported).", min=1)
    compile: bool | None = setting(
        None, "torch.compile the model as `train` does [default: on for CUDA, off on the CPU]."
    )
    peak_tflops: float | None = setting(
        None,
        "The device's peak dense bf16 TFLOPS for the MFU [default: from a table of known GPUs: H200, H100, A100, L4].",
        min=0,
        min_open=True,
    )
    placements: tuple[str, ...] = setting(
        (), "Placements separated by ';', e.g. 'cpu;cuda:0;cuda:0,cuda:1' [default: every available].", sep=";"
    )


@dataclass(frozen=True)
class DemoConfig(Settings):
    """Settings of `imgprep demo`."""

    out: str = setting("demo-out", "Working folder (replaced).", path=True)
    classes: int = setting(10, "Classes to synthesize.", min=2)
    per_class: int = setting(100, "Training images per class.", min=1)
    val_per_class: int | None = setting(
        None, "Validation images per class [default: per-class / 5, at least 1].", min=1
    )
    epochs: int = setting(12, "Training epochs.", min=1)
    width_mult: float = setting(0.25, "Width multiplier of the network.", min=0, min_open=True)
    batch_size: int = setting(64, "Batch size.", min=1)
    seed: int = setting(0, "Seed of the data and the run.", min=SEED_MIN)
    workers: int = setting(0, "Worker processes (0: all cores).", min=0)
    backend: str = setting("auto", "Loader backend (auto: DALI where installed, else torch).", choices=BACKENDS)
