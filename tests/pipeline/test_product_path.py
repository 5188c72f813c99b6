"""The processing path never imports the evaluation tooling (pipeline.evaluation)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PRODUCT_MODULES = (
    "pipeline.process", "pipeline.stills", "pipeline.stages", "pipeline.batch", "pipeline.config", "pipeline.edit",
    "pipeline.synthesize", "pipeline.faces.detector", "pipeline.faces.align", "pipeline.faces.tracking",
    "pipeline.blend", "pipeline.video.decode", "pipeline.video.encode", "pipeline.images", "pipeline.schedule",
    "pipeline.files", "pipeline.geometry", "pipeline.faces.landmarks",
)


def test_the_processing_path_imports_no_evaluation_module():
    script = (f"import importlib, json, sys\nfor name in {PRODUCT_MODULES!r}:\n    importlib.import_module(name)\n"
              "print(json.dumps(sorted(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, check=True)
    loaded = json.loads(done.stdout.splitlines()[-1])
    assert set(PRODUCT_MODULES) <= set(loaded)
    assert [name for name in loaded if name.startswith("pipeline.evaluation")] == []
