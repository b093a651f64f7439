#!/usr/bin/env bash
# Retrains the shipped `demo` model (sprdiff/pretrained/demo) from nothing, exactly as it was made:
# shards of ../shared/data/photos minus 5 held-out photos, then stages 0, 1 and 2 with
# jobs/configs/demo.json, a second stage-2 run from the first one's model
# (jobs/configs/demo_stage2_continued.json), a third from the second's (jobs/configs/demo_stage2_third.json),
# a fourth on 256x256 crops from the third's (jobs/configs/demo_stage2_crop256.json), a fifth on 512x512
# crops from the fourth's (jobs/configs/demo_stage2_crop512.json), a sixth like it from the fifth's
# (jobs/configs/demo_stage2_crop512_second.json), a seventh and eighth with the HaarPSI term
# (jobs/configs/demo_stage2_haarpsi.json, demo_stage2_haarpsi_second.json), a ninth like them at
# λ_b = 12 (jobs/configs/demo_stage2_haarpsi_rate12.json), then copies the model into the package
# (its evaluation report: jobs/configs/demo_eval.sh).
# About 10 h of training on 2 CPU cores.
# Rerunning resumes each stage from its last checkpoint under $RUN.
set -euo pipefail
cd "$(dirname "$0")/../.."
PHOTOS=${PHOTOS:-../shared/data/photos}
RUN=${RUN:-out/demo-train}
CONFIG=jobs/configs/demo.json
HELD_OUT=(045.png 046.png 047.png 048.png 049.png)  # validation: never in the shards

bash scripts/setup.sh
export RAY_AUTH_MODE=disabled
export OMP_WAIT_POLICY=PASSIVE  # two torch threads on two shared cores: sleep, do not spin, when waiting
sprdiff=.venv/bin/sprdiff

exclude=()
for name in "${HELD_OUT[@]}"; do exclude+=(--exclude "$name"); done
$sprdiff make-shards --input "$PHOTOS" --output "$RUN/shards" --crop 128 --per-shard 16 "${exclude[@]}"

$sprdiff train --stage 0 --config "$CONFIG" --data "$RUN/shards" --output "$RUN/stage0" --resume --cpus-per-worker 2
$sprdiff train --stage 1 --config "$CONFIG" --data "$RUN/shards" --output "$RUN/stage1" --resume --cpus-per-worker 2 \
    --model "$RUN/stage0/model"
$sprdiff train --stage 2 --config "$CONFIG" --data "$RUN/shards" --output "$RUN/stage2" --resume --cpus-per-worker 2 \
    --model "$RUN/stage1/model"
$sprdiff train --stage 2 --config "$CONFIG" --config jobs/configs/demo_stage2_continued.json --data "$RUN/shards" \
    --output "$RUN/stage2-continued" --resume --cpus-per-worker 2 --model "$RUN/stage2/model"
$sprdiff train --stage 2 --config "$CONFIG" --config jobs/configs/demo_stage2_third.json --data "$RUN/shards" \
    --output "$RUN/stage2-third" --resume --cpus-per-worker 2 --model "$RUN/stage2-continued/model"
$sprdiff train --stage 2 --config "$CONFIG" --config jobs/configs/demo_stage2_crop256.json --data "$RUN/shards" \
    --output "$RUN/stage2-crop256" --resume --cpus-per-worker 2 --model "$RUN/stage2-third/model"
$sprdiff train --stage 2 --config "$CONFIG" --config jobs/configs/demo_stage2_crop512.json --data "$RUN/shards" \
    --output "$RUN/stage2-crop512" --resume --cpus-per-worker 2 --model "$RUN/stage2-crop256/model"
$sprdiff train --stage 2 --config "$CONFIG" --config jobs/configs/demo_stage2_crop512_second.json --data "$RUN/shards" \
    --output "$RUN/stage2-crop512-second" --resume --cpus-per-worker 2 --model "$RUN/stage2-crop512/model"
$sprdiff train --stage 2 --config "$CONFIG" --config jobs/configs/demo_stage2_haarpsi.json --data "$RUN/shards" \
    --output "$RUN/stage2-haarpsi" --resume --cpus-per-worker 2 --model "$RUN/stage2-crop512-second/model"
$sprdiff train --stage 2 --config "$CONFIG" --config jobs/configs/demo_stage2_haarpsi_second.json --data "$RUN/shards" \
    --output "$RUN/stage2-haarpsi-second" --resume --cpus-per-worker 2 --model "$RUN/stage2-haarpsi/model"
$sprdiff train --stage 2 --config "$CONFIG" --config jobs/configs/demo_stage2_haarpsi_rate12.json --data "$RUN/shards" \
    --output "$RUN/stage2-haarpsi-rate12" --resume --cpus-per-worker 2 --model "$RUN/stage2-haarpsi-second/model"

rm -rf sprdiff/pretrained/demo
mkdir -p sprdiff/pretrained
cp -r "$RUN/stage2-haarpsi-rate12/model" sprdiff/pretrained/demo
echo "demo model written to sprdiff/pretrained/demo; evaluate it with: bash jobs/configs/demo_eval.sh"
