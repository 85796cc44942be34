"""Training parameters: frozen dataclasses whose defaults are the documented defaults.

``configs/train.yaml`` repeats these defaults with comments (a test keeps the two equal).
Patch sizes are *not* here: they come from the index manifests (``STORE/index``), so the
trainer can never disagree with what the indexer cut. This module imports no TensorFlow.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from dataset.common.configio import check_patch_fits_depth, load_config
from dataset.contract.run import PER_SAMPLE_NORMS

# The trainer's name for the one patch-versus-depth check (dataset.common.configio).
check_patch_size = check_patch_fits_depth

LOSSES = ("generalized_dice", "cross_entropy", "dice_cross_entropy")
REDUCTIONS = ("batch", "sample")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
STRATEGIES = ("auto", "mirrored", "none")
# Refused rather than offered: under MultiWorkerMirroredStrategy every worker runs the callbacks, so
# each would write RUN_DIR's checkpoints, state, history and logs over the others'. A fold trains in
# about 35 minutes on one H200 (docs/explanation/design-facts.md): several folds on several machines
# (`--fold K` each) scale without it.
MULTIWORKER_REFUSAL = (
    "strategy: multiworker is not supported (every worker would write RUN_DIR over the others); "
    "train one fold per machine with --fold K, or use mirrored over one machine's GPUs"
)
JIT_COMPILE = ("auto", True, False)
NORMS = ("batch", "batch_renorm", *PER_SAMPLE_NORMS)  # of training.model.build_unet
ACTIVATIONS = ("relu", "leaky_relu")
OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("plateau", "poly")


@dataclass(frozen=True)
class ModelConfig:
    """3D U-Net shape (see ``training.model.build_unet``)."""

    depth: int = 4  # number of 2x poolings; the one place the depth is set (index patches must suit it)
    base_filters: int = 16  # filters of the first level, doubled per level (16: 5.6 M params)
    norm: str = "batch"  # batch | batch_renorm | instance (per sample and channel) | group (norm_groups per sample)
    norm_groups: int = 8  # groups of norm: group; must divide base_filters
    activation: str = "relu"  # relu | leaky_relu (slope 0.01, nnU-Net's)
    # extra softmax heads on decoder levels 1..depth-2, loss weights halving per level (nnU-Net's);
    # predict, export and --init-from use the full-resolution head only
    deep_supervision: bool = False

    def __post_init__(self) -> None:
        if not 1 <= self.depth <= 6:
            raise ValueError(f"model.depth must be in 1..6, got {self.depth}")
        if self.base_filters < 1:
            raise ValueError(f"model.base_filters must be >= 1, got {self.base_filters}")
        if self.norm not in NORMS:
            raise ValueError(f"model.norm must be one of {NORMS}, got {self.norm!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"model.activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        if self.deep_supervision and self.depth < 3:
            # the lowest decoder level is dropped (nnU-Net's rule), so depth 2 leaves no extra head
            raise ValueError(f"model.deep_supervision needs model.depth >= 3, got {self.depth}")
        if self.norm == "group" and (self.norm_groups < 1 or self.base_filters % self.norm_groups):
            # every level's filters are base_filters * 2**level, so dividing the first suffices
            raise ValueError(f"model.norm_groups must divide base_filters={self.base_filters}, got {self.norm_groups}")

    @property
    def per_sample_norm(self) -> bool:
        """Instance or group norm: statistics over each window, so it validates and predicts on
        windows of its training patch (``InputContract.default_window_zyx``)."""
        return self.norm in PER_SAMPLE_NORMS


@dataclass(frozen=True)
class LossConfig:
    """Which loss, and the Generalized Dice options (see ``training.losses``)."""

    name: str = "generalized_dice"  # generalized_dice | cross_entropy | dice_cross_entropy
    reduction: str = "batch"  # batch: one Dice over the whole batch; sample: mean of per-patch
    exclude_background: bool = False
    smooth_nr: float = 1e-5
    smooth_dr: float = 1e-5
    ce_weight: float = 1.0  # weight of cross-entropy in dice_cross_entropy

    def __post_init__(self) -> None:
        if self.name not in LOSSES:
            raise ValueError(f"loss.name must be one of {LOSSES}, got {self.name!r}")
        if self.reduction not in REDUCTIONS:
            raise ValueError(f"loss.reduction must be one of {REDUCTIONS}, got {self.reduction!r}")
        for key in ("smooth_nr", "smooth_dr", "ce_weight"):
            value = getattr(self, key)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"loss.{key} must be >= 0, got {value}")


@dataclass(frozen=True)
class AugmentConfig:
    """Online transforms of training patches (validation is never augmented)."""

    flip_axes: tuple[int, ...] = (1, 2)  # axes of (z, y, x): 1 anterior-posterior, 2 left-right
    flip_probability: float = 0.5  # per axis
    noise_probability: float = 0.2
    noise_std: float = 0.02  # Gaussian noise sigma, intensity units ([0, 1] scale)
    offset_probability: float = 0.2
    offset_max: float = 0.05  # global offset drawn uniformly in [-offset_max, offset_max]
    # in-plane (y, x) rotation and scaling of image and label together (training.augment);
    # probabilities 0 here: chosen by bench/recipe.py (docs/how-to/train.md#training-recipes)
    rotation_probability: float = 0.0
    rotation_max_degrees: float = 15.0  # angle uniform in [-max, max]
    scale_probability: float = 0.0
    scale_range: tuple[float, float] = (0.85, 1.25)  # magnification, uniform in the range
    gamma_probability: float = 0.0
    gamma_range: tuple[float, float] = (0.7, 1.5)  # half the draws below 1, half above (nnU-Net's)
    blur_probability: float = 0.0
    blur_sigma: tuple[float, float] = (0.5, 1.0)  # Gaussian sigma in voxels (1 mm)
    lowres_probability: float = 0.0
    lowres_zoom: tuple[float, float] = (0.5, 1.0)  # fraction of every edge kept before scaling back

    def __post_init__(self) -> None:
        if any(a not in (0, 1, 2) for a in self.flip_axes) or len(set(self.flip_axes)) != len(self.flip_axes):
            raise ValueError(f"augment.flip_axes must be distinct axes among 0, 1, 2, got {self.flip_axes}")
        if not (math.isfinite(self.rotation_max_degrees) and 0 <= self.rotation_max_degrees <= 180):
            raise ValueError(f"augment.rotation_max_degrees must be in [0, 180], got {self.rotation_max_degrees}")
        for key, low, high in (
            ("scale_range", 0.0, math.inf),
            ("gamma_range", 0.0, math.inf),
            ("blur_sigma", 0.0, 5.0),
            ("lowres_zoom", 0.0, 1.0),
        ):
            pair = getattr(self, key)
            if len(pair) != 2 or not (low < pair[0] <= pair[1] <= high):
                raise ValueError(f"augment.{key} must be two numbers lo <= hi in ({low}, {high}], got {pair}")
        if not self.gamma_range[0] <= 1.0 <= self.gamma_range[1]:
            raise ValueError(f"augment.gamma_range must hold 1.0, got {self.gamma_range}")
        for key in (
            "flip_probability",
            "noise_probability",
            "offset_probability",
            "rotation_probability",
            "scale_probability",
            "gamma_probability",
            "blur_probability",
            "lowres_probability",
        ):
            value = getattr(self, key)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"augment.{key} must be in [0, 1], got {value}")
        for key in ("noise_std", "offset_max"):
            value = getattr(self, key)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"augment.{key} must be >= 0, got {value}")


@dataclass(frozen=True)
class TrainConfig:
    """One training run (``training.run.train``)."""

    seed: int = 0
    epochs: int = 100
    steps_per_epoch: int = 250  # batches per epoch, drawn from the infinite shuffled stream
    batch_size: int = 2  # per replica; the global batch is batch_size * replicas
    val_batch_size: int = 1  # validation patches are 256x256x64
    learning_rate: float = 1e-3  # the initial learning rate (nnU-Net's SGD: 0.01)
    optimizer: str = "adam"  # adam | sgd (Nesterov momentum, as nnU-Net)
    momentum: float = 0.99  # sgd only (nnU-Net's value)
    weight_decay: float = 0.0  # decoupled weight decay of either optimizer (nnU-Net's SGD: 3e-5)
    schedule: str = "plateau"  # plateau: ReduceLROnPlateau on val_loss | poly: lr0 * (1 - epoch/epochs)**0.9
    lr_factor: float = 0.5  # plateau: ReduceLROnPlateau on val_loss
    lr_patience: int = 10
    min_learning_rate: float = 1e-6
    early_stopping_patience: int = 0  # epochs without val pancreas Dice gain; 0 = off
    precision: str = "float32"  # float32 | mixed_float16 | mixed_bfloat16
    strategy: str = "auto"  # auto | mirrored | none
    jit_compile: bool | str = "auto"  # XLA: auto (on with a GPU, no strategy, not deterministic) | true | false
    deterministic: bool = False  # tf.config.experimental.enable_op_determinism(): reproducible GPU runs, slower
    image_patches: int = 2  # fixed patches per split drawn to TensorBoard each epoch
    input_threads: int = 0  # tf.data thread pool; 0 = auto: half the CPU cores, at least 1
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        for key in ("epochs", "steps_per_epoch", "batch_size", "val_batch_size"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
        for key in ("lr_patience", "early_stopping_patience", "image_patches", "input_threads"):
            if getattr(self, key) < 0:
                raise ValueError(f"{key} must be >= 0, got {getattr(self, key)}")
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if not 0 < self.lr_factor < 1:
            raise ValueError(f"lr_factor must be in (0, 1), got {self.lr_factor}")
        if not 0 <= self.min_learning_rate <= self.learning_rate:
            raise ValueError(
                f"min_learning_rate must be in [0, learning_rate={self.learning_rate}], got {self.min_learning_rate}"
            )
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.strategy == "multiworker":
            raise ValueError(MULTIWORKER_REFUSAL)
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        if self.jit_compile not in JIT_COMPILE or not isinstance(self.jit_compile, (bool, str)):
            raise ValueError(f"jit_compile must be auto, true or false, got {self.jit_compile!r}")
        if self.jit_compile is True and self.deterministic:
            # Keras turns XLA off under op determinism, and the U-Net's GPU max-pool gradient
            # has no deterministic XLA kernel (keras-team/keras#20315)
            raise ValueError(
                "jit_compile: true cannot be combined with deterministic: true (XLA has no "
                "deterministic GPU max-pool gradient); use jit_compile: auto or false"
            )


def load_train_config(path: str | Path | None) -> TrainConfig:
    """``configs/train.yaml`` (or any YAML) -> validated config; ``None`` gives the defaults."""
    return load_config(TrainConfig, path)
