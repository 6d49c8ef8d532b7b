"""Creates the demo queues in LocalStack and prints their URLs as shell variables.

The source queue has a redrive policy to its own dead-letter queue: a message that
cannot be forwarded is received at most 3 times and then moved there, never lost.
Run with the venv's Python (boto3 comes with LocalStack): .venv/bin/python init.py
"""

import json
import os

import boto3

ENDPOINT = os.environ.get("AWS_ENDPOINT_URL", "http://127.0.0.1:4566")
PREFIX = os.environ.get("DEMO_QUEUE_PREFIX", "forwarder")

sqs = boto3.client(
    "sqs",
    endpoint_url=ENDPOINT,
    region_name=os.environ.get("AWS_REGION", "us-east-1"),
    aws_access_key_id="test",
    aws_secret_access_key="test",
)

dlq = sqs.create_queue(QueueName=f"{PREFIX}-source-dlq")["QueueUrl"]
dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
source = sqs.create_queue(
    QueueName=f"{PREFIX}-source",
    Attributes={
        "VisibilityTimeout": "30",
        "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": "3"}),
    },
)["QueueUrl"]
dest = sqs.create_queue(QueueName=f"{PREFIX}-destination")["QueueUrl"]

print(f"FORWARDER_SOURCE_QUEUE_URL={source}")
print(f"FORWARDER_DEST_QUEUE_URL={dest}")
print(f"SOURCE_DLQ_URL={dlq}")
