#!/usr/bin/env bash
# Everything issue 5 needs from a lent GPU machine, in one command (about 5 minutes).
#
# That machine has torch, transformers, tokenizers, sentencepiece and pytest, but
# no network, so the tiny test model travels from here and the full-size model is
# built there. From the repository root of a session with a GPU:
#
#   python -m dtg_dev.tiny_model .cache/tiny-model   # only if .cache/tiny-model is missing
#   device run, carry [".cache/tiny-model"], command "bash benchmarks/gpu_session.sh"
#
# It prints the GPU, runs the CUDA-only decode tests, then bench_backends_gpu.py
# (its decode-mode table is the one for the single-stream and batch-of-8 targets).
# Tables also land in $OUT/gpu-bench.txt when $OUT is set.
set -uo pipefail
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 DTG_CACHE_DIR=/tmp/dtg-cache
python=${PYTHON:-python3}
log=${OUT:-/tmp}/gpu-bench.txt
{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    $python -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
    $python -m pytest -q -p no:cacheprovider tests/test_static_decode.py tests/test_batched.py
    $python benchmarks/make_full_size_model.py --hf-only --out /tmp/bench-model
    $python benchmarks/bench_backends_gpu.py --model-dir /tmp/bench-model --batches 1,8
} 2>&1 | tee "$log"
