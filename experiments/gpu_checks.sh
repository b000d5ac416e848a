#!/usr/bin/env bash
# The GPU tier of every check, in one go, on a machine with CUDA (run from the repository root):
#
#     bash experiments/gpu_checks.sh [OUTDIR]        # default OUTDIR: results/gpu
#
# 1. the tests marked `gpu` (claims on SmolLM2 in float32 on CUDA: L5.1, T5.2, T5.3, D2, D4, SEQ1, SEQ2)
# 2. the claims ledger on the llm_gpu tier (JSON)
# 3. the loss benchmark on CUDA (BS-T vs GA vs dense, V = 128256 and 49152, bf16 logits)
# 4. the BS-S benchmark on CUDA (--quick)
# 5. the TOFU experiment's default protocol on CUDA (same code as on the CPU)
# Each step writes its output under OUTDIR; a failing step is reported and the next one still runs.
set -u
out="${1:-results/gpu}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
status=0
step() {
  local name="$1"; shift
  echo "=== $name: $*"
  local t0=$SECONDS
  "$@" > "$out/$name.txt" 2>&1
  local rc=$?
  tail -n 25 "$out/$name.txt"
  echo "=== $name: exit $rc in $((SECONDS - t0)) s"
  [ $rc -eq 0 ] || status=1
}
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA'; print(torch.cuda.get_device_name(0))" || exit 1
step pytest_gpu python -m pytest -m gpu -q -p no:cacheprovider
step ledger_gpu python -m proofs_check --tier llm_gpu
step bench_losses_cuda python experiments/bench.py losses --device cuda
step bench_bs_s_cuda python experiments/bench.py bs_s --quick --device cuda
step tofu_default_cuda python experiments/tofu.py --device cuda --out "$out/tofu_default" --progress false
exit $status
