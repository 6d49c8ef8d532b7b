#!/usr/bin/env bash
# The alert rules against a real promtool: `promtool check rules` on the rules of
# deploy/kubernetes/monitoring/prometheusrule.yaml (its spec, the rule file plain
# Prometheus loads), then `promtool test rules deploy/prometheus/alerts_test.yaml`.
# promtool comes from Debian's prometheus package (tools/install-prometheus.sh).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bin="$(tools/install.sh)"
prom="$(tools/install-prometheus.sh)"
dir="$(mktemp -d)"
trap 'rm -rf "$dir"' EXIT
"$bin/python" - deploy/kubernetes/monitoring/prometheusrule.yaml "$dir/alerts.yaml" <<'PY'
import sys, yaml
rule = yaml.safe_load(open(sys.argv[1]))
assert rule["kind"] == "PrometheusRule", rule["kind"]
yaml.safe_dump(rule["spec"], open(sys.argv[2], "w"), sort_keys=False)
PY
cp deploy/prometheus/alerts_test.yaml "$dir/"
echo "promtool check rules (deploy/kubernetes/monitoring/prometheusrule.yaml)"
"$prom/promtool" check rules "$dir/alerts.yaml"
echo "promtool test rules deploy/prometheus/alerts_test.yaml"
(cd "$dir" && "$prom/promtool" test rules alerts_test.yaml)
