#!/usr/bin/env bash
# GPU check, for a session that is lent a CUDA machine: `bash scripts/gpu_check.sh` (about 8 minutes on one GPU).
# Writes its log and tables under experiments/results/gpu/:
#   1. the CUDA tests (tests/nas/test_cuda.py: search per precision, retrain + resume CPU<->CUDA, ONNX after CUDA);
#   2. the README's search on CUDA (device=vpu latency=30ms, accelerator=cuda), timed;
#   3. a 3-epoch Fashion-MNIST retrain of its export on CUDA, timed;
#   4. experiments.train_speed on CUDA (precisions 32, bf16, 16);
#   5. the CUDA-measured latency table (device=host on the GPU);
#   6. Table I throughput (QuadraNet36-T vs ConvNeXt-T, HorNet-T, Swin-T; batch 128, AMP).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=experiments/results/gpu
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
: > "$LOG"
say() { echo "== $*" | tee -a "$LOG"; }
# what the GPU machine may lack (its torch is kept: a CUDA build)
"$PY" -c "import hydra, omegaconf, pandas, onnx, onnxruntime, tensorboard, tqdm, matplotlib" 2>/dev/null \
  || "$PY" -m pip install -q hydra-core omegaconf pandas scipy scikit-learn onnx onnxruntime tensorboard tqdm \
       matplotlib pyyaml packaging pytest 2>&1 | tail -2 | tee -a "$LOG"
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, torch.cuda.get_device_name(0))" \
  2>&1 | tee -a "$LOG" || { say "no CUDA device: nothing to check"; exit 1; }
[ -d /usr/share/datasets/fashion-mnist ] || (apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1) || true
DATA=fashion_mnist; [ -d /usr/share/datasets/fashion-mnist ] || DATA=digits
RUN=$(mktemp -d)
rc=0
say "1. CUDA tests"
timeout 240 "$PY" -m pytest -q -p no:cacheprovider tests/nas/test_cuda.py 2>&1 | tail -5 | tee -a "$LOG" || rc=1
say "2. the README's search on CUDA (dataset=$DATA)"
t0=$(date +%s)
timeout 300 "$PY" -m nas.search device=vpu latency=30ms accelerator=cuda dataset=$DATA results_csv="$OUT/search_results.csv" \
  hydra.run.dir="$RUN/search" 2>&1 | tail -12 | tee -a "$LOG" || rc=1
say "search wall $(( $(date +%s) - t0 )) s (goal <= 60 s)"
cp "$RUN/search/arch.json" "$OUT/arch_vpu30_cuda.json" 2>/dev/null || true
say "3. 3-epoch retrain of the export on CUDA"
t0=$(date +%s)
timeout 240 "$PY" -m nas.retrain arch="$RUN/search/arch.json" train.epochs=3 accelerator=cuda eval.host_latency=false \
  results_csv="$OUT/retrain_results.csv" hydra.run.dir="$RUN/retrain" 2>&1 | tail -8 | tee -a "$LOG" || rc=1
say "retrain wall $(( $(date +%s) - t0 )) s (goal: training <= 30 s, see train_time_s in retrain_results.csv)"
say "4. train_speed on CUDA"
timeout 300 "$PY" -m experiments.train_speed --accelerators cuda --repeats 10 --warmup 3 --threads 0 --out "$OUT" \
  2>&1 | tail -30 | tee -a "$LOG" || rc=1
say "5. CUDA-measured latency table (device=host)"
timeout 180 "$PY" -m latency.lut device=host 2>&1 | tail -30 | tee "$OUT/lut_host_cuda.txt" | tail -5 | tee -a "$LOG" || rc=1
say "6. Table I throughput on CUDA"
timeout 180 "$PY" -m experiments.throughput --cuda --out "$OUT" 2>&1 | tail -20 | tee -a "$LOG" || rc=1
say "done, rc $rc; outputs in $OUT"
exit $rc
