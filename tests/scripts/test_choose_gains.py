"""scripts/choose_gains.py: per-expression edit gains from evaluate reports at uniform gains."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

import choose_gains  # noqa: E402
from pipeline.evaluation.metrics import Judgements, summarise_judgements as summarise  # noqa: E402
from pipeline.evaluation.report import write_report  # noqa: E402
from usgan.expressions import EXPRESSIONS  # noqa: E402

HAPPY, NEUTRAL, SAD = (EXPRESSIONS.index(n) for n in ("happy", "neutral", "sad"))
# Per gain, per target: (how many of the two edits the judge reads as the target, their identity cosine)
REPORTS = {1.0: {HAPPY: (0, 0.90), SAD: (0, 0.90)}, 1.5: {HAPPY: (2, 0.70), SAD: (1, 0.80)}}


def write_evaluate_report(out: Path, gain: float, targets: dict[int, tuple[int, float]],
                          weights: str = "g.safetensors") -> Path:
    """A real evaluate report (summarise + write_report) of two neutral sources, each edited to every target."""
    pair_target = np.array([t for t in targets for _ in range(2)])
    output_labels = [t if i < targets[t][0] else NEUTRAL for t in targets for i in range(2)]
    output_probs = np.full((pair_target.size, 7), 0.01, np.float32)
    output_probs[np.arange(pair_target.size), output_labels] = 0.94
    judgements = Judgements(labels=np.array([NEUTRAL, NEUTRAL]), input_probs=output_probs[:2] * 0 + 1 / 7,
                            pair_source=np.tile([0, 1], len(targets)), pair_target=pair_target,
                            output_probs=output_probs,
                            identity=np.array([targets[t][1] for t in pair_target], np.float32))
    metrics = summarise(judgements)
    metrics["weights"] = {"path": weights, "step": 1, "image_size": 64, "dataset": "d", "edit_gain": gain,
                          "expression_gains": {}}
    metrics["data"] = {"path": "faces", "sources": 2, "outputs": int(pair_target.size), "crop_size": 64,
                       "identities": ["a"]}
    metrics["timing"] = {"seconds": 1.0, "ms_per_output": 1.0}
    write_report(out, metrics, None)
    return out


@pytest.fixture
def reports(tmp_path) -> list[Path]:
    return [write_evaluate_report(tmp_path / f"g{gain}", gain, targets) for gain, targets in REPORTS.items()]


def test_reads_each_targets_numbers_per_gain(reports):
    table = choose_gains.read_reports(reports)
    assert table[1.5]["happy"] == choose_gains.TargetScore(accuracy=1.0, identity=pytest.approx(0.70), count=2)
    assert table[1.5]["sad"].accuracy == 0.5 and set(table[1.0]) == {"happy", "sad"}


def test_base_gain_is_the_largest_uniform_gain_over_the_floor(reports):
    table = choose_gains.read_reports(reports)
    assert choose_gains.base_gain(table, 0.80) == 1.0  # uniform 1.5: identity 0.75
    assert choose_gains.base_gain(table, 0.75) == 1.5
    with pytest.raises(choose_gains.GainReportError, match="no report's gain keeps identity >= 0.95"):
        choose_gains.base_gain(table, 0.95)


def test_choose_maximises_accuracy_under_both_identity_floors(reports):
    table = choose_gains.read_reports(reports)
    best = choose_gains.choose(table, ["happy", "sad"], 1.0, 0.79, 0.60)
    assert best.gains == {"happy": 1.5, "sad": 1.0}  # identity (0.70 + 0.90) / 2 = 0.80: happy 1.0, sad 0
    assert best.identity == pytest.approx(0.80) and best.score(["happy", "sad"]) == 0.5
    guarded = choose_gains.choose(table, ["happy", "sad"], 1.0, 0.79, 0.75)  # happy at 1.5 drops to 0.70
    assert guarded.gains == {"happy": 1.0, "sad": 1.5} and guarded.identity == pytest.approx(0.85)
    assert choose_gains.choose(table, ["happy", "sad"], 1.0, 0.95, 0.0) is None


def test_the_command_prints_the_choice_and_the_ship_flags(reports):
    result = CliRunner().invoke(choose_gains.main, [*map(str, reports), "--expressions", "HAS,sad",
                                                    "--min-identity", "0.79", "--min-target-identity", "0.6"])
    assert result.exit_code == 0, result.output
    assert "chosen: base 1, happy 1.5" in result.output
    assert "ship with: --edit-gain 1 --expression-gain happy=1.5" in result.output
    none = CliRunner().invoke(choose_gains.main, [*map(str, reports), "--expressions", "happy",
                                                  "--min-identity", "0.95", "--base-gain", "1"])
    assert none.exit_code == 1 and "no mix of these gains meets both identity floors" in none.output


def test_reports_that_cannot_be_combined_are_one_line_errors(tmp_path, reports):
    other = write_evaluate_report(tmp_path / "other", 1.25, REPORTS[1.0], weights="other.safetensors")
    result = CliRunner().invoke(choose_gains.main, [str(reports[0]), str(other)])
    assert result.exit_code == 1 and "another generator or data set than the first report" in result.output
    twice = CliRunner().invoke(choose_gains.main, [str(reports[0]), str(reports[0])])
    assert twice.exit_code == 1 and "a second report at edit gain 1" in twice.output
    metrics = json.loads((reports[1] / "metrics.json").read_text())
    metrics["weights"]["expression_gains"] = {"happy": 1.5}
    (tmp_path / "mixed").mkdir()
    (tmp_path / "mixed" / "metrics.json").write_text(json.dumps(metrics))
    mixed = CliRunner().invoke(choose_gains.main, [str(reports[0]), str(tmp_path / "mixed")])
    assert mixed.exit_code == 1 and "evaluated with per-expression gains" in mixed.output
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "metrics.json").write_text("{")
    junk = CliRunner().invoke(choose_gains.main, [str(tmp_path / "junk")])
    assert junk.exit_code == 1 and "junk/metrics.json: not an evaluate report" in junk.output
    absent = CliRunner().invoke(choose_gains.main, [*map(str, reports)])  # default angry,happy,sad; no angry edits
    assert absent.exit_code == 1 and "the reports hold no edits towards angry" in absent.output
    assert all("Traceback" not in r.output for r in (result, twice, mixed, junk, absent))
