#!/usr/bin/env bash
# The paper's model trained with jobs/configs/paper.json on a Ray cluster (or one GPU machine):
# stage 1, then stage 2 from stage 1's model at each rate point (lambda_b 8, 4, 2 -> rate ids 0, 1, 2).
#   DATA=s3://corpus/shards/ VAL=s3://corpus/val-shards/ VGG=s3://weights/vgg16-397923af.pth \
#   RUN=s3://runs/paper WORKERS=8 bash jobs/configs/paper.sh
# DATA: training shards (`sprdiff make-shards --crop 512` of LSDIR or similar); VAL: validation shards
# made the same way from images kept out of DATA (never a held-out report set); VGG: torchvision's
# VGG16 state dict (the perceptual loss; nothing is downloaded). Every run passes --resume, so
# rerunning the script after a failure continues each stage from its last checkpoint.
# GPU-hours: docs/training.md ("The paper recipe").
set -euo pipefail
: "${DATA:?set DATA to the URI of the training shards}" "${VGG:?set VGG to a VGG16 state dict path or URI}"
RUN=${RUN:-runs/paper}
WORKERS=${WORKERS:-1}
GPUS=${GPUS_PER_WORKER:-1}
CPUS=${CPUS_PER_WORKER:-8}
SPRDIFF=${SPRDIFF:-sprdiff}
common=(--recipe paper --data "$DATA" --vgg-weights "$VGG" --workers "$WORKERS" --gpus-per-worker "$GPUS"
        --cpus-per-worker "$CPUS" --resume --max-failures 3)
if [ -n "${VAL:-}" ]; then common+=(--validation-data "$VAL"); fi
if [ -n "${RAY_ADDRESS:-}" ]; then common+=(--address "$RAY_ADDRESS"); fi

$SPRDIFF train --stage 1 "${common[@]}" --output "$RUN/stage1"
for lambda in 8 4 2; do
    $SPRDIFF train --stage 2 "${common[@]}" --model "$RUN/stage1/model" --lambda-rate "$lambda" \
        --output "$RUN/stage2-lambda$lambda"
done
echo "models: $RUN/stage2-lambda{8,4,2}/model (rate ids 0, 1, 2)"
