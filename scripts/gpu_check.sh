#!/usr/bin/env bash
# GPU check, for a session that is lent a CUDA machine. Every step fits one 10-minute command:
#   bash scripts/gpu_check.sh                 # every step in turn (about 25 minutes on one GPU)
#   bash scripts/gpu_check.sh 1 2             # only steps 1 and 2 (one invocation per step where a command
#                                             #   may run 10 minutes; step 3 reads step 2's export from $OUT)
#   bash scripts/gpu_check.sh --dry-run       # walk every step, print what it would run; on a machine
#                                             #   without CUDA it says "no CUDA" and exits 0
# Steps (timeouts in brackets; each writes under ${OUT:-experiments/results/gpu}):
#   1. the CUDA tests (tests/nas/test_cuda.py: search per precision, retrain + resume CPU<->CUDA, ONNX)   [300 s]
#   2. the README's search on CUDA (device=vpu latency=30ms accelerator=cuda), timed                     [420 s]
#   3. a 3-epoch retrain of its export on CUDA, timed                                                      [420 s]
#   4. the CUDA-measured latency table of this GPU (device=cuda: CUDA events, any GPU)                     [480 s]
#   5. a 2-process DDP search on this one GPU (torchrun; the processes share it over gloo)                 [480 s]
#   6. experiments.train_speed on CUDA (precisions 32, tf32, bf16, 16)                                     [480 s]
#   7. Table I throughput (QuadraNet36-T vs ConvNeXt-T, HorNet-T, Swin-T; batch 128, AMP)                   [300 s]
# Before any step it checks the Python packages the steps import, installs what is missing and says what
# it installed or could not (the full pip log is $OUT/pip.log).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-experiments/results/gpu}
DRY=0
STEPS=()
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY=1 ;;
    [1-7]) STEPS+=("$arg") ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "error: unknown argument '$arg'; valid: --dry-run and step numbers 1-7" >&2; exit 2 ;;
  esac
done
[ ${#STEPS[@]} -eq 0 ] && STEPS=(1 2 3 4 5 6 7)
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
RUNS="$OUT/runs"
say() { echo "== $*" | tee -a "$LOG"; }
echo "== gpu_check $(date -u +%FT%TZ) steps ${STEPS[*]}$([ $DRY = 1 ] && echo ' (dry run)')" >> "$LOG"

# -- what the machine lacks (its torch is kept: a CUDA build) -----------------------------------------
MODULES="hydra omegaconf pandas scipy sklearn onnx onnxruntime tensorboard tqdm matplotlib yaml packaging pytest"
declare -A PIP=([hydra]=hydra-core [sklearn]=scikit-learn [yaml]=pyyaml)
missing=()
for m in $MODULES; do "$PY" -c "import $m" 2>/dev/null || missing+=("$m"); done
if [ ${#missing[@]} -eq 0 ]; then
  say "python packages: all present"
elif [ $DRY = 1 ]; then
  say "python packages missing: ${missing[*]} (dry run: not installed)"
else
  pkgs=(); for m in "${missing[@]}"; do pkgs+=("${PIP[$m]:-$m}"); done
  say "python packages missing: ${missing[*]}; installing ${pkgs[*]} (log: $OUT/pip.log)"
  "$PY" -m pip install "${pkgs[@]}" > "$OUT/pip.log" 2>&1 || say "pip install failed (exit $?): see $OUT/pip.log"
  still=(); for m in "${missing[@]}"; do "$PY" -c "import $m" 2>/dev/null || still+=("$m"); done
  if [ ${#still[@]} -eq 0 ]; then say "installed: ${pkgs[*]}"; else say "STILL MISSING: ${still[*]}"; fi
fi

CUDA=$("$PY" -c "import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')" 2>/dev/null)
if [ -z "$CUDA" ]; then
  if [ $DRY = 1 ]; then say "no CUDA device: a dry run walks the steps without running them"
  else say "no CUDA device: nothing to check (torch $("$PY" -c 'import torch; print(torch.__version__)' 2>&1))"; exit 1; fi
else
  say "GPU: $CUDA, torch $("$PY" -c 'import torch; print(torch.__version__, "cuda", torch.version.cuda)')"
fi
if [ $DRY = 0 ] && [ ! -d /usr/share/datasets/fashion-mnist ]; then
  apt-get install -y -qq dataset-fashion-mnist > /dev/null 2>&1 || true
fi
DATA=fashion_mnist; [ -d /usr/share/datasets/fashion-mnist ] || DATA=digits

# run STEP TIMEOUT TITLE CMD...: the command's whole output goes to $OUT/step<N>.log, its tail to the log
rc=0
run() {
  local n=$1 limit=$2 title=$3; shift 3
  say "$n. $title [timeout ${limit} s]"
  if [ $DRY = 1 ]; then say "   would run: $*"; return 0; fi
  local t0=$(date +%s)
  timeout "$limit" "$@" > "$OUT/step$n.log" 2>&1
  local code=$?
  tail -15 "$OUT/step$n.log" | tee -a "$LOG"
  say "$n. exit $code after $(( $(date +%s) - t0 )) s (full output: $OUT/step$n.log)"
  [ $code -eq 0 ] || rc=1
}

for step in "${STEPS[@]}"; do
  case $step in
    1) run 1 300 "CUDA tests" "$PY" -m pytest -q -p no:cacheprovider tests/nas/test_cuda.py ;;
    2) run 2 420 "the README's search on CUDA (dataset=$DATA; goal <= 60 s)" \
         "$PY" -m nas.search device=vpu latency=30ms accelerator=cuda dataset=$DATA \
         results_csv="$OUT/search_results.csv" hydra.run.dir="$RUNS/search"
       [ $DRY = 1 ] || cp "$RUNS/search/arch.json" "$OUT/arch_vpu30_cuda.json" 2>/dev/null || true ;;
    3) if [ $DRY = 0 ] && [ ! -f "$OUT/arch_vpu30_cuda.json" ]; then say "3. skipped: step 2's export is missing"; rc=1
       else run 3 420 "3-epoch retrain of the export on CUDA (goal: training <= 30 s, train_time_s in the CSV)" \
         "$PY" -m nas.retrain arch="$OUT/arch_vpu30_cuda.json" train.epochs=3 accelerator=cuda eval.host_latency=false \
         results_csv="$OUT/retrain_results.csv" hydra.run.dir="$RUNS/retrain"; fi ;;
    4) run 4 480 "CUDA-measured latency table of this GPU (device=cuda)" \
         "$PY" -m latency.lut device=cuda
       [ $DRY = 1 ] || cp "$OUT/step4.log" "$OUT/lut_cuda.txt" ;;
    5) run 5 480 "2-process DDP search on one GPU (gloo: the processes share it)" \
         "$PY" -m torch.distributed.run --nproc_per_node=2 -m nas.search device=vpu latency=30ms accelerator=cuda \
         dataset=$DATA train.epochs=2 results_csv="$OUT/ddp_results.csv" hydra.run.dir="$RUNS/ddp" ;;
    6) run 6 480 "train_speed on CUDA" \
         "$PY" -m experiments.train_speed --accelerators cuda --precisions 32,tf32,bf16,16 --repeats 10 --threads 0 \
         --out "$OUT" ;;
    7) run 7 300 "Table I throughput on CUDA" "$PY" -m experiments.throughput --cuda --out "$OUT" ;;
  esac
done
say "done, rc $rc; outputs in $OUT"
exit $rc
