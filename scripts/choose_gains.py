"""Choose per-expression edit gains from `cli.py evaluate` reports of one generator at several uniform gains.

An edit towards one expression does not depend on the gains of the others, so reports at uniform gains 1, 1.1, 1.25
and 1.5 hold every target's identity and judge accuracy at each of those gains, and any mix of them can be scored
without evaluating it: its overall identity is the count-weighted mean of its targets' identities. This picks the
mix that maximises the mean judge accuracy of the chosen expressions, subject to an overall identity floor and a
floor for each target's identity; the other expressions keep the base gain. Then write the file with
`scripts/ship_weights.py ... --edit-gain BASE --expression-gain NAME=G ...` (printed at the end).

Example:
    for g in 1 1.1 1.25 1.5; do python cli.py evaluate --weights W --data ~/.cache/usgan/data/tfeid/256 \\
        --identities 16,17,30 --edit-gain $g --out reports/g$g; done
    python scripts/choose_gains.py reports/g1 reports/g1.1 reports/g1.25 reports/g1.5 --min-identity 0.78
"""

from __future__ import annotations

import itertools
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import click

from usgan.errors import UserError
from usgan.expressions import EXPRESSIONS, parse_expression


class GainReportError(UserError):
    """Reports that cannot be combined; the message names the report."""


@dataclass(frozen=True)
class TargetScore:
    """One target expression's numbers at one uniform gain."""

    accuracy: float
    identity: float
    count: int


@dataclass(frozen=True)
class Choice:
    """A gain per expression and what the reports say it scores."""

    gains: dict[str, float]
    identity: float  # overall mean, all targets
    target_identity: dict[str, float]
    accuracy: dict[str, float]

    def score(self, chosen: Sequence[str]) -> float:
        return sum(self.accuracy[name] for name in chosen) / len(chosen)


def read_reports(reports: Sequence[Path]) -> dict[float, dict[str, TargetScore]]:
    """{gain: {expression: TargetScore}} from evaluate report folders of one generator on one data set."""
    table: dict[float, dict[str, TargetScore]] = {}
    seen: tuple[Any, ...] | None = None
    for report in reports:
        path = Path(report) / "metrics.json"
        try:
            metrics = json.loads(path.read_text())
            weights, data, per_class = metrics["weights"], metrics["data"], metrics["expression"]["per_class"]
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as error:
            raise GainReportError(f"{path}: not an evaluate report of a generator ({error})") from error
        if weights.get("expression_gains"):
            raise GainReportError(f"{path}: evaluated with per-expression gains; give reports at one gain each")
        key = (weights["path"], weights["step"], data["path"], tuple(data["identities"]), data["outputs"])
        if seen is not None and key != seen:
            raise GainReportError(f"{path}: another generator or data set than the first report ({seen[0]})")
        seen = key
        gain = float(weights["edit_gain"])
        if gain in table:
            raise GainReportError(f"{path}: a second report at edit gain {gain:g}")
        table[gain] = {name: TargetScore(m["output_accuracy"], m["identity"], m["count"])
                       for name, m in per_class.items() if m["count"]}
    return table


def score(table: dict[float, dict[str, TargetScore]], gains: dict[str, float]) -> Choice:
    """What the reports say a gain per expression (every target in the reports) scores."""
    rows = {name: table[gains[name]][name] for name in gains}
    total = sum(row.count for row in rows.values())
    identity = sum(row.identity * row.count for row in rows.values()) / total
    return Choice(gains=gains, identity=identity, target_identity={n: r.identity for n, r in rows.items()},
                  accuracy={n: r.accuracy for n, r in rows.items()})


def base_gain(table: dict[float, dict[str, TargetScore]], min_identity: float) -> float:
    """The largest uniform gain whose overall identity stays at or above min_identity."""
    passing = [g for g in table if score(table, dict.fromkeys(table[g], g)).identity >= min_identity]
    if not passing:
        raise GainReportError(f"no report's gain keeps identity >= {min_identity:g}; evaluate smaller gains")
    return max(passing)


def choose(table: dict[float, dict[str, TargetScore]], chosen: Sequence[str], base: float, min_identity: float,
           min_target_identity: float) -> Choice | None:
    """The gains for `chosen` (others at base) with the best mean accuracy of `chosen` under both identity floors;
    None when no mix meets them. Ties go to the smaller gains (the first mix in order)."""
    if base not in table:
        raise GainReportError(f"no report at the base gain {base:g}; reports at {', '.join(map(str, sorted(table)))}")
    targets = list(table[base])
    missing = [name for name in chosen if name not in targets]
    if missing:
        raise GainReportError(f"the reports hold no edits towards {', '.join(missing)}; "
                              f"choose from {', '.join(targets)}")
    best: Choice | None = None
    for mix in itertools.product(sorted(table), repeat=len(chosen)):
        gains = {name: base for name in targets} | dict(zip(chosen, mix))
        candidate = score(table, gains)
        if candidate.identity < min_identity or min(candidate.target_identity.values()) < min_target_identity:
            continue
        if best is None or candidate.score(chosen) > best.score(chosen) + 1e-12:
            best = candidate
    return best


def choice_lines(table: dict[float, dict[str, TargetScore]], choice: Choice | None, chosen: Sequence[str],
                 base: float) -> list[str]:
    """The per-target table of the reports, then the choice and the ship_weights flags for it."""
    names = [name for name in EXPRESSIONS if name in table[base]]
    lines = ["accuracy / identity per target: " + ", ".join(names)]
    for gain in sorted(table):
        cells = "  ".join(f"{table[gain][n].accuracy:.2f}/{table[gain][n].identity:.2f}" for n in names)
        overall = score(table, dict.fromkeys(names, gain)).identity
        lines.append(f"  gain {gain:<5g} {cells}   overall identity {overall:.3f}")
    if choice is None:
        return [*lines, "no mix of these gains meets both identity floors"]
    overrides = {n: g for n, g in choice.gains.items() if g != base}
    flags = " ".join(f"--expression-gain {n}={g:g}" for n, g in overrides.items())
    return [*lines,
            f"chosen: base {base:g}" + "".join(f", {n} {g:g}" for n, g in overrides.items()),
            f"  overall identity {choice.identity:.3f}; "
            f"lowest target identity {min(choice.target_identity.values()):.2f}",
            "  " + ", ".join(f"{n} {choice.accuracy[n]:.2f} (identity {choice.target_identity[n]:.2f})" for n in chosen)
            + f"; mean {choice.score(chosen):.3f}",
            f"ship with: --edit-gain {base:g} {flags}".rstrip()]


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("reports", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--expressions", default="angry,happy,sad", show_default=True, metavar="NAME,NAME,...",
              help="Expressions whose gains are chosen (the rest keep the base gain).")
@click.option("--min-identity", type=click.FloatRange(0, 1), default=0.78, show_default=True,
              help="Floor for the overall identity mean (ArcFace cosine, input vs output).")
@click.option("--min-target-identity", type=click.FloatRange(0, 1), default=0.70, show_default=True,
              help="Floor for each target expression's identity mean.")
@click.option("--base-gain", "base_gain_option", type=float, default=None,
              help="Gain for the other expressions; default: the largest uniform gain meeting --min-identity.")
def main(reports: tuple[Path, ...], expressions: str, min_identity: float, min_target_identity: float,
         base_gain_option: float | None) -> None:
    """Choose per-expression edit gains from evaluate REPORTS of one generator at different uniform gains.

    \b
    Examples:
      python scripts/choose_gains.py reports/g1 reports/g1.1 reports/g1.25 reports/g1.5
      python scripts/choose_gains.py reports/g* --expressions happy,sad --min-identity 0.75 --base-gain 1
    """
    try:
        table = read_reports(reports)
        chosen = [parse_expression(name) for name in expressions.split(",") if name.strip()]
        base = base_gain(table, min_identity) if base_gain_option is None else base_gain_option
        choice = choose(table, chosen, base, min_identity, min_target_identity)
    except UserError as error:
        raise click.ClickException(str(error)) from error
    for line in choice_lines(table, choice, chosen, base):
        click.echo(line)
    if choice is None:
        sys.exit(1)


if __name__ == "__main__":
    main()
