#!/usr/bin/env bash
# Shared or separate models for the demo's three rate points? Trains one separate one-rate model per
# rate point (jobs/configs/demo_stage2_separate.json), each from the ninth stage-2 run's model at its
# rate's initial gain, then compares them with the joint run's model at equal bytes on the validation
# split (scripts/compare_rate_points.py). Run after jobs/configs/demo.sh; about 50 min on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/../.."
RUN=${RUN:-out/demo-train}
START=${START:-$RUN/stage2-haarpsi-rate12/model}   # the ninth run's model (the one-rate demo)
JOINT=${JOINT:-$RUN/stage2-rates/best-model}
export RAY_AUTH_MODE=disabled OMP_WAIT_POLICY=PASSIVE
sprdiff=.venv/bin/sprdiff
# rate id : λ_b : initial gain, as in jobs/configs/demo_stage2_rates.json
points=(0:24:0.55 1:12:1.2 2:6:1.8)
separate=()
for point in "${points[@]}"; do
    IFS=: read -r rate lambda gain <<< "$point"
    [ -d "$RUN/separate-start-$rate" ] || .venv/bin/python scripts/fold_rate_gain.py "$START" "$gain" "$RUN/separate-start-$rate"
    $sprdiff train --stage 2 --config jobs/configs/demo.json --config jobs/configs/demo_stage2_separate.json \
        --data "$RUN/shards-rates" --output "$RUN/separate-$rate" --resume --cpus-per-worker 2 \
        --model "$RUN/separate-start-$rate" --lambda-rate "$lambda"
    separate+=("$RUN/separate-$rate/model")
done
.venv/bin/python scripts/compare_rate_points.py --validation "$RUN/validation-rates" --joint "$JOINT" \
    --separate "${separate[@]}" --output "$RUN/separate-comparison.json"
