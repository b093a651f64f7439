#!/usr/bin/env bash
# A local S3 endpoint for development: moto_server (from the project's .venv) on 127.0.0.1, with
# a bucket, and the AWS variables that point botocore, s3fs, pyarrow and Ray's workers at it.
#
#   eval "$(bash infra/local/moto.sh start)"   # start it (or reuse a running one), export the variables
#   eval "$(bash infra/local/moto.sh env)"     # export the variables again (another shell)
#   bash infra/local/moto.sh run -- CMD ARGS   # start, run CMD with the variables, stop if started here
#   bash infra/local/moto.sh stop              # stop it (its data is in memory and goes with it)
#
# Settings: SPRDIFF_S3_PORT (default 9300), SPRDIFF_S3_BUCKET (default sprdiff-local),
# SPRDIFF_S3_STATE (pid and log folder, default /tmp/sprdiff-local-s3-$PORT).
# Only the export lines go to stdout; messages go to stderr.
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
port=${SPRDIFF_S3_PORT:-9300}
bucket=${SPRDIFF_S3_BUCKET:-sprdiff-local}
state=${SPRDIFF_S3_STATE:-/tmp/sprdiff-local-s3-$port}
python=${SPRDIFF_PYTHON:-$repo/.venv/bin/python}
endpoint="http://127.0.0.1:$port"
pidfile="$state/moto_server.pid"

say() { echo "moto.sh: $*" >&2; }

exports() {
  cat <<EOF
export AWS_ENDPOINT_URL=$endpoint
export AWS_ACCESS_KEY_ID=testing
export AWS_SECRET_ACCESS_KEY=testing
export AWS_REGION=us-east-1
export AWS_DEFAULT_REGION=us-east-1
unset AWS_SESSION_TOKEN AWS_PROFILE
export SPRDIFF_BUCKET=s3://$bucket
EOF
}

# The pid of the moto_server this script started, if it is still that process.
running_pid() {
  [ -f "$pidfile" ] || return 1
  local pid
  pid=$(cat "$pidfile")
  [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' < "/proc/$pid/cmdline" | grep -q moto_server && echo "$pid"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; }

start() {
  if pid=$(running_pid); then
    say "moto_server already running (pid $pid) on $endpoint"
  else
    if port_open; then
      say "127.0.0.1:$port is taken by another program: choose another SPRDIFF_S3_PORT"
      exit 1
    fi
    local server
    server=$(dirname "$python")/moto_server
    [ -x "$server" ] || server=$(command -v moto_server || true)
    if [ -z "$server" ]; then
      say "moto_server not found: run bash scripts/setup.sh (it installs the test extras)"
      exit 1
    fi
    mkdir -p "$state"
    nohup "$server" -H 127.0.0.1 -p "$port" > "$state/moto_server.log" 2>&1 < /dev/null &
    echo $! > "$pidfile"
    for _ in $(seq 1 150); do
      port_open && break
      if ! running_pid > /dev/null; then
        say "moto_server exited; its log:"
        cat "$state/moto_server.log" >&2
        exit 1
      fi
      sleep 0.2
    done
    port_open || { say "moto_server did not open $endpoint in 30 s"; stop; exit 1; }
    say "moto_server (pid $(cat "$pidfile")) on $endpoint, log $state/moto_server.log"
  fi
  env -u AWS_SESSION_TOKEN -u AWS_PROFILE AWS_ENDPOINT_URL="$endpoint" AWS_ACCESS_KEY_ID=testing \
    AWS_SECRET_ACCESS_KEY=testing AWS_REGION=us-east-1 "$python" - "$bucket" <<'EOF' >&2
import sys

import boto3

s3 = boto3.client("s3")
if sys.argv[1] not in {b["Name"] for b in s3.list_buckets()["Buckets"]}:
    s3.create_bucket(Bucket=sys.argv[1])
print(f"moto.sh: bucket s3://{sys.argv[1]} ready")
EOF
}

stop() {
  if pid=$(running_pid); then
    kill "$pid"
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then kill -9 "$pid"; fi
    say "stopped moto_server (pid $pid)"
  else
    say "no moto_server of this script is running on port $port"
  fi
  rm -f "$pidfile"
}

case "${1:-}" in
  start) start; exports ;;
  env) exports ;;
  stop) stop ;;
  run)
    shift
    [ "${1:-}" = "--" ] && shift
    [ $# -gt 0 ] || { say "usage: moto.sh run -- COMMAND [ARGS...]"; exit 2; }
    # Stop on the way out (also when CMD fails or is interrupted), unless it was running before.
    running_pid > /dev/null || trap stop EXIT
    start
    eval "$(exports)"
    "$@"
    ;;
  *) sed -n '2,14p' "$0" >&2; exit 2 ;;
esac
