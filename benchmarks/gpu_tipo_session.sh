#!/usr/bin/env bash
# TIPO on a lent GPU machine (issue 15), in one command (about 3 minutes on an H200).
#
# That machine has torch, transformers and safetensors but no network, no gguf and no
# platformdirs; this needs none of those three. The tiny TIPO model travels from here
# (the tests' fixture builds it into .cache/tiny-tipo-model), the TIPO-200M-shaped
# random model is built there in seconds. From the repository root of a session with
# a GPU:
#
#   device run, carry [".cache/tiny-tipo-model"], command "bash benchmarks/gpu_tipo_session.sh"
#
# It prints the GPU, then benchmarks/gpu_tipo_check.py: whether graph and eager decoding
# give the same TIPO expansions (fp32, batch 1 and 8; exit status 1 if not), ms per
# decode step at 512 new tokens per decode mode and batch, and batched against one by
# one expansions. Everything also lands in $OUT/gpu-tipo-check.txt when $OUT is set.
set -uo pipefail
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 DTG_CACHE_DIR=/tmp/dtg-cache DTG_MODEL_DIR=/tmp/dtg-models
python=${PYTHON:-python3}
log=${OUT:-/tmp}/gpu-tipo-check.txt
{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    $python -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
    $python benchmarks/gpu_tipo_check.py --batches 1,8 --new-tokens 512
} 2>&1 | tee "$log"
exit "${PIPESTATUS[0]}"
