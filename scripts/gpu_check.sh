#!/usr/bin/env bash
# One short GPU check (< 8 minutes): the tests marked `gpu`, the loss benchmark on CUDA
# (torchvision's function and the bandwidth floor side by side) and short training runs:
# the classifier with bf16-mixed, a detector with 16-mixed, and trainer=ddp on the visible
# GPUs. Needs: torch with CUDA, lightning, timm, torchmetrics, hydra-core
# (pip install -e ".[train]").
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" WANDB_MODE=offline MPLBACKEND=Agg PYTHONUNBUFFERED=1
export LIGHTNING_FOCAL_ROOT="${LIGHTNING_FOCAL_ROOT:-/tmp/lightning_focal_gpu_check}"
status=0
start=$SECONDS
step() { echo; echo "== [$((SECONDS - start)) s] $*"; }

step "device"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python -c "import torch, lightning; print('torch', torch.__version__, '| lightning', lightning.__version__, '|', torch.cuda.get_device_name())" || exit 1

step "tests marked gpu"
python -m pytest -m gpu -q -p no:cacheprovider --no-header -o addopts="" tests/test_gpu.py || status=1

step "loss benchmark on CUDA"
python benchmarks/loss_speed.py --device cuda --quick --markdown || status=1

step "classifier, bf16-mixed, 200 steps"
python -m lightning_focal.train trainer=gpu trainer.max_steps=200 logger=csv callbacks.progress_bar=null \
  +trainer.enable_progress_bar=false || status=1

step "detector (FCOS on shapes, γ warmup), 16-mixed, 100 steps"
python -m lightning_focal.train experiment=detection_focal_warmup trainer=gpu trainer.precision=16-mixed \
  trainer.max_steps=100 logger=csv callbacks.progress_bar=null +trainer.enable_progress_bar=false || status=1

step "trainer=ddp on the visible GPUs (one here), bf16-mixed, 50 steps"
python -m lightning_focal.train trainer=ddp trainer.max_steps=50 logger=csv callbacks.progress_bar=null \
  +trainer.enable_progress_bar=false || status=1

echo; echo "gpu_check status: $status ($((SECONDS - start)) s)"
exit "$status"
