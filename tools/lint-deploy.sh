#!/usr/bin/env bash
# Lints everything under deploy/ (and the YAML in localstack/) with real linters from
# PyPI (tools/requirements.txt), and the alert rules with promtool (Debian's package).
# Each one runs, and each prints its verdict; any failure fails the whole.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bin="$(tools/install.sh)"

echo "hadolint deploy/Dockerfile"
"$bin/hadolint" deploy/Dockerfile

echo "yamllint deploy localstack"
"$bin/yamllint" --strict deploy localstack .yamllint.yaml

echo "cfn-lint deploy/lambda/template.yaml"
"$bin/cfn-lint" deploy/lambda/template.yaml

echo "kubectl kustomize deploy/kubernetes | schema check"
"$bin/kubectl" kustomize deploy/kubernetes | "$bin/python" tools/validate_manifests.py

echo "kubectl kustomize deploy/examples/kubernetes-monitoring | schema check"
"$bin/kubectl" kustomize deploy/examples/kubernetes-monitoring | "$bin/python" tools/validate_manifests.py

tools/promtool.sh

echo "deploy/grafana/sqs-forwarder.json is JSON"
"$bin/python" -m json.tool deploy/grafana/sqs-forwarder.json > /dev/null

echo "deploy lint: ok"
