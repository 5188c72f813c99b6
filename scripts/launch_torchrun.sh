#!/usr/bin/env bash
# Launch US-GAN training with torchrun: one process per GPU (or N CPU processes with gloo), one or many nodes.
#
# Single node, all GPUs:
#   scripts/launch_torchrun.sh --config configs/train/default.yaml --data data/tfeid/128 --out runs/paper --resume
# Single node, 2 CPU processes (gloo), e.g. to try DDP on a laptop:
#   NPROC=2 scripts/launch_torchrun.sh --config configs/train/smoke.yaml --data D --out runs/smoke --cpu
# Two nodes x 4 GPUs: run the same line on both nodes, NODE_RANK=0 on the host named in MASTER_ADDR:
#   NNODES=2 NODE_RANK=0 NPROC=4 MASTER_ADDR=node01 scripts/launch_torchrun.sh --config ... --out /shared/runs/x --resume
#   NNODES=2 NODE_RANK=1 NPROC=4 MASTER_ADDR=node01 scripts/launch_torchrun.sh --config ... --out /shared/runs/x --resume
# Elastic rendezvous instead of fixed ranks (any node may start first): RDZV=1 NNODES=2 MASTER_ADDR=node01 ...
#
# Every argument is passed to `cli.py train`. --out must be on a file system all nodes share (rank 0 writes,
# every rank reads the checkpoint on --resume). The per-process batch size is optim.batch_size.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-.venv/bin/python}
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-29500}
if [ -z "${NPROC:-}" ]; then
  NPROC=$("$PYTHON" -c "import torch; print(max(1, torch.cuda.device_count()))")
fi

if [ "$NNODES" = 1 ] && [ -z "${RDZV:-}" ]; then
  launch=(--standalone --nnodes 1)
elif [ -n "${RDZV:-}" ]; then
  # c10d rendezvous: node ranks are assigned on arrival; RDZV_ID names the job (keep it per run).
  launch=(--nnodes "$NNODES" --rdzv-backend c10d --rdzv-endpoint "$MASTER_ADDR:$MASTER_PORT"
          --rdzv-id "${RDZV_ID:-usgan}")
else
  launch=(--nnodes "$NNODES" --node-rank "$NODE_RANK" --master-addr "$MASTER_ADDR" --master-port "$MASTER_PORT")
fi

exec "$PYTHON" -m torch.distributed.run "${launch[@]}" --nproc-per-node "$NPROC" cli.py -v train "$@"
