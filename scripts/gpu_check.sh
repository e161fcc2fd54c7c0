#!/usr/bin/env bash
# The CUDA paths, on a machine with a GPU and a preinstalled torch (no network):
# the test suite, then noisy-label training on the GPU, with timings.
# MEMLOC_FASHION_MNIST may point at a folder holding Fashion-MNIST's IDX files.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/memloc-gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | grep -v WARNING
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0))"
python3 -m pytest -q -p no:cacheprovider tests 2>&1 | tail -3
for arch in cnn resnet9; do
  /usr/bin/time -f "$arch wall %e s" memloc train --data fashion-mnist --limit 10000 --noise 0.1 --arch "$arch" \
    --device cuda --out "$OUT/fm-$arch" --format json > "$OUT/fm-$arch.json" || echo "$arch FAILED"
  cat "$OUT/fm-$arch.json"
done
# resuming on the GPU: a finished run reruns nothing and reports the same summary
memloc train --data fashion-mnist --limit 10000 --noise 0.1 --arch cnn --device cuda --out "$OUT/fm-cnn" --format json \
  | python3 -c "import json,sys; print('resume same test_acc:', json.load(sys.stdin)['test_acc'])"
