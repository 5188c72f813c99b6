"""Where in a face does the expression judge read an expression? A diagnosis for designing training, not a judge.

For every person with a neutral photo and photos of expression E, each region of an E photo (a horizontal band of
the aligned crop, with soft edges) is pasted into the same person's first neutral photo, and the judge (fer's
mini-Xception, fed as `evaluate` feeds it) reads the result. A region that carries most of the real photo's
accuracy is where the judge finds E; an edit that does not change that region cannot be read as E.
With --weights the same is done with the generator's edit of the neutral photo to E in place of the real photo.

On TFEID's 256 px crops (all 25 performers, 156 pairs), sad: the neutral photos 0.15, the real sad photos 0.47,
their brow band alone 0.38, their eyes 0.15, their lower face 0.14 (angry: 0.06, 0.68, and 0.60 for the upper
face); the shipped generator's sad edits 0.13 and their brow band 0.17 (23 neutral photos). Hence the brow critic
of configs/train/tfeid_brows.yaml.

With --generator-sizes the real photo's change from the neutral photo is also kept only as a generator of that size
could make it: downsampled to it (as inference feeds the generator), low-passed by the generator's residual_blur,
upsampled and added to the neutral photo (as inference adds the residual). Sad at 64 px with residual_blur 3: 0.19
(the whole change 0.47, no change 0.15); at 128 px: 0.44 (angry 0.32 and 0.61 of 0.68). However well it is
trained, a 64 px generator with that low-pass cannot make a sad face the judge reads. Hence
configs/train/tfeid_128.yaml.

Example:
    python scripts/region_signal.py ~/.cache/usgan/data/tfeid/256 --expressions sad,angry \\
        --weights weights/usgan_tfeid.safetensors --generator-sizes 128,64
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np
from numpy.typing import NDArray

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.evaluation.judges import ExpressionJudge  # noqa: E402
from pipeline.evaluation.sources import bgr_to_tensor, edit_crops, read_crops, tensor_to_bgr  # noqa: E402
from pipeline.faces.align import crop_template  # noqa: E402
from usgan.checkpoint import load_generator  # noqa: E402
from usgan.dataset import Sample, parse_identities, scan_dataset  # noqa: E402
from usgan.errors import UserError  # noqa: E402
from usgan.expressions import EXPRESSIONS  # noqa: E402
from usgan.inference import resize_residual, resize_to_generator  # noqa: E402
from usgan.model import binomial_kernel, blur  # noqa: E402

# Horizontal bands of an aligned crop, as fractions of its height (the crop template puts the eyes at 0.40 and the
# mouth at 0.72); "upper" and "lower" meet halfway between the eyes and the mouth.
REGIONS = {"forehead": (0.0, 0.23), "brows": (0.20, 0.36), "eyes": (0.36, 0.47), "upper": (0.0, 0.56),
           "lower": (0.56, 1.0)}


@dataclass(frozen=True)
class RegionSignal:
    expression: str
    # "photo" (the real photo of the expression), "photo at N px" (its change kept at a generator size, see
    # kept_at) or "edit" (the generator's edit of the neutral photo)
    source: str
    pairs: int
    neutral: float  # the judge's accuracy on the neutral photos, for the expression
    whole: float  # on the real photos (or the edits)
    regions: dict[str, float]  # on the neutral photos with that region pasted in


def band_mask(size: int, top: float, bottom: float) -> NDArray[np.float32]:
    """(size, size, 1) weights, ~1 on rows in [top, bottom) of the height and ~0 elsewhere, edges 1/64 of it soft."""
    rows = (np.arange(size, dtype=np.float32) + 0.5) / size
    rising = 1 if top <= 0 else 1 / (1 + np.exp(-(rows - top) * 64))
    falling = 1 if bottom >= 1 else 1 / (1 + np.exp(-(bottom - rows) * 64))
    inside = np.ones(size, np.float32) * rising * falling
    return np.broadcast_to(inside[:, None, None], (size, size, 1)).astype(np.float32)


def paste(base: NDArray[np.uint8], source: NDArray[np.uint8], mask: NDArray[np.float32]) -> NDArray[np.uint8]:
    blended = base.astype(np.float32) * (1 - mask) + source.astype(np.float32) * mask
    return np.clip(np.round(blended), 0, 255).astype(np.uint8)


def kept_at(neutral: list[NDArray[np.uint8]], shown: list[NDArray[np.uint8]], size: int,
            residual_blur: int) -> list[NDArray[np.uint8]]:
    """Each neutral photo plus its change to the shown photo as a size-px generator with that residual_blur could
    make it: the change downsampled to size (antialiased, as inference feeds the generator), low-passed by the
    blur (0: none), upsampled back and added (as inference adds the generator's residual)."""
    base, target = bgr_to_tensor(neutral), bgr_to_tensor(shown)
    change = resize_to_generator(target - base, size)
    if residual_blur:
        change = blur(change, binomial_kernel(residual_blur, change.shape[1]))
    return tensor_to_bgr(base + resize_residual(change, tuple(base.shape[2:])))


def pairs_of(samples: list[Sample], expression: str) -> list[tuple[Sample, Sample]]:
    """(first neutral photo, photo of expression) for every photo of expression whose person has a neutral one."""
    neutral: dict[str, Sample] = {}
    for sample in samples:
        if sample.expression == "neutral":
            neutral.setdefault(sample.identity, sample)
    return [(neutral[s.identity], s) for s in samples if s.expression == expression and s.identity in neutral]


def accuracy(judge: ExpressionJudge, crops: list[NDArray[np.uint8]], expression: str) -> float:
    landmarks = crop_template(crops[0].shape[0]).astype(np.float32)
    probabilities = judge.predict_batch(crops, [landmarks] * len(crops))
    return float(np.mean(probabilities.argmax(1) == EXPRESSIONS.index(expression)))


def signal_of(judge: ExpressionJudge, expression: str, source: str, neutral: list[NDArray[np.uint8]],
              shown: list[NDArray[np.uint8]]) -> RegionSignal:
    size = neutral[0].shape[0]
    regions = {}
    for name, (top, bottom) in REGIONS.items():
        mask = band_mask(size, top, bottom)
        regions[name] = accuracy(judge, [paste(n, s, mask) for n, s in zip(neutral, shown)], expression)
    return RegionSignal(expression, source, len(neutral), accuracy(judge, neutral, expression),
                        accuracy(judge, shown, expression), regions)


def region_signal(data: Path, expressions: tuple[str, ...], identities: tuple[str, ...] = (),
                  weights: Path | None = None, edit_gain: float | None = None, generator_sizes: tuple[int, ...] = (),
                  residual_blur: int = 3) -> list[RegionSignal]:
    unknown = [e for e in expressions if e not in EXPRESSIONS or e == "neutral"]
    if unknown or not expressions:
        choices = ", ".join(e for e in EXPRESSIONS if e != "neutral")
        raise UserError(f"--expressions {','.join(expressions)}: expected some of {choices}")
    samples = [s for s in scan_dataset(data) if not identities or s.identity in set(identities)]
    generator = info = None
    if weights is not None:
        generator, info = load_generator(weights)
        if edit_gain is not None:
            info = dataclasses.replace(info, edit_gain=edit_gain)
    judge = ExpressionJudge()
    results = []
    for expression in expressions:
        pairs = pairs_of(samples, expression)
        if not pairs:
            continue
        neutral, shown = read_crops([n for n, _ in pairs]), read_crops([s for _, s in pairs])
        results.append(signal_of(judge, expression, "photo", neutral, shown))
        for size in generator_sizes:
            kept = kept_at(neutral, shown, size, residual_blur)
            results.append(signal_of(judge, expression, f"photo at {size} px", neutral, kept))
        if generator is not None:
            first: dict[str, NDArray[np.uint8]] = {}
            for (sample, _), crop in zip(pairs, neutral):
                first.setdefault(sample.identity, crop)  # each neutral photo edited once
            people = list(first.values())
            edits = edit_crops(generator, info, people, [expression] * len(people))
            results.append(signal_of(judge, expression, "edit", people, edits))
    if not results:
        raise UserError(f"{data}: no person has both a neutral photo and a photo of {', '.join(expressions)}")
    return results


def parse_sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        sizes = (0,)
    if any(size < 8 for size in sizes):
        raise UserError(f"--generator-sizes {text}: expected sizes of at least 8 px, such as 128,64")
    return sizes


def markdown(results: list[RegionSignal]) -> str:
    names = list(REGIONS)
    lines = ["| expression | source | pairs | neutral photo | whole | " + " | ".join(names) + " |",
             "|---|---|---|---|---|" + "---|" * len(names)]
    lines += [f"| {r.expression} | {r.source} | {r.pairs} | {r.neutral:.2f} | {r.whole:.2f} | "
              + " | ".join(f"{r.regions[n]:.2f}" for n in names) + " |" for r in results]
    return "\n".join(lines)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("data", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--expressions", default="sad", show_default=True, metavar="E,E,...",
              help="Expressions to look at (not neutral).")
@click.option("--identities", default="", metavar="ID,ID,...", help="Only these people (default: all).")
@click.option("--weights", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Also paste the regions of this generator's edits of the neutral photos.")
@click.option("--edit-gain", type=click.FloatRange(min=0, min_open=True), help="Override the weights' edit gain.")
@click.option("--generator-sizes", default="", metavar="N,N,...",
              help="Also keep each real change only as a generator of these sizes could make it (e.g. 128,64).")
@click.option("--residual-blur", type=click.Choice(["0", "3", "5", "7"]), default="3", show_default=True,
              help="The generator's residual low-pass (taps; 0: none) for --generator-sizes.")
def main(data: Path, expressions: str, identities: str, weights: Path | None, edit_gain: float | None,
         generator_sizes: str, residual_blur: str) -> None:
    """Print the judge's accuracy on neutral photos with one face region of an expressive photo pasted in.

    \b
    Example:
      python scripts/region_signal.py ~/.cache/usgan/data/tfeid/256 --expressions sad,angry
    """
    try:
        chosen = tuple(e.strip() for e in expressions.split(",") if e.strip())
        sizes = parse_sizes(generator_sizes)
        results = region_signal(data, chosen, parse_identities(identities), weights, edit_gain, sizes,
                                int(residual_blur))
    except UserError as error:
        raise click.ClickException(str(error)) from error
    click.echo(markdown(results))


if __name__ == "__main__":
    main()
