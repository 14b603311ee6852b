#!/usr/bin/env bash
# One prepared script for a GPU machine (about 5 minutes): the CUDA tests, then the GPU benchmarks.
#   bash benchmarks/run_gpu.sh [OUT_DIR]      # results (logs + tables) go to OUT_DIR (default gpu-results/)
set -uo pipefail
out=${1:-gpu-results}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$out/gpu.txt"
python -m pytest -q -m gpu tests/test_loss.py 2>&1 | tail -5 | tee "$out/pytest_gpu.txt"
timeout 240 python benchmarks/loss_overhead.py --device cuda --repeats 20 2>&1 | tee "$out/loss_overhead_cuda.md"
timeout 240 python benchmarks/train_step.py --device cuda --repeats 20 --models simple,unet_small 2>&1 \
  | tee "$out/train_step_cuda.md"
