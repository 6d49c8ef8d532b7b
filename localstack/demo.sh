#!/usr/bin/env bash
# `make demo`: LocalStack, demo queues, sample events, the worker until idle, then what
# arrived and the metric lines it emitted.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ls_dir="$root/localstack"
py="$ls_dir/.venv/bin/python"
bin="${FORWARDER_BIN:-$root/target/debug/sqs-forwarder}"

"$ls_dir/start.sh"
export AWS_ENDPOINT_URL="${AWS_ENDPOINT_URL:-http://127.0.0.1:4566}" AWS_REGION="${AWS_REGION:-us-east-1}"
export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test
export DEMO_QUEUE_PREFIX="demo-$(date +%s)"
eval "$("$py" "$ls_dir/init.py" | sed 's/^/export /')"

metrics="$(mktemp)"
port=$(( 20000 + RANDOM % 20000 ))
"$py" "$ls_dir/demo.py" statsd "$port" "$metrics" &
statsd_pid=$!
trap 'kill $statsd_pid 2>/dev/null || true; rm -f "$metrics"' EXIT

echo
"$py" "$ls_dir/demo.py" send "$FORWARDER_SOURCE_QUEUE_URL" 50
echo
echo "== sqs-forwarder run --exit-when-idle 3"
FORWARDER_STATSD_ADDR="127.0.0.1:$port" FORWARDER_RECEIVE_WAIT_SECONDS=2 RUST_LOG="${RUST_LOG:-info}" \
  "$bin" run --exit-when-idle 3
sleep 1
echo
echo "== destination queue"
"$py" "$ls_dir/demo.py" show "$FORWARDER_DEST_QUEUE_URL"
echo
echo "== metric lines (counted)"
sort "$metrics" | sed -E 's/:[0-9.]+\|ms/:<n>|ms/; s/in_flight:[0-9]+/in_flight:<n>/' | sort | uniq -c | sort -rn
echo
echo "The 2 invalid bodies stay in the source queue; its redrive policy moves them to"
echo "$SOURCE_DLQ_URL after 3 receives."
