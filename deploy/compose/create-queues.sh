#!/usr/bin/env bash
# LocalStack ready hook: the queues and bucket the compose worker uses.
set -euo pipefail
awslocal sqs create-queue --queue-name forwarder-source >/dev/null
awslocal sqs create-queue --queue-name forwarder-dest >/dev/null
awslocal sqs create-queue --queue-name forwarder-dlq >/dev/null
awslocal s3 mb s3://forwarder-oversized >/dev/null
echo "queues and bucket ready"
