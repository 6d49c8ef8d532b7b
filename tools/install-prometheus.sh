#!/usr/bin/env bash
# Prometheus and promtool from Debian's prometheus package (2.42), installed once with
# apt-get where they are missing; the package's service is not started (no init here).
# Prints the directory holding both.
set -euo pipefail
if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null; then
  if [[ "$(id -u)" != 0 ]]; then
    echo "install-prometheus: promtool is missing and apt-get needs root" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  exec 9>/tmp/sqs-forwarder-apt.lock
  flock 9
  if ! command -v promtool >/dev/null; then
    apt-get install -y --no-install-recommends prometheus >&2 \
      || { apt-get update >&2 && apt-get install -y --no-install-recommends prometheus >&2; }
  fi
fi
dirname "$(command -v promtool)"
