#!/usr/bin/env bash
# One GPU session's measurements, in one call (a lent GPU machine gives ~10 minutes per command):
#   1. SLPT variants on the validation phantoms (benchmarks.explore) and the pick by its fixed rule;
#   2. SLPT vs full fine-tuning (benchmarks.compare) with the picked settings, on the held-out test phantoms;
#   3. the speed benchmark on the GPU (no server: MONAI Label is not installed there).
# Everything lands in $OUT (default: logs/gpu). Each stage has its own time limit, so a slow one cannot
# starve the next. Everything runs in ONE process at a time: a training step is launch-bound on the GPU
# (measured on an H100 for SLPT v1: 48 ms per step, of which 7.5 ms GPU time), and 3-8 processes sharing
# the GPU made each step 8x slower (0.4 s), so parallel workers lose.
# One 60-epoch variant with 40 validation phantoms takes about 50 s there: pick VARIANTS to fit
# EXPLORE_LIMIT.
# The machine has PyTorch but not MONAI or nibabel: their wheels travel in .whl/
# (see README "On a GPU"). SMOKE=1 shrinks every stage to seconds, to try the script first.
set -u
OUT=${OUT:-logs/gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
PY=${PY:-python3}
if [ -d .whl ] && ! $PY -c "import monai, nibabel" 2>/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=$PYTHONPATH:/tmp/site
fi
exec > >(tee "$OUT/log.txt") 2>&1
nvidia-smi -L 2>/dev/null || echo "no nvidia-smi"
$PY -c "import torch, monai; print('torch', torch.__version__, 'monai', monai.__version__, 'cuda', torch.cuda.is_available())"

VARIANTS=${VARIANTS:-docs/results/explore/variants.json}
EXPLORE_LIMIT=${EXPLORE_LIMIT:-245} COMPARE_LIMIT=${COMPARE_LIMIT:-185} SPEED_LIMIT=${SPEED_LIMIT:-135}
EXPLORE_ARGS=(--val 40)
COMPARE_ARGS=()
SPEED_ARGS=(--no-server --pool-sizes 100 300)
if [ "${SMOKE:-0}" = 1 ]; then
  $PY -c "import json; v = json.load(open('$VARIANTS')); print(json.dumps([dict(x, evals=[1], iterations_per_epoch=1) for x in v[:2]]))" > /tmp/smoke-variants.json
  VARIANTS=/tmp/smoke-variants.json
  EXPLORE_ARGS=(--val 2) COMPARE_ARGS=(--quick) SPEED_ARGS=(--no-server --quick)
fi

echo "== explore $(date +%T)"
timeout "$EXPLORE_LIMIT" $PY -m benchmarks.explore "$(cat $VARIANTS)" "${EXPLORE_ARGS[@]}" > "$OUT/explore.jsonl"
echo "explore exit $? ($(wc -l < "$OUT/explore.jsonl") rows)"
$PY -m benchmarks.explore --pick "$OUT/explore.jsonl" > "$OUT/pick.json" && cat "$OUT/pick.json"
OVERRIDES=$($PY -c "import json; print(json.dumps(json.load(open('$OUT/pick.json'))['overrides']))" 2>/dev/null || echo '{}')


echo "== compare $(date +%T) with $OVERRIDES"
timeout "$COMPARE_LIMIT" $PY -m benchmarks.compare --out "$OUT/compare" --set "$OVERRIDES" "${COMPARE_ARGS[@]}" \
  > "$OUT/compare.log"
echo "compare exit $?"; tail -n 3 "$OUT/compare.log"

echo "== speed $(date +%T)"
timeout "$SPEED_LIMIT" $PY -m benchmarks.speed --out "$OUT/speed" "${SPEED_ARGS[@]}" > /dev/null
echo "speed exit $?"
echo "== done $(date +%T)"
