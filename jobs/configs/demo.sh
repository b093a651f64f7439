#!/usr/bin/env bash
# Retrains the shipped `demo` model (sprdiff/pretrained/demo) from nothing, exactly as it was made:
# shards of ../shared/data/photos minus 5 held-out photos, then stages 0, 1 and 2 with
# jobs/configs/demo.json, then eight more stage-2 runs (later_runs below: each merges its config
# over demo.json and starts from the previous run's model), then one run that gives it three rate
# points (2,400 joint steps, validated on a split of the training photos) and one that trains their
# gains at 30x the lr (600 steps), then copies that last run's best model into the package (its
# evaluation report: jobs/configs/demo_eval.sh).
# About 12.5 h of training on 2 CPU cores.
# Rerunning resumes each stage from its last checkpoint under $RUN.
set -euo pipefail
cd "$(dirname "$0")/../.."
PHOTOS=${PHOTOS:-../shared/data/photos}
RUN=${RUN:-out/demo-train}
CONFIG=jobs/configs/demo.json
HELD_OUT=(045.png 046.png 047.png 048.png 049.png)  # the final report's photos: never in any shards
# Carved out of the training photos for the rate-points run: it trains without them and they choose
# its best checkpoint (the held-out photos choose nothing).
VALIDATION=(008.png 017.png 026.png 035.png 044.png)

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
# Each later stage-2 run starts from the previous run's exported model: "config:output folder".
later_runs=(demo_stage2_continued.json:stage2-continued demo_stage2_third.json:stage2-third
            demo_stage2_crop256.json:stage2-crop256 demo_stage2_crop512.json:stage2-crop512
            demo_stage2_crop512_second.json:stage2-crop512-second demo_stage2_haarpsi.json:stage2-haarpsi
            demo_stage2_haarpsi_second.json:stage2-haarpsi-second
            demo_stage2_haarpsi_rate12.json:stage2-haarpsi-rate12)
previous=stage2
for run in "${later_runs[@]}"; do
    $sprdiff train --stage 2 --config "$CONFIG" --config "jobs/configs/${run%%:*}" --data "$RUN/shards" \
        --output "$RUN/${run#*:}" --resume --cpus-per-worker 2 --model "$RUN/$previous/model"
    previous=${run#*:}
done

# Three rate points in one model (jobs/configs/demo_stage2_rates.json): trained without the validation
# split, which picks the best checkpoint; that one (OUTPUT/best-model) is shipped.
split=()
for name in "${VALIDATION[@]}"; do split+=(--include "$name"); done
$sprdiff make-shards --input "$PHOTOS" --output "$RUN/validation-rates" --crop 512 --per-shard 16 "${split[@]}"
for name in "${VALIDATION[@]}"; do exclude+=(--exclude "$name"); done
$sprdiff make-shards --input "$PHOTOS" --output "$RUN/shards-rates" --crop 128 --per-shard 16 "${exclude[@]}"
$sprdiff train --stage 2 --config "$CONFIG" --config jobs/configs/demo_stage2_rates.json --data "$RUN/shards-rates" \
    --validation-data "$RUN/validation-rates" --output "$RUN/stage2-rates" --resume --cpus-per-worker 2 \
    --model "$RUN/$previous/model"
# The rate points' own parameters at 30x the lr (jobs/configs/demo_stage2_rates_lr.json), from that run's best model
$sprdiff train --stage 2 --config "$CONFIG" --config jobs/configs/demo_stage2_rates.json \
    --config jobs/configs/demo_stage2_rates_lr.json --data "$RUN/shards-rates" --validation-data "$RUN/validation-rates" \
    --output "$RUN/stage2-rates-lr" --resume --cpus-per-worker 2 --model "$RUN/stage2-rates/best-model"
shipped="$RUN/stage2-rates-lr/best-model"  # a pointer (pipeline/training/export.py) to the best checkpoint's model

# A demo that has shipped is never overwritten (its records must keep decoding): before this step,
# `git mv sprdiff/pretrained/demo sprdiff/pretrained/demo-<date it shipped>`, name it in
# sprdiff.presets.SHIPPED_MODELS, and add goldens of the new one (tests/codec/test_shipped_goldens.py).
rm -rf sprdiff/pretrained/demo
mkdir -p sprdiff/pretrained/demo
# copy the stored weights the pointer names (their model card, README.md, names this machine's paths
# and stays with the run)
latest=$(.venv/bin/python -c "from sprdiff.model_pointer import read_pointer; print(read_pointer('$shipped').target)")
cp "$latest/config.json" "$latest/model.safetensors" sprdiff/pretrained/demo/
echo "demo model written to sprdiff/pretrained/demo; evaluate it with: bash jobs/configs/demo_eval.sh"
