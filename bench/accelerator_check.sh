#!/usr/bin/env bash
# One prepared run on a GPU machine: correctness of the core on the accelerator, then train-step MFU.
#
# 1. The parity and core tests on the GPU backend (float32 with the highest matmul precision, so that the
#    1e-4 bounds against PyTorch-on-CPU hold; TF32 would not): LM / CLIP / InternViT / IDEFICS / LLaVA parity,
#    KV-cache decoding, generation, and cuDNN flash attention against the XLA path (bf16), also on packed rows.
# 2. (LM=1) bench/lm_train_step.py on the GPU in bf16 compute (float32 parameters and AdamW state) next to PyTorch
#    transformers on CUDA (autocast bf16, sdpa, fused AdamW): the 100M Llama with cuDNN attention, then alone
#    with the XLA attention path (64-query blocks; as one masked softmax, attention_block_size 0, this batch
#    does not fit an 80 GB GPU), and (TINYLLAMA=1) TinyLlama-1.1B with cuDNN attention. MFU is against the bf16 matmul peak measured
#    in the same run. The 100M steps alternate in one process; TinyLlama's two steps do not fit the GPU's memory
#    side by side (JAX keeps its allocator pool), so JAX and PyTorch run one after the other in two processes.
#
# 3. (FLAMINGO=1) bench/flamingo_train_step.py: OpenFlamingo-4B's architecture, JAX vs open_flamingo's PyTorch model.
# 4. (VITA=1) VITA-1.5 on the GPU: parity tests, the 1B stand-in's train step, the 7B duplex latency.
#
# Usage (from the repository root; missing packages can travel as wheels in .whl/: soundfile, cffi, pycparser,
# open-flamingo, einops-exts, flamingo-pytorch):
#   bash bench/accelerator_check.sh            # writes tests.log and bench.jsonl under $OUT (default /tmp/accel)
#   LM=0 TESTS="tests/flamingo/test_model.py" bash bench/accelerator_check.sh   # a part of it
set -u
OUT=${OUT:-/tmp/accel}
mkdir -p "$OUT"
PY=${PY:-python3}
if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv | tee "$OUT/gpu.txt"
$PY -c "import jax, flax, optax, torch, transformers; print('jax', jax.__version__, jax.devices(), 'flax', flax.__version__, \
'optax', optax.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__)" | tee -a "$OUT/gpu.txt"

# 1. correctness on the GPU (opt level 3 = XLA's default, instead of the test suite's CPU-only level 0)
JAX_DEFAULT_MATMUL_PRECISION=highest XLA_FLAGS="--xla_backend_optimization_level=3" timeout "${TEST_TIMEOUT:-330}" \
  $PY -m pytest -q -p no:cacheprovider -n 14 --continue-on-collection-errors -k "not sharding and not mesh" \
  ${TESTS:-tests/common/test_lm_parity.py tests/common/test_vision_parity.py tests/common/test_lm_core.py tests/common/test_generate.py \
  tests/common/test_losses.py tests/common/test_packed_lm.py tests/flamingo/test_idefics_parity.py tests/flamingo/test_open_flamingo_parity.py \
  tests/flamingo/test_model.py tests/flamingo/test_flops.py tests/llava/test_parity.py} \
  2>&1 | tee "$OUT/tests.log" | tail -25

# 2. train-step MFU, bf16 compute
bench() { timeout "${BENCH_TIMEOUT:-150}" $PY bench/lm_train_step.py --skip-compile --dtype bfloat16 "$@" 2>&1 \
  | tee -a "$OUT/bench.log" | grep '^{' | tee -a "$OUT/bench.jsonl"; }
if [ "${LM:-1}" = 1 ]; then
  bench --model llama_100m --batch 16 --seq 2048 --attention cudnn --steps 10
  bench --model llama_100m --batch 16 --seq 2048 --attention xla --attention-block-size 64 --steps 5 --skip-torch
fi
if [ "${TINYLLAMA:-0}" = 1 ]; then
  bench --model tinyllama_1b --batch 4 --seq 2048 --attention cudnn --steps 5 --skip-torch
  bench --model tinyllama_1b --batch 4 --seq 2048 --attention cudnn --steps 5 --skip-jax
fi
# 3. (FLAMINGO=1) the Flamingo train step, bf16: JAX (cuDNN attention in the LM) and OpenFlamingo's PyTorch model, one
#    process each (two 4B models do not fit side by side)
if [ "${FLAMINGO:-1}" = 1 ]; then
  fbench() { timeout "${BENCH_TIMEOUT:-150}" $PY bench/flamingo_train_step.py --config "${FLAMINGO_CONFIG:-open-flamingo-4b}" \
    --batch "${FLAMINGO_BATCH:-16}" --seq 256 --images 6 --dtype bfloat16 --steps 10 "$@" 2>&1 \
    | tee -a "$OUT/bench.log" | grep '^{' | tee -a "$OUT/bench.jsonl"; }
  fbench --impl jax --attention cudnn
  fbench --impl pytorch
fi
# 4. (VITA=1) VITA-1.5: its parity tests on the GPU (model, speech encoder, codec, speech decoder), the 1B stand-in's
#    stage-2.2 step MFU, and the duplex latency at VITA-1.5's size (random weights, bf16; target: first audio
#    packet <= 300 ms after the endpoint, barge-in within one 80 ms frame)
if [ "${VITA:-1}" = 1 ]; then
  JAX_DEFAULT_MATMUL_PRECISION=highest XLA_FLAGS="--xla_backend_optimization_level=3" timeout "${TEST_TIMEOUT:-330}" \
    $PY -m pytest -q -p no:cacheprovider -n 8 tests/vita/test_vita_model.py tests/vita/test_speech_encoder.py \
    tests/vita/test_codec.py tests/vita/test_speech_decoder.py tests/vita/test_tts.py 2>&1 | tee "$OUT/vita_tests.log" | tail -8
  timeout "${BENCH_TIMEOUT:-150}" $PY bench/vita_step.py --size 1b --dtype bfloat16 --batch 16 --steps 5 2>&1 \
    | tee -a "$OUT/bench.log" | grep '^{' | tee -a "$OUT/bench.jsonl"
  timeout "${LATENCY_TIMEOUT:-300}" $PY bench/vita_latency.py --size 7b --dtype bfloat16 --trials 3 --warmup 1 2>&1 \
    | tee -a "$OUT/bench.log" | grep '^{' | tee -a "$OUT/bench.jsonl"
fi
echo "done"
