"""Expression geometry: a 106-landmark shape model that separates a face's shape from its expression, and the
target landmarks of an edit (usgan.tps warps the crop there).

Shapes are (106, 2) landmark positions in crop units ([0, 1] of the aligned crop's side), compared after a
similarity that maps the stable points (nose, eye centres) onto the mean shape, so crop shifts do not count.
A shape is modelled as mean + nuisance modes (identity and head pose: PCA of neutral photos of many people) +
a speech mode (the jaw's opening, never removed) + one expression's displacement (the mean of same-person
expression - neutral pairs) + style modes (how people differ in showing expressions). Each expression is a Gaussian
class over shapes; the fit gives the posterior over expressions, the source's expression component, and a
confidence that falls where the shape is unlike any training face (profiles, occlusion, bad landmarks).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from safetensors.numpy import save_file

from usgan.config import from_mapping
from usgan.errors import UserError
from usgan.expressions import EXPRESSIONS
from usgan.files import atomic_write, check_arrays, read_model_file, safetensors_write

FORMAT = "usgan-geometry"
POINTS = 106
NOSE = tuple(range(72, 87))
LEFT_EYE, RIGHT_EYE = tuple(range(33, 43)), tuple(range(87, 97))
LEFT_BROW, RIGHT_BROW = tuple(range(43, 52)), tuple(range(97, 106))
# The lower lip (outer 53, 55, 56, 58, 59; inner 54, 57, 60): with the jaw, what opens when someone talks.
LOWER_LIP = (53, 54, 55, 56, 57, 58, 59, 60)
UPPER_INNER_LIP = (66, 62, 70)
CONTOUR = tuple(range(33))
MOUTH_CORNERS = (52, 61)
NEUTRAL = EXPRESSIONS.index("neutral")
OPENING_EXPRESSIONS = (EXPRESSIONS.index("happy"), EXPRESSIONS.index("surprised"))  # their opening is theirs
ARRAY_SHAPES: dict[str, tuple[str | int, ...]] = {  # a geometry file's arrays; a letter: a count they share
    "mean": (212,), "nuisance_modes": ("K", 212), "nuisance_var": ("K",), "speech": (212,),
    "style_modes": ("M", 212), "style_var": ("M",), "displacements": (len(EXPRESSIONS), 212),
}
ARRAYS = tuple(ARRAY_SHAPES)


@dataclass(frozen=True)
class FitSettings:
    """How hard the fit trusts the data. noise: landmark noise variance, as a multiple of the model's measured
    floor; spread: variance of an expression's strength around its mean; bound: largest removed component, in
    units of that expression's mean displacement; the removal's confidence falls from 1 at the fit's distance
    conf_low to 0 at conf_high, the target's from 1 at conf_high to 0 at twice it (the landmarks themselves are
    then implausible: a profile, an occlusion); scales: per-target multiple of the mean displacement; inner_brows:
    per target, a multiple of the brows' inner halves' vertical move (inner_brow_weights), below 0 reversing it."""

    noise: float = 1.0
    spread: float = 0.25
    neutral_prior: float = 1.0
    bound: float = 1.5
    conf_low: float = 0.47
    conf_high: float = 1.0
    scales: dict[str, float] = field(default_factory=dict)
    keep_opening: bool = True
    inner_brows: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class ShapeModel:
    """The stored model; arrays flattened to 212 = 106 (x, y) pairs. noise_floor: per-coordinate variance."""

    mean: NDArray            # (212,)
    nuisance_modes: NDArray  # (K, 212) orthonormal rows
    nuisance_var: NDArray    # (K,)
    speech: NDArray          # (212,) the jaw-opening direction, unit length
    style_modes: NDArray     # (M, 212)
    style_var: NDArray       # (M,)
    displacements: NDArray   # (7, 212), EXPRESSIONS order; neutral's is 0
    noise_floor: float
    settings: FitSettings = FitSettings()
    sources: dict = field(default_factory=dict)
    # Per fit settings, the class precisions (class_precisions): derived from the arrays, computed once per model.
    precision_cache: dict = field(default_factory=dict, compare=False, repr=False)


def with_settings(model: ShapeModel, **changes) -> ShapeModel:
    """The model with some fit settings replaced."""
    return replace(model, settings=replace(model.settings, **changes))


def stable_points(points: NDArray) -> NDArray:
    """(N, 106, 2) -> (N, 17, 2): the nose points and the two eye centres."""
    eyes = np.stack([points[:, list(LEFT_EYE)].mean(1), points[:, list(RIGHT_EYE)].mean(1)], 1)
    return np.concatenate([points[:, list(NOSE)], eyes], 1)


def similarity_to(points: NDArray, reference: NDArray) -> tuple[NDArray, NDArray, NDArray]:
    """Per shape, the similarity mapping its stable points onto reference's: (aligned (N,106,2), A (N,2,2), t)."""
    src, dst = stable_points(points), stable_points(reference[None])
    src_mean, dst_mean = src.mean(1, keepdims=True), dst.mean(1, keepdims=True)
    a = (src - src_mean) @ np.array([1, 1j])
    b = ((dst - dst_mean) @ np.array([1, 1j]))
    z = (a.conj() * b).sum(1) / (a.conj() * a).sum(1)  # rotation and scale as one complex number
    matrix = np.stack([np.stack([z.real, -z.imag], -1), np.stack([z.imag, z.real], -1)], 1)
    aligned = np.einsum("nij,npj->npi", matrix, points - src_mean) + dst_mean
    return aligned, matrix, np.broadcast_to(dst_mean, (len(points), 1, 2)).copy()


def principal_modes(rows: NDArray, count: int) -> tuple[NDArray, NDArray]:
    """(count, D) orthonormal principal directions of (N, D) centred rows and their variances."""
    _, values, vectors = np.linalg.svd(rows, full_matrices=False)
    variances = values ** 2 / max(len(rows) - 1, 1)
    return vectors[:count], variances[:count]


def build_model(points: NDArray, labels: NDArray, groups: list[str], nuisance: int = 16, style: int = 12,
                sources: dict | None = None) -> ShapeModel:
    """The model from N photos' (N, 106, 2) landmarks in crop units, their EXPRESSIONS indices, and groups: the
    same string for photos of one person seen from one view point (pairs are taken within a group)."""
    reference = points[labels == NEUTRAL].mean(0)
    aligned = similarity_to(points, reference)[0].reshape(len(points), -1)
    neutral = aligned[labels == NEUTRAL]
    if len(neutral) <= nuisance + 1:
        raise ValueError(f"{len(neutral)} neutral photos; the shape model needs more than {nuisance + 1}")
    mean = neutral.mean(0)
    modes, variances = principal_modes(neutral - mean, nuisance + 40)
    floor = float(variances[nuisance:].mean())
    displacements, pairs = np.zeros((len(EXPRESSIONS), mean.size)), [[] for _ in EXPRESSIONS]
    for group in sorted(set(groups)):
        rows = np.array([g == group for g in groups])
        base = aligned[rows & (labels == NEUTRAL)]
        for k in range(len(EXPRESSIONS)):
            if k != NEUTRAL and len(base) and (rows & (labels == k)).any():
                pairs[k] += list(aligned[rows & (labels == k)] - base.mean(0))
    for k in range(len(EXPRESSIONS)):
        displacements[k] = np.mean(pairs[k], 0) if pairs[k] else 0.0
    speech = np.zeros((POINTS, 2))
    speech[list(LOWER_LIP), 1] = displacements[EXPRESSIONS.index("surprised")].reshape(POINTS, 2)[list(LOWER_LIP), 1]
    speech = speech.reshape(-1) / max(np.linalg.norm(speech), 1e-9)
    residuals = np.concatenate([np.array(p) - displacements[k] for k, p in enumerate(pairs) if p])
    residuals -= np.outer(residuals @ speech, speech)
    style_modes, style_var = principal_modes(residuals, style)
    return ShapeModel(mean, modes[:nuisance], variances[:nuisance], speech, style_modes, style_var, displacements,
                      floor, sources=dict(sources or {}))


# --- file -------------------------------------------------------------------------------------------------------


def save_model(path: Path, model: ShapeModel) -> None:
    """A small safetensors file; its JSON header holds the format, expressions, settings and data sources."""
    arrays = {name: np.ascontiguousarray(getattr(model, name), dtype=np.float32) for name in ARRAYS}
    header = {"format": FORMAT, "version": "1", "expressions": json.dumps(list(EXPRESSIONS)),
              "noise_floor": repr(model.noise_floor), "settings": json.dumps(asdict(model.settings)),
              "sources": json.dumps(model.sources)}
    atomic_write(Path(path), lambda tmp: safetensors_write(save_file, arrays, tmp, header))


class GeometryError(UserError):
    """A geometry file that is missing or not a shape model; the message (one line) names it."""


def load_model(path: str | Path) -> ShapeModel:
    """The model saved by save_model; GeometryError naming the file when it is missing or not one."""
    header, stored = read_model_file(path, FORMAT, "geometry", "build-geometry", GeometryError)
    arrays = {name: value.astype(np.float64) for name, value in stored.items()}
    check_arrays(arrays, ARRAY_SHAPES, Path(path).expanduser(), GeometryError)
    try:
        settings = from_mapping(FitSettings, json.loads(header["settings"]), "settings")  # every value's type
        return ShapeModel(**arrays, noise_floor=float(header["noise_floor"]), settings=settings,
                          sources=json.loads(header["sources"]))
    except (ValueError, KeyError, TypeError) as error:
        raise GeometryError(f"{Path(path).expanduser()}: not a readable geometry file ({error})") from error


# --- fit ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fit:
    """Per source: posterior over EXPRESSIONS (N, 7), the expression component (N, 106, 2) in the aligned frame,
    its confidence (N,) in [0, 1], the Mahalanobis distance per coordinate (N,), and the frame's similarity."""

    posterior: NDArray
    component: NDArray
    confidence: NDArray
    distance: NDArray
    validity: NDArray
    matrix: NDArray
    offset: NDArray

    def select(self, rows) -> Fit:
        """The fit of some of the sources (an index array or list)."""
        return Fit(*(value[rows] for value in (self.posterior, self.component, self.confidence, self.distance,
                                              self.validity, self.matrix, self.offset)))


def class_covariances(model: ShapeModel, settings: FitSettings) -> NDArray:
    """(7, 212, 212) covariance of each expression's shapes around mean + its displacement."""
    base = settings.noise * model.noise_floor * np.eye(model.mean.size)
    base += (model.nuisance_modes.T * model.nuisance_var) @ model.nuisance_modes
    base += np.outer(model.speech, model.speech) * model.nuisance_var[0]  # speech: as free as the largest mode
    style = (model.style_modes.T * model.style_var) @ model.style_modes
    return np.stack([base if k == NEUTRAL else base + style + settings.spread * np.outer(d, d)
                     for k, d in enumerate(model.displacements)])


def class_precisions(model: ShapeModel, settings: FitSettings) -> tuple[NDArray, NDArray, NDArray]:
    """Per expression: inverse covariance (7, 212, 212), its log-determinant (7,), and the gain (7, 212, 212) that
    maps a shape's offset from the class mean to its expression part's posterior mean. Cached in the model, per
    settings."""
    key = (id(model.mean), repr(settings))  # with_settings and replace share the cache between copies
    cached = model.precision_cache.get(key)
    if cached is None or cached[0] is not model.mean:  # the id of a freed array can be reused
        covariances = class_covariances(model, settings)
        inverses = np.linalg.inv(covariances)
        style = (model.style_modes.T * model.style_var) @ model.style_modes
        gains = np.stack([inverses[k] @ (style + settings.spread * np.outer(d, d))
                          for k, d in enumerate(model.displacements)])
        cached = model.precision_cache[key] = (model.mean, inverses, np.linalg.slogdet(covariances)[1], gains)
    return cached[1:]


def fit_expression(model: ShapeModel, points: NDArray, settings: FitSettings | None = None) -> Fit:
    """Fit (N, 106, 2) crop-unit landmarks: which expression each face shows and its component to remove."""
    settings = settings or model.settings
    aligned, matrix, offset = similarity_to(points, model.mean.reshape(POINTS, 2))
    r = aligned.reshape(len(points), -1) - model.mean
    inverses, logdets, gains = class_precisions(model, settings)
    centred = r[:, None] - model.displacements[None]                        # (N, 7, 212)
    mahalanobis = (np.einsum("nkd,kde->nke", centred, inverses, optimize=True) * centred).sum(2)
    prior = np.where(np.arange(len(EXPRESSIONS)) == NEUTRAL, np.log(max(settings.neutral_prior, 1e-9)), 0.0)
    score = -0.5 * (mahalanobis + logdets) + prior
    posterior = np.exp(score - score.max(1, keepdims=True))
    posterior /= posterior.sum(1, keepdims=True)
    components = model.displacements[None] + np.einsum("nkd,kde->nke", centred, gains, optimize=True)
    components[:, NEUTRAL] = 0.0
    limit = settings.bound * np.linalg.norm(model.displacements, axis=1)[None, :, None]
    norms = np.linalg.norm(components, axis=2, keepdims=True)
    components *= np.minimum(1.0, limit / np.maximum(norms, 1e-12))
    component = np.einsum("nk,nkd->nd", posterior, components)
    distance = np.sqrt((mahalanobis * posterior).sum(1) / model.mean.size)
    confidence = np.clip((settings.conf_high - distance) / (settings.conf_high - settings.conf_low), 0.0, 1.0)
    validity = np.clip(2.0 - distance / settings.conf_high, 0.0, 1.0)
    return Fit(posterior, component.reshape(-1, POINTS, 2), confidence, distance, validity, matrix, offset)


def target_landmarks(model: ShapeModel, points: NDArray, targets: list[str], intensity: float | NDArray = 1.0,
                     settings: FitSettings | None = None, fit: Fit | None = None, talking: bool = False) -> NDArray:
    """(N, 106, 2) crop-unit landmarks of each face showing its target: source - its expression component +
    the target's displacement (replaced, not stacked), each scaled by its confidence, all by intensity.
    talking: the faces are video frames, whose mouth opening is speech: the source's is kept whole and the target
    adds none of its own (a smile there is the corners and cheeks, the opening follows the speaker). A still keeps
    only the share of its opening that its fit does not give to a smile or a surprise, and takes the target's
    (speech_kept)."""
    settings = settings or model.settings
    fit = fit or fit_expression(model, points, settings)
    wanted = np.stack([model.displacements[EXPRESSIONS.index(t)] * settings.scales.get(t, 1.0) for t in targets])
    wanted = wanted.reshape(-1, POINTS, 2)
    brows = np.array([settings.inner_brows.get(t, 1.0) for t in targets], float)
    if np.any(brows != 1.0):
        weights = inner_brow_weights(model.mean.reshape(POINTS, 2))
        wanted[:, :, 1] *= 1.0 + (brows[:, None] - 1.0) * weights[None]
    if talking and settings.keep_opening:
        wanted = speech_kept(model, wanted)
    change = wanted * fit.validity[:, None, None]
    removed = fit.component
    if settings.keep_opening:
        removed = speech_kept(model, fit.component, None if talking else fit.posterior)
    change -= removed * fit.confidence[:, None, None]
    inverse = np.linalg.inv(fit.matrix)  # aligned-frame displacement -> crop frame
    scale = np.broadcast_to(np.asarray(intensity, float), (len(points),)).reshape(-1, 1, 1)
    return points + np.einsum("nij,npj->npi", inverse, change * scale)


def inner_brow_weights(mean: NDArray) -> NDArray:
    """(106,) per landmark of a mean shape (106, 2): 1 on each brow's inner quarter, falling to 0 at 60% of the way
    to its outer end, 0 off the brows."""
    weights = np.zeros(POINTS)
    for brow in (LEFT_BROW, RIGHT_BROW):
        distance = np.abs(mean[list(brow), 0] - mean[list(NOSE), 0].mean())
        along = (distance - distance.min()) / max(np.ptp(distance), 1e-9)  # 0 at the inner end, 1 at the outer
        weights[list(brow)] = np.clip((0.6 - along) / 0.35, 0.0, 1.0)
    return weights


def speech_kept(model: ShapeModel, component: NDArray, posterior: NDArray | None = None) -> NDArray:
    """The component with the lower lip and jaw moved vertically as the upper inner lip: removing it then keeps
    the source's mouth opening, which in a talking face is speech, not expression. Given the fit's posterior, the
    opening is kept only in the share of the face that is not smiling or surprised, the two expressions that open
    the mouth: a laugh's or a gasp's opening is theirs, and goes with them."""
    mean = model.mean.reshape(POINTS, 2)
    jaw = [i for i in CONTOUR if mean[i, 1] > mean[list(MOUTH_CORNERS), 1].mean()]
    kept = component.copy()
    kept[:, list(LOWER_LIP) + jaw, 1] = component[:, list(UPPER_INNER_LIP), 1].mean(1, keepdims=True)
    if posterior is None:
        return kept
    opening = np.clip(posterior[:, list(OPENING_EXPRESSIONS)].sum(1), 0.0, 1.0)[:, None, None]
    return kept + opening * (component - kept)

