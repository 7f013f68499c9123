#!/bin/bash
# On a lent GPU box, after python scripts/gpu_box_prepare.py here: fine-tune recipes
# A (no extra photos) and B (+ landmark_extra, class-balanced sampler), each as a final run
# and a 5-fold cross-validation, all at once, stopping after T seconds; pack into $OUT
# what comes back (fp16 weights: a 20 MB checkpoint is over the 16 MiB a file may be).
# Photos are augmented on the GPU (--augment-on auto): the box's cores could not keep up.
# Environment: T (seconds), EA / EB (epochs), FOLDS, W (DataLoader workers), NOCV=1
# (final runs only), PY (python), G (the prepared folder), SMOKE (extra options).
set -u
G=${G:-.gpu}; T=${T:-420}; EA=${EA:-30}; EB=${EB:-12}; FOLDS=${FOLDS:-5}
OUT=${OUT:-/tmp/out}; R=/tmp/runs; C=/tmp/lmcache; mkdir -p $R $OUT
export OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1 MPLBACKEND=Agg
PY=${PY:-python3}
COMMON="--data $G/data --model efficientnet_lite2 --weights $G/lite2.pth --strategy finetune
 --outlier-weight 0.5 --outlier-skip $G/new_places --degrade 0.5 --feature-views 2
 --workers ${W:-1} --cache-dir $C ${SMOKE:-}"
A="$COMMON --epochs $EA"
B="$COMMON --epochs $EB --extra-train $G/extra --balance sampler"
nproc; nvidia-smi --query-gpu=name,memory.used --format=csv,noheader 2>/dev/null
start=$(date +%s)
$PY -m train.transfer $A --output $R/A > $R/A.log 2>&1 &
$PY -m train.transfer $B --output $R/B > $R/B.log 2>&1 &
[ -z "${NOCV:-}" ] && $PY -m train.crossval --folds $FOLDS --jobs $FOLDS --output $R/cvA transfer $A > $R/cvA.log 2>&1 &
[ -z "${NOCV:-}" ] && $PY -m train.crossval --folds $FOLDS --jobs $FOLDS --output $R/cvB transfer $B > $R/cvB.log 2>&1 &
while [ -n "$(jobs -rp)" ] && [ $(( $(date +%s) - start )) -lt $T ]; do
  sleep 5
  echo "t=$(( $(date +%s) - start ))s $(for d in A B cvA/fold0 cvA/fold4 cvB/fold0 cvB/fold4; do
    printf '%s:%s ' $d $(tail -n +2 $R/$d/metrics.csv 2>/dev/null | wc -l); done)"
done
echo "stopped at $(( $(date +%s) - start ))s; still running: $(jobs -rp | wc -l)"
pkill -f train. ; sleep 2
for r in A B; do  # fp16 weights as best.pt (loading casts them back): a 20 MB file would not come back
  $PY - $R/$r <<'PYEOF'
import sys, torch
d = sys.argv[1]
try:
    s = torch.load(f"{d}/best.pt", map_location="cpu", weights_only=False)
except FileNotFoundError:
    sys.exit(0)
s["model"] = {k: v.half() if v.is_floating_point() and v.numel() > 4096 else v
              for k, v in s["model"].items()}
torch.save(s, f"{d}/best16.pt")
PYEOF
  tar -cf $OUT/$r.tar --transform "s/best16.pt/best.pt/" -C $R $r/best16.pt $r/metrics.csv $r/run.json $r/transfer.report.json $r.log 2>/dev/null
done
(cd $R && tar -czf $OUT/cv.tgz --exclude='*.pt' --exclude='*.png' cvA cvB cvA.log cvB.log 2>/dev/null)
ls -la $OUT
for f in $R/*.log $R/cv*/crossval.json; do echo "== $f"; tail -n 4 $f; done
