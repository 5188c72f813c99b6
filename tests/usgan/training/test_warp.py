"""usgan.training.warp: training on input warped by the geometry model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from usgan.checkpoint import load_generator
from usgan.dataset import DataError, FolderLandmarks, scan_dataset, write_landmarks
from usgan.expressions import EXPRESSIONS
from usgan.geometry import LEFT_EYE, NOSE, POINTS, RIGHT_EYE, GeometryError, build_model, save_model
from usgan.model import Discriminator, DiscriminatorConfig, Generator, GeneratorConfig
from usgan.training.config import LossConfig, RunOptions
from usgan.training.data import geometry_jitter, geometry_params
from usgan.training.loop import train
from usgan.training.losses import generator_loss
from usgan.training.warp import jitter_points, load_warp_source, warp_towards
from usgan.texture import TextureLayer, load_texture

SHIPPED_TEXTURE = Path(__file__).resolve().parents[3] / "weights" / "texture.safetensors"


def face_shape(rng: np.random.Generator) -> np.ndarray:
    """A plausible (106, 2) crop-unit landmark set: eyes, nose and the rest spread over the face."""
    shape = np.stack([rng.uniform(0.3, 0.7, POINTS), rng.uniform(0.35, 0.8, POINTS)], 1)
    shape[list(LEFT_EYE)] = rng.normal([0.35, 0.42], 0.01, (len(LEFT_EYE), 2))
    shape[list(RIGHT_EYE)] = rng.normal([0.65, 0.42], 0.01, (len(RIGHT_EYE), 2))
    shape[list(NOSE)] = np.stack([rng.normal(0.5, 0.01, len(NOSE)), np.linspace(0.42, 0.62, len(NOSE))], 1)
    return shape


def add_geometry(folder: Path, out: Path) -> Path:
    """landmarks.npz for every crop of folder (one face shape per person plus its expression's displacement),
    and a geometry model built from them; returns the model file."""
    rng = np.random.default_rng(0)
    base = face_shape(rng)
    centre = np.array([0.5, 0.7])  # expressions stretch the face smoothly about the mouth
    moves = np.stack([(base - centre) @ rng.normal(0, 0.06, (2, 2)) for _ in EXPRESSIONS])
    moves[EXPRESSIONS.index("neutral")] = 0
    moves[:, list(NOSE + LEFT_EYE + RIGHT_EYE)] = 0
    samples = scan_dataset(folder)
    people = {p: base + rng.normal(0, 0.004, (POINTS, 2)) for p in sorted({s.identity for s in samples})}
    points = np.array([people[s.identity] + moves[s.label] for s in samples], np.float32)
    mirrored = points.copy()
    mirrored[..., 0] = 1 - mirrored[..., 0]
    names = tuple(s.path.relative_to(folder.resolve()).as_posix() for s in samples)
    write_landmarks(folder, FolderLandmarks(names, points, mirrored))
    model = build_model(points.astype(np.float64), np.array([s.label for s in samples]),
                        [s.identity for s in samples], nuisance=2, style=1)
    save_model(out, model)
    return out


def test_jittered_landmarks_follow_the_pixels():
    size, rng = 64, torch.Generator().manual_seed(0)
    points = torch.tensor([[[0.3, 0.4], [0.62, 0.55], [0.5, 0.7]]])
    params = geometry_params(1, 2.0, rng)
    moved = jitter_points(points, params)
    for (x, y), (mx, my) in zip(points[0].tolist(), moved[0].tolist()):
        image = torch.zeros(1, 3, size, size)
        image[0, :, int(y * size), int(x * size)] = 1.0
        found = geometry_jitter(image, params)[0, 0]
        row, col = divmod(int(found.argmax()), size)
        assert abs((col + 0.5) / size - mx) < 1.5 / size and abs((row + 0.5) / size - my) < 1.5 / size


@pytest.fixture
def faces(face_folders, tmp_path: Path) -> Path:
    """70 random 32x32 crops of 5 people: enough neutral photos for a shape model with 2 modes."""
    return face_folders(tmp_path / "faces", count=70, identities=5)


def test_warp_then_its_back_grid_returns_the_crop(faces: Path, tmp_path: Path):
    model_path = add_geometry(faces, tmp_path / "geometry.safetensors")
    source = load_warp_source(model_path, faces, scan_dataset(faces))
    y, x = torch.meshgrid(torch.linspace(-1, 1, 64), torch.linspace(-1, 1, 64), indexing="ij")
    images = torch.stack([x, y, x * y]).expand(4, 3, 64, 64).contiguous()  # smooth, so resampling loses little
    targets = torch.tensor([EXPRESSIONS.index("happy")] * 4)
    warped = warp_towards(source.model, images, source.points[:4], targets)
    moved = (warped.x_input - images).abs().mean()
    assert moved > 0.005  # the face moved
    back = torch.nn.functional.grid_sample(warped.x_input, warped.back_grid, align_corners=False,
                                           padding_mode="border")
    assert (back - images).abs().mean() < 0.5 * moved  # close to the crop (a wrong way round doubles the move)


def test_identity_back_grid_is_the_plain_cycle():
    torch.manual_seed(0)
    generator = Generator(GeneratorConfig(conv_dim=8))
    critic = Discriminator(DiscriminatorConfig(image_size=32, conv_dim=8, strided_layers=3))
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    c_org, c_trg = torch.eye(7)[[0, 1]], torch.eye(7)[[3, 5]]
    axis = (torch.arange(32) + 0.5) / 32 * 2 - 1
    identity = torch.stack(torch.meshgrid(axis, axis, indexing="xy"), -1).expand(2, 32, 32, 2)
    plain = generator_loss(generator, critic, x, c_org, c_trg, torch.tensor([3, 5]), LossConfig())
    through = generator_loss(generator, critic, x, c_org, c_trg, torch.tensor([3, 5]), LossConfig(), back_grid=identity)
    assert torch.allclose(plain.terms["g/rec"], through.terms["g/rec"], atol=1e-5)


def test_training_on_warped_input(tiny_config, faces: Path, tmp_path: Path):
    model_path = add_geometry(faces, tmp_path / "geometry.safetensors")
    config = tiny_config(geometry_model=str(model_path), pair_fraction=1.0, geometry_jitter=1.0,
                         **{"loss.lambda_pair": 1.0, "logging.sample_every": 2})
    state = train(config, RunOptions(faces, tmp_path / "run", max_steps=4))
    assert state.step == 4
    assert list((tmp_path / "run" / "samples").glob("step_*.png"))
    for weights in [tmp_path / "run" / "generator.safetensors", *(tmp_path / "run" / "checkpoints").glob("*")]:
        assert load_generator(weights)[1].geometry == str(model_path.resolve())  # process warps with it


def test_missing_landmarks_or_model_are_one_line_errors(tiny_config, faces: Path, tmp_path: Path):
    with pytest.raises(DataError, match="landmarks.npz: no landmarks; run `python cli.py build-geometry"):
        train(tiny_config(geometry_model=str(tmp_path / "g.safetensors")), RunOptions(faces, tmp_path / "a"))
    add_geometry(faces, tmp_path / "g.safetensors")
    with pytest.raises(GeometryError, match="missing.safetensors: no such geometry file"):
        train(tiny_config(geometry_model=str(tmp_path / "missing.safetensors")), RunOptions(faces, tmp_path / "b"))


def test_the_refiner_warps_a_pair_to_its_partner_landmarks_and_textures_it(faces: Path, tmp_path: Path):
    from usgan.training.warp import WarpSource

    model_path = add_geometry(faces, tmp_path / "geometry.safetensors")
    plain = load_warp_source(model_path, faces, scan_dataset(faces))
    textured = WarpSource(plain.model, plain.points, plain.mirrored, TextureLayer(load_texture(SHIPPED_TEXTURE)))
    y, x = torch.meshgrid(torch.linspace(-1, 1, 64), torch.linspace(-1, 1, 64), indexing="ij")
    images = torch.stack([x, y, x * y]).expand(2, 3, 64, 64).contiguous() * 0.5
    targets = torch.tensor([EXPRESSIONS.index("surprised")] * 2)
    partner = plain.points[2:4].clone()
    partner[1] = float("nan")  # no partner: the model's target shape
    mean_shape = warp_towards(plain.model, images, plain.points[:2], targets)
    to_partner = warp_towards(plain, images, plain.points[:2], targets, partner_goal=partner)
    assert torch.allclose(to_partner.x_input[1], mean_shape.x_input[1], atol=1e-6)
    assert (to_partner.x_input[0] - mean_shape.x_input[0]).abs().mean() > 1e-3  # aimed at the partner's landmarks
    with_texture = warp_towards(textured, images, plain.points[:2], targets, partner_goal=partner)
    assert (with_texture.x_input - to_partner.x_input).abs().amax() > 0.05  # the texture step ran
    torch.testing.assert_close(with_texture.back_grid, to_partner.back_grid)


def test_a_texture_model_needs_a_geometry_model(tiny_config):
    from usgan.config import ConfigError

    with pytest.raises(ConfigError, match="texture_model needs geometry_model"):
        tiny_config(texture_model="weights/texture.safetensors")
