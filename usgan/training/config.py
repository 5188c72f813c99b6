"""The trainer's typed config: TrainConfig and its parts, loaded from YAML, with `--set KEY=VALUE` overrides."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import yaml

from usgan.config import ConfigError, load_config, to_mapping
from usgan.model import DiscriminatorConfig, GeneratorConfig

AmpMode = Literal["none", "bf16", "fp16"]
TargetMode = Literal["permute", "random"]


@dataclass(frozen=True)
class ModelConfig:
    generator: GeneratorConfig = GeneratorConfig()
    image_size: int = 128
    d_conv_dim: int = 64
    d_strided_layers: int = 6

    def __post_init__(self) -> None:
        if self.image_size % 4 or self.image_size % 2**self.d_strided_layers:
            raise ConfigError(
                f"model.image_size {self.image_size} must be divisible by 4 and by 2**d_strided_layers "
                f"({2**self.d_strided_layers})"
            )

    def discriminator(self) -> DiscriminatorConfig:
        return DiscriminatorConfig(
            image_size=self.image_size, conv_dim=self.d_conv_dim,
            num_expressions=self.generator.num_expressions, strided_layers=self.d_strided_layers,
        )


@dataclass(frozen=True)
class LossConfig:
    """Loss weights; the defaults are the paper's (StarGAN's)."""

    lambda_gp: float = 10.0
    lambda_cls: float = 1.0
    lambda_rec: float = 1.0
    # Paired guidance (ours, off in the paper's recipe): for samples whose target is the expression of another photo
    # of the same person, an L1 between the low-pass (avg-pooled by pair_pool) output and that photo. Pooling keeps
    # the coarse expression change (mouth, brows) and ignores the small misalignment between two photos.
    lambda_pair: float = 0.0
    pair_pool: int = 4
    # Residual smoothness (ours, off in the paper): L1 of the high-pass of the change G makes (fake - real minus its
    # 5-tap binomial blur). It leaves broad shape changes (a smile, lowered brows) almost free and penalises the
    # speckle and stripes with which a generator fools a small critic's expression head (residual_high_pass).
    lambda_smooth: float = 0.0
    # Residual colourfulness (ours, off in the paper): L1 of the change's deviation from grey (each channel minus
    # the mean of the three). Real expression changes are mostly shading (chroma ~1/6 of |change| between two TFEID
    # photos of one person); a generator's stray colour (pink cheeks, yellow eyes, purple bands) is not.
    lambda_chroma: float = 0.0

    def __post_init__(self) -> None:
        if self.pair_pool < 1:
            raise ConfigError(f"loss.pair_pool must be >= 1, got {self.pair_pool}")
        for name in ("lambda_gp", "lambda_cls", "lambda_rec", "lambda_pair", "lambda_smooth", "lambda_chroma"):
            if getattr(self, name) < 0:
                raise ConfigError(f"loss.{name} must be >= 0, got {getattr(self, name)}")


@dataclass(frozen=True)
class OptimConfig:
    """Adam for G and D; one G update per n_critic D updates; LR decays linearly to 0 from decay_start."""

    g_lr: float = 1e-4
    d_lr: float = 1e-4
    betas: tuple[float, float] = (0.5, 0.999)
    n_critic: int = 5
    batch_size: int = 8
    total_steps: int = 200_000
    decay_start: int = 100_000
    # For fine-tuning (--init-generator): the first warmup_steps steps update D only, so a fresh critic learns the
    # given generator's fakes before G follows it; then G's LR ramps linearly from 0 over another warmup_steps.
    # Without it, a fresh critic's arbitrary gradients wreck a trained G within ~100 updates (checkerboards).
    warmup_steps: int = 0

    def __post_init__(self) -> None:
        for name in ("g_lr", "d_lr"):
            if not isinstance(getattr(self, name), (int, float)):  # YAML 1.1 reads 2e-4 (no dot) as a string
                raise ConfigError(f"optim.{name} must be a number, got {getattr(self, name)!r} (write 2.0e-4)")
        if self.n_critic < 1 or self.batch_size < 1 or self.total_steps < 1:
            raise ConfigError("optim.n_critic, optim.batch_size and optim.total_steps must be >= 1")
        if self.warmup_steps < 0:
            raise ConfigError(f"optim.warmup_steps must be >= 0, got {self.warmup_steps}")
        if not 0 <= self.decay_start <= self.total_steps:
            raise ConfigError(f"optim.decay_start {self.decay_start} must be in [0, total_steps {self.total_steps}]")
        if len(self.betas) != 2:
            raise ConfigError(f"optim.betas must be two numbers, got {list(self.betas)}")


@dataclass(frozen=True)
class DataConfig:
    """Where validation images come from and how the loader runs."""

    name: str = ""  # recorded in the generator file; defaults to the data directory's name
    val_identities: tuple[str, ...] = ()  # explicit validation identities; overrides val_identity_count
    val_identity_count: int = 2  # else this many identities, chosen deterministically by seed
    val_fraction: float = 0.1  # share of images without a known identity that go to validation (per file)
    seed: int = 0
    workers: int = 1

    def __post_init__(self) -> None:
        if self.val_identity_count < 0 or self.workers < 0:
            raise ConfigError("data.val_identity_count and data.workers must be >= 0")
        if not 0 <= self.val_fraction < 1:
            raise ConfigError(f"data.val_fraction must be in [0, 1), got {self.val_fraction}")


@dataclass(frozen=True)
class LoggingConfig:
    log_every: int = 10
    sample_every: int = 1000
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    sample_rows: int = 8

    def __post_init__(self) -> None:
        if min(self.log_every, self.sample_every, self.checkpoint_every, self.keep_checkpoints, self.sample_rows) < 1:
            raise ConfigError("logging.* values must be >= 1")


@dataclass(frozen=True)
class TrainConfig:
    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    optim: OptimConfig = OptimConfig()
    data: DataConfig = DataConfig()
    logging: LoggingConfig = LoggingConfig()
    amp: AmpMode = "bf16"  # CUDA only; the CPU always trains in float32
    target_labels: TargetMode = "permute"  # permute the batch's labels (StarGAN) or draw random expressions
    seed: int = 0  # weight init and the per-step randomness (targets, flips, GP points)
    # Share of each batch whose target is the expression of another photo of the same person, which then gets
    # loss.lambda_pair's paired guidance (0 = the paper's unpaired recipe).
    pair_fraction: float = 0.0
    # Per-image colour jitter (white balance, exposure, contrast; training.data.colour_params), the same on an image
    # and its paired target. 0 = off (the paper); 1 = gains in [0.75, 1.25].
    colour_jitter: float = 0.0
    # Per-image rotation / scale / shift (training.data.geometry_params), the same on an image and its paired
    # target. 0 = off (the paper); 1 = up to 6 degrees, 6% scale and 4% shift.
    geometry_jitter: float = 0.0
    # A usgan-geometry file (build-geometry): the generator's input is each crop warped towards its target
    # expression, as in the product, and the cycle goes back through the inverse warp. "" = plain crops (the paper).
    # Needs DATA/landmarks.npz, which build-geometry writes.
    geometry_model: str = ""
    # A usgan-texture file (build-texture), with geometry_model: the warped input gets the texture step too, and a
    # paired sample's input is warped to its partner photo's own landmarks (the refiner recipe). "" = none.
    texture_model: str = ""

    def __post_init__(self) -> None:
        if not 0 <= self.pair_fraction <= 1:
            raise ConfigError(f"pair_fraction must be in [0, 1], got {self.pair_fraction}")
        if not 0 <= self.colour_jitter <= 2:
            raise ConfigError(f"colour_jitter must be in [0, 2], got {self.colour_jitter}")
        if not 0 <= self.geometry_jitter <= 2:
            raise ConfigError(f"geometry_jitter must be in [0, 2], got {self.geometry_jitter}")
        if self.texture_model and not self.geometry_model:
            raise ConfigError("texture_model needs geometry_model: the texture step follows the warp")
        if self.amp not in get_args(AmpMode):
            raise ConfigError(f"amp must be one of {', '.join(get_args(AmpMode))}, got {self.amp!r}")
        if self.target_labels not in get_args(TargetMode):
            choices = ", ".join(get_args(TargetMode))
            raise ConfigError(f"target_labels must be one of {choices}, got {self.target_labels!r}")


@dataclass(frozen=True)
class RunOptions:
    """Per-invocation settings that are not part of the run's identity."""

    data_dir: Path
    run_dir: Path
    resume: bool = False
    max_steps: int | None = None  # stop at this global step (the LR schedule still follows optim.total_steps)
    use_cuda: bool = True
    # Fine-tune: a fresh run starts its generator from these weights (D and the optimisers start fresh).
    init_generator: Path | None = None
    # Fine-tune: a fresh run starts its critic from this training checkpoint's D (the optimisers start fresh).
    init_critic: Path | None = None


def parse_set_options(pairs: tuple[str, ...]) -> dict[str, Any]:
    """'optim.g_lr=2e-4' -> {'optim.g_lr': 2e-4}; values are parsed as YAML scalars."""
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {pair!r}: expected KEY=VALUE, e.g. optim.g_lr=2e-4")
        overrides[key.strip()] = parse_scalar(value)
    return overrides


def parse_scalar(text: str) -> Any:
    """A YAML value, except that 2e-4 is a float (YAML 1.1 would read it as a string)."""
    value = yaml.safe_load(text)
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            return float(value)
    return value


def load_train_config(path: Path | None, settings: dict[str, Any],
                      options: dict[str, Any] | None = None) -> TrainConfig:
    """The config of a YAML file (the paper's defaults when path is None), then `--set` settings, then the values of
    options that set a key (None: not given, the file's or --set's value stays); errors name where a value came from."""
    given = {key: value for key, value in (options or {}).items() if value is not None}
    where = str(path) if path else "TrainConfig"

    def blame(key: str) -> str:
        return f"--set {key}" if key in settings and key not in given else f"{where}: {key}"
    return load_config(TrainConfig, path, {**settings, **given}, blame)


def config_yaml(config: TrainConfig) -> str:
    return yaml.safe_dump(to_mapping(config), sort_keys=False)
