#!/usr/bin/env bash
# The CUDA paths on a GPU machine with torch preinstalled and no network: the test
# suite (CPU), then training, locate layers/scores/neurons and both benchmarks on
# the GPU, with timings. MEMLOC_FASHION_MNIST may point at Fashion-MNIST's IDX files.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/memloc-gpu}
RUNS=/tmp/memloc-gpu-runs
mkdir -p "$OUT" "$RUNS"
export PYTHONUNBUFFERED=1
log() { echo "== $* ($(date +%T))"; }
python3 -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | grep -v -i warning
python3 -c "import torch, typer; print('torch', torch.__version__, 'typer', typer.__version__, torch.cuda.get_device_name(0))"
log tests
timeout 200 python3 -m pytest -q -x -p no:cacheprovider tests 2>&1 | tail -3
for arch in cnn resnet9; do
  log "train $arch"
  /usr/bin/time -f "$arch train wall %e s" memloc train --data fashion-mnist --limit 10000 --noise 0.1 --arch "$arch" \
    --device cuda --out "$RUNS/fm-$arch" --format json | tee "$OUT/train-$arch.json"
done
log "locate layers (cuda)"
/usr/bin/time -f "layers wall %e s" memloc locate layers "$RUNS/fm-cnn" --device cuda --format json > "$OUT/layers-cnn.json"
python3 -c "import json; r=json.load(open('$OUT/layers-cnn.json')); print(len(r['rewinding']), 'rewinding cells;', len(r['retraining']), 'retraining rows')"
log "locate scores (cuda, curvature)"
memloc locate scores "$RUNS/fm-cnn" --curvature --device cuda --format json | tee "$OUT/scores-cnn.json"
log "locate neurons (cuda)"
/usr/bin/time -f "neurons wall %e s" memloc locate neurons "$RUNS/fm-cnn" --n 50 --device cuda --format json > "$OUT/neurons-cnn.json"
python3 -c "import json; r=json.load(open('$OUT/neurons-cnn.json')); print({g: {k: r[g][k] for k in ('flip_rate','median_units','mean_units','seconds_per_example')} for g in ('noisy','clean')})"
memloc report "$RUNS/fm-cnn" --out "$OUT/report-cnn"
log "benchmark rewind (cuda)"
python3 benchmarks/rewind.py "$RUNS/fm-cnn" --device cuda
log "benchmark flip (cuda)"
python3 benchmarks/flip.py "$RUNS/fm-cnn" --n 10 --device cuda
log done
