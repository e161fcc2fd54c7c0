#!/usr/bin/env bash
# The CUDA paths on a GPU machine with torch preinstalled and no network: the test
# suite (CPU), then training, locate layers/scores/neurons and the rewind and flip benchmarks on
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
timeout 200 python3 -m pytest -q -x -p no:cacheprovider -n 8 tests 2>&1 | tail -3
neurons() {  # RUN NAME
  /usr/bin/time -f "$2 neurons wall %e s" memloc locate neurons "$1" --n 100 --device cuda --format json > "$OUT/neurons-$2.json"
  python3 -c "import json; r=json.load(open('$OUT/neurons-$2.json')); print({g: {k: r[g][k] for k in ('flip_rate','median_units','mean_units','mean_collateral_drop','layer_share','seconds_per_example')} for g in ('noisy','clean')}); print('noisy share more than clean:', r['sharing']['noisy_share_more_than_clean'])"
}
for arch in cnn resnet9; do
  log "train $arch"
  memloc train --data fashion-mnist --limit 10000 --noise 0.1 --arch "$arch" --device cuda --out "$RUNS/fm-$arch" --format json > "$OUT/train-$arch.json"
  python3 -c "import json; r=json.load(open('$OUT/train-$arch.json')); print({k: r[k] for k in ('noisy_train_acc','test_acc','seconds')})"
  log "locate layers + scores $arch"
  /usr/bin/time -f "$arch layers wall %e s" memloc locate layers "$RUNS/fm-$arch" --device cuda --format json > "$OUT/layers-$arch.json"
  memloc locate scores "$RUNS/fm-$arch" --curvature --device cuda --format json > "$OUT/scores-$arch.json"
  python3 -c "import json; print(json.load(open('$OUT/scores-$arch.json'))['auroc'])"
  log "locate neurons $arch"
  neurons "$RUNS/fm-$arch" "$arch"
  memloc report "$RUNS/fm-$arch" --out "$OUT/report-$arch" > /dev/null
  log "benchmarks $arch"
  python3 benchmarks/rewind.py "$RUNS/fm-$arch" --device cuda | tail -4
  python3 benchmarks/flip.py "$RUNS/fm-$arch" --n 10 --device cuda | tail -4
done
log done
