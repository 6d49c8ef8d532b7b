#!/usr/bin/env bash
# Starts LocalStack (SQS, S3, STS and SNS) on 127.0.0.1:4566 without Docker, installing it into
# localstack/.venv first if it is missing, and waits until it is healthy.
# Safe to run again: an already healthy LocalStack is left as it is.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.venv"
port="${LOCALSTACK_PORT:-4566}"
health="http://127.0.0.1:${port}/_localstack/health"
python="${PYTHON:-python3}"

healthy() {
  "$python" - "$health" <<'PY' 2>/dev/null
import json, sys, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1], timeout=2) as r:
        services = json.load(r).get("services", {})
except Exception:
    sys.exit(1)
sys.exit(0 if all(services.get(s) in ("running", "available") for s in ("sqs", "s3", "sts", "sns")) else 1)
PY
}

if healthy; then
  echo "localstack: already running on 127.0.0.1:${port}"
  exit 0
fi

stamp="$venv/.requirements.sha"
want="$(sha256sum "$here/requirements.txt" | cut -d' ' -f1)"
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "localstack: installing into $venv (pinned in requirements.txt)"
  "$python" -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt"
  echo "$want" > "$stamp"
fi

mkdir -p "$here/.state"
echo "localstack: starting on 127.0.0.1:${port} (log: localstack/localstack.log)"
(
  cd "$here/.state"
  GATEWAY_LISTEN="127.0.0.1:${port}" \
  SERVICES=sqs,s3,sts,sns \
  DNS_ADDRESS=0 \
  SKIP_SSL_CERT_DOWNLOAD=1 \
  DISABLE_EVENTS=1 \
  SQS_ENDPOINT_STRATEGY=path \
  LOCALSTACK_HOST="127.0.0.1:${port}" \
  FILESYSTEM_ROOT="$here/.state/fs" \
  setsid nohup "$venv/bin/python" -m localstack.runtime.main \
    > "$here/localstack.log" 2>&1 < /dev/null &
  echo $! > "$here/localstack.pid"
)

for _ in $(seq 1 120); do
  if healthy; then
    echo "localstack: healthy"
    exit 0
  fi
  if ! kill -0 "$(cat "$here/localstack.pid")" 2>/dev/null; then
    echo "localstack: exited during start; last lines of localstack/localstack.log:" >&2
    tail -n 30 "$here/localstack.log" >&2
    exit 1
  fi
  sleep 1
done
echo "localstack: not healthy after 120 s; last lines of localstack/localstack.log:" >&2
tail -n 30 "$here/localstack.log" >&2
exit 1
