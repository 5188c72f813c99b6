"""The frozen robust expression classifier of classifier guidance (usgan.classifier)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from cli import cli
from usgan import losses
from usgan.checkpoint import CheckpointError, save_generator, WeightsInfo
from usgan.classifier import (
    ClassifierConfig, ExpressionClassifier, FrozenClassifier, accuracy_per_class, load_classifier, pgd_l2,
    save_classifier, train_classifier,
)
from usgan.config import ConfigError
from usgan.dataset import Sample
from usgan.expressions import EXPRESSIONS
from usgan.landmarks import LUMA, luma
from usgan.model import Generator, GeneratorConfig

HAPPY, SAD = EXPRESSIONS.index("happy"), EXPRESSIONS.index("sad")


def test_the_classifier_reads_luma_only_and_ignores_exposure() -> None:
    torch.manual_seed(0)
    model = ExpressionClassifier(width=4).eval()
    images = torch.rand(3, 3, 32, 32) * 1.6 - 0.8
    # a colour change with zero luma: R up, B down, in the ratio of their luma weights
    colour = torch.zeros(3, 3, 32, 32)
    colour[:, 0], colour[:, 2] = 0.1, -0.1 * LUMA[0] / LUMA[2]
    assert torch.allclose(luma(colour), torch.zeros(3, 1, 32, 32), atol=1e-7)
    torch.testing.assert_close(model(images + colour), model(images), atol=1e-5, rtol=0)
    torch.testing.assert_close(model(images + 0.2), model(images), atol=1e-5, rtol=0)  # brightness


def test_pgd_stays_in_the_l2_ball_and_raises_the_loss() -> None:
    torch.manual_seed(0)
    model = ExpressionClassifier(width=4).eval()
    grey = torch.rand(4, 1, 32, 32)
    target = torch.tensor([0, 1, 2, 3])

    def loss_of(g: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(model.logits_of_luma(g), target)

    attacked = pgd_l2(loss_of, grey, eps=0.5, steps=3)
    assert not attacked.requires_grad
    assert float((attacked - grey).flatten(1).norm(dim=1).max()) <= 0.5 + 1e-5
    with torch.no_grad():
        assert float(loss_of(attacked)) > float(loss_of(grey))
    assert torch.equal(pgd_l2(loss_of, grey, eps=0.0, steps=3), grey)  # eps 0: plain training


def test_frozen_classifier_has_no_trainable_parameters_but_passes_gradients_and_resizes() -> None:
    frozen = FrozenClassifier(ExpressionClassifier(width=4), image_size=32)
    assert not any(p.requires_grad for p in frozen.parameters())
    frozen.train()
    assert not frozen.classifier.training  # BatchNorm and Dropout stay in eval mode inside a training G step
    images = torch.rand(2, 3, 64, 64, requires_grad=True)
    logits = frozen(images)  # resized to its 32 px
    assert logits.shape == (2, len(EXPRESSIONS))
    logits.sum().backward()
    assert images.grad is not None and float(images.grad.abs().sum()) > 0
    torch.testing.assert_close(frozen(images), frozen.classifier(F.interpolate(
        images, size=(32, 32), mode="bilinear", align_corners=False, antialias=True)))


def blob_samples(root: Path, per_class: int, people: int) -> tuple[Sample, ...]:
    """Grey 32 px images whose class is where a bright blob sits (one position per expression), with noise."""
    from PIL import Image

    generator = torch.Generator().manual_seed(0)
    samples = []
    for index, name in enumerate(EXPRESSIONS):
        for k in range(per_class):
            image = torch.rand(32, 32, generator=generator) * 60 + 60
            row, col = divmod(index, 3)
            image[4 + 9 * row:12 + 9 * row, 4 + 9 * col:12 + 9 * col] += 120
            path = root / name / f"{k:02d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image.clamp(0, 255).byte().numpy()).convert("RGB").save(path)
            samples.append(Sample(path, name, str(k % people)))
    return tuple(samples)


def test_training_learns_a_separable_task_and_reports_per_class_accuracy(tmp_path: Path) -> None:
    samples = blob_samples(tmp_path, per_class=8, people=4)
    train = tuple(s for s in samples if s.identity != "3")
    val = tuple(s for s in samples if s.identity == "3")
    config = ClassifierConfig(image_size=32, width=8, epochs=12, batch_size=8, robust_eps=0.3, robust_steps=2,
                              geometry_jitter=0.0)
    epochs = []
    model, accuracy = train_classifier(train, val, config, lambda epoch, acc: epochs.append(epoch))
    assert epochs == list(range(1, 13)) and not model.training
    assert set(accuracy) == set(EXPRESSIONS) | {"overall"}
    assert accuracy["overall"] >= 0.85, accuracy


def test_accuracy_per_class_marks_classes_without_images() -> None:
    class Fixed(torch.nn.Module):
        def forward(self, images: torch.Tensor) -> torch.Tensor:
            return F.one_hot(torch.full((len(images),), HAPPY), len(EXPRESSIONS)).float()

    accuracy = accuracy_per_class(Fixed(), torch.zeros(3, 3, 8, 8), torch.tensor([HAPPY, HAPPY, SAD]))
    assert accuracy["happy"] == 1.0 and accuracy["sad"] == 0.0 and math.isnan(accuracy["angry"])
    assert accuracy["overall"] == pytest.approx(2 / 3)


def test_save_and_load_round_trip_and_one_line_errors(tmp_path: Path) -> None:
    model = ExpressionClassifier(width=4).eval()
    path = tmp_path / "c.safetensors"
    save_classifier(path, model, ClassifierConfig(image_size=32, width=4), {"val_accuracy": {"overall": 0.5}})
    frozen, metadata = load_classifier(path)
    assert metadata["val_accuracy"]["overall"] == 0.5 and frozen.image_size == 32
    images = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(frozen(images), model(images))

    generator_file = tmp_path / "g.safetensors"
    save_generator(generator_file, Generator(GeneratorConfig(conv_dim=8)), WeightsInfo(image_size=32))
    with pytest.raises(CheckpointError, match="g.safetensors: not an expression classifier file"):
        load_classifier(generator_file)
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match="broken.safetensors") as caught:
        load_classifier(broken)
    assert "\n" not in str(caught.value)


def test_generator_loss_adds_lambda_times_the_classifier_term() -> None:
    torch.manual_seed(0)
    generator = Generator(GeneratorConfig(conv_dim=8))
    frozen = FrozenClassifier(ExpressionClassifier(width=4), image_size=32)

    def critic(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x.mean(dim=(1, 2, 3), keepdim=True), torch.zeros(len(x), len(EXPRESSIONS))

    x = torch.rand(2, 3, 32, 32) * 2 - 1
    c_org = F.one_hot(torch.tensor([0, 1]), len(EXPRESSIONS)).float()
    c_trg = F.one_hot(torch.tensor([HAPPY, SAD]), len(EXPRESSIONS)).float()
    args = (generator, critic, x, c_org, c_trg, torch.tensor([HAPPY, SAD]))
    plain = losses.generator_loss(*args, losses.LossConfig())
    guided = losses.generator_loss(*args, losses.LossConfig(lambda_classifier=2.0), classifier=frozen)
    assert "g/classifier" not in plain.terms and float(guided.terms["g/classifier"]) > 0
    torch.testing.assert_close(guided.total, plain.total + 2.0 * guided.terms["g/classifier"])
    guided.total.backward()
    assert all(p.grad is not None for p in generator.parameters())
    assert not any(p.grad is not None for p in frozen.parameters())


def test_config_errors() -> None:
    with pytest.raises(ConfigError, match="classifier.epochs"):
        ClassifierConfig(epochs=0)
    with pytest.raises(ConfigError, match="classifier.robust_eps"):
        ClassifierConfig(robust_eps=-1.0)
    with pytest.raises(ConfigError, match="loss.lambda_classifier"):
        losses.LossConfig(lambda_classifier=-1.0)


def test_cli_trains_on_the_training_split_and_writes_the_file(face_folders, tmp_path: Path) -> None:
    data = face_folders(tmp_path / "faces", count=40, size=32, identities=5)
    out = tmp_path / "c.safetensors"
    config = tmp_path / "train.yaml"
    config.write_text("model: {image_size: 32, d_strided_layers: 3}\ndata: {val_identity_count: 1}\n")
    result = CliRunner().invoke(cli, ["train-classifier", "--data", str(data), "--out", str(out), "--config",
                                      str(config), "--epochs", "2", "--width", "4"])
    assert result.exit_code == 0, result.output
    assert "epoch 2/2  validation accuracy:" in result.output and f"wrote {out}" in result.output
    _, metadata = load_classifier(out)
    assert len(metadata["val_identities"]) == 1 and len(metadata["train_identities"]) == 4
    assert not set(metadata["val_identities"]) & set(metadata["train_identities"])
    assert metadata["config"]["image_size"] == 32 and metadata["train_images"] == 32


def test_cli_error_is_one_line(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    result = CliRunner().invoke(cli, ["train-classifier", "--data", str(empty), "--out", str(tmp_path / "c.st")])
    assert result.exit_code == 1
    assert result.output.startswith("error: ") and result.output.count("\n") == 1 and "empty" in result.output
    assert not (tmp_path / "c.st").exists()
