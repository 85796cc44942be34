"""Distribution strategy, mixed precision, XLA, determinism and the compiled model they wrap.

``plan_execution`` decides from the config and the visible devices alone (nothing built or written).
See docs/how-to/train.md#what-it-runs-on and
docs/explanation/internals.md#strategy-precision-and-xla-trainingdistributepy.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import keras
import tensorflow as tf

from dataset.common.configio import ConfigError
from dataset.common.errors import PancreasError
from training import environment
from training.config import TrainConfig
from training.environment import Gpu, describe_devices
from training.losses import make_loss
from training.metrics import dice_metrics
from training.model import unet_of
from training.optimizer import make_optimizer, precision_policy

log = logging.getLogger(__name__)
STRATEGY_CLASS = {"mirrored": "MirroredStrategy"}


class NoGpuError(PancreasError, ValueError):
    """``--require-gpu`` on a machine where TensorFlow sees no GPU."""


def distributed(strategy: str, n_gpus: int) -> str | None:
    """The ``tf.distribute`` strategy ``make_strategy`` builds for this name, or ``None`` (default strategy)."""
    if strategy == "none" or (strategy == "auto" and n_gpus < 2):
        return None
    return STRATEGY_CLASS.get(strategy, "MirroredStrategy")


def resolve_jit_compile(setting: bool | str, n_gpus: int, strategy: str | None, deterministic: bool) -> bool:
    """``auto``: on with a GPU, no distribution strategy and no op determinism (module docstring)."""
    if setting == "auto":
        return n_gpus > 0 and strategy is None and not deterministic
    if setting and strategy is not None:
        raise ConfigError(
            f"jit_compile: true cannot run under {strategy} (XLA fails with tf.distribute, "
            "keras-team/keras#19005); use jit_compile: auto or false, or strategy: none"
        )
    return bool(setting)


@dataclass(frozen=True)
class ExecutionPlan:
    """What a run executes on, resolved on this machine; ``environment.json`` records it."""

    gpus: tuple[Gpu, ...]
    precision: str
    strategy: str  # the config's name
    distribution: str | None  # the tf.distribute class, None: default strategy
    replicas: int
    jit_compile: bool
    jit_setting: bool | str
    deterministic: bool

    def to_dict(self) -> dict[str, object]:
        """Everything but the GPUs (``environment.json`` lists those beside it)."""
        data = asdict(self)
        del data["gpus"]
        return data


def plan_execution(config: TrainConfig, gpus: list[Gpu] | None = None) -> ExecutionPlan:
    """Resolve devices, strategy, replicas and XLA for ``config`` on this machine (builds nothing)."""
    gpus = environment.visible_gpus() if gpus is None else gpus
    strategy = distributed(config.strategy, len(gpus))
    return ExecutionPlan(
        gpus=tuple(gpus),
        precision=config.precision,
        strategy=config.strategy,
        distribution=strategy,
        replicas=_replicas(config.strategy, strategy, len(gpus)),
        jit_compile=resolve_jit_compile(config.jit_compile, len(gpus), strategy, config.deterministic),
        jit_setting=config.jit_compile,
        deterministic=config.deterministic,
    )


def _replicas(name: str, strategy: str | None, n_gpus: int) -> int:
    if strategy is None:
        return 1
    return n_gpus or len(tf.config.list_logical_devices("CPU"))  # mirrored on a CPU host: every logical CPU


def execution_line(plan: ExecutionPlan) -> str:
    """The one line ``pancreas train`` prints before any work."""
    strategy = "default strategy" if plan.distribution is None else plan.distribution
    replicas = f"{plan.replicas} replica(s)"
    jit = "on" if plan.jit_compile else "off"
    return (
        f"devices {describe_devices(list(plan.gpus))}; precision {plan.precision}; strategy {plan.strategy}: "
        f"{strategy}, {replicas}; XLA {jit} (jit_compile {str(plan.jit_setting).lower()}); "
        f"deterministic {'on' if plan.deterministic else 'off'}"
    )


def plan_warnings(plan: ExecutionPlan) -> list[str]:
    """What the config asks for that this machine cannot give as meant (no GPU visible)."""
    if plan.gpus:
        return []
    found = []
    if plan.precision == "mixed_bfloat16":
        found.append(
            "precision mixed_bfloat16 but no GPU is visible: it runs on the CPU, faster than float32 only "
            "on CPUs with AVX-512 BF16 or AMX"
        )
    if plan.strategy in STRATEGY_CLASS:
        found.append(
            f"strategy {plan.strategy} asks for several GPUs but none is visible: "
            f"its {plan.replicas} replica(s) are CPU devices"
        )
    return found


def check_execution(config: TrainConfig, require_gpu: bool = False) -> ExecutionPlan:
    """The run's plan on this machine, or one line saying why it cannot run here.

    ``mixed_float16`` without a GPU is refused rather than warned about: TensorFlow has no
    float16 CPU kernel for MaxPool3D, so the U-Net's first step fails ("No OpKernel was
    registered to support Op 'MaxPool3D' ... T=DT_HALF", measured with TensorFlow 2.21).
    """
    plan = plan_execution(config)
    if require_gpu and not plan.gpus:
        raise NoGpuError(
            "--require-gpu: TensorFlow sees no GPU (check nvidia-smi and CUDA_VISIBLE_DEVICES; the GPU "
            "build needs `make install-gpu`; `pancreas env` lists what TensorFlow sees)"
        )
    if plan.precision == "mixed_float16" and not plan.gpus:
        raise ConfigError(
            "precision mixed_float16 needs a GPU and none is visible: TensorFlow has no float16 CPU "
            "kernel for the U-Net's MaxPool3D, so the first step would fail; use precision: float32 "
            "(or mixed_bfloat16) here"
        )
    return plan


def log_plan_warnings(plan: ExecutionPlan) -> None:
    """Each of ``plan_warnings`` as a logging WARNING (Python logging: TF_CPP_MIN_LOG_LEVEL does not hide it)."""
    for warning in plan_warnings(plan):
        log.warning(warning)


def make_strategy(name: str) -> tf.distribute.Strategy:
    """auto: mirrored over all GPUs when there are several; mirrored on a CPU-only host uses
    every logical CPU device (tests)."""
    gpus = tf.config.list_logical_devices("GPU")
    if name == "none" or (name == "auto" and len(gpus) < 2):
        return tf.distribute.get_strategy()
    if name in ("auto", "mirrored"):
        devices = gpus or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy(devices=[d.name for d in devices])
    raise ConfigError(f"unknown strategy {name!r}")


@contextlib.contextmanager
def op_determinism(enabled: bool, seed: int) -> Iterator[None]:
    """``enable_op_determinism`` for the block when ``enabled`` (seeds set first: seedless random ops
    raise under it), then back to how it was, so one run's setting does not leak into the next."""
    from tensorflow.python.framework import config as tf_config  # no public reader or undo in TF 2.21

    was_enabled = tf_config.is_op_determinism_enabled()
    if enabled:
        keras.utils.set_random_seed(seed)
        tf.config.experimental.enable_op_determinism()
    try:
        yield
    finally:
        if enabled and not was_enabled:
            tf_config.disable_op_determinism()


@contextlib.contextmanager
def execution_settings(config: TrainConfig) -> Iterator[None]:
    """The run's precision policy and op determinism, for the block."""
    with precision_policy(config.precision), op_determinism(config.deterministic, config.seed):
        yield


def jit_compile_for(config: TrainConfig) -> bool:
    """Whether this machine compiles ``config``'s model with XLA (``plan_execution``)."""
    return plan_execution(config).jit_compile


def build_compiled_model(config: TrainConfig) -> keras.Model:
    """A fresh U-Net compiled with the run's optimizer, loss, Dice metrics and XLA setting."""
    model = unet_of(config.model)
    model.compile(
        optimizer=make_optimizer(config),
        loss=make_loss(config.loss),
        metrics=dice_metrics(),
        jit_compile=jit_compile_for(config),
    )
    return model
