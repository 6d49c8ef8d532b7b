"""Helpers for `make demo`, run with the LocalStack venv's Python (boto3 comes with it).

  demo.py send SOURCE_URL N   sends N sample Sentry-like events and 2 invalid bodies
  demo.py show DEST_URL       receives what arrived at the destination and prints it
  demo.py statsd PORT FILE    a tiny statsd server: writes every line it receives to FILE
"""

import json
import os
import socket
import sys
import uuid

import boto3


def client():
    return boto3.client(
        "sqs",
        endpoint_url=os.environ.get("AWS_ENDPOINT_URL", "http://127.0.0.1:4566"),
        region_name=os.environ.get("AWS_REGION", "us-east-1"),
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )


def send(queue_url, n):
    sqs = client()
    levels = ["error", "warning", "fatal"]
    bodies = []
    for i in range(n):
        bodies.append(json.dumps({
            "event_id": uuid.uuid4().hex,
            "project_id": 1 + i % 3,
            "organization_id": 42,
            "platform": "python",
            "level": levels[i % 3],
            "message": f"ZeroDivisionError: division by zero (#{i})",
            "timestamp": "2026-11-22T10:00:00Z",
            "tags": [["environment", "production"], ["release", "web@1.4.2"], ["level", levels[i % 3]]],
            "exception": {"values": [{"type": "ZeroDivisionError", "value": "division by zero"}]},
        }))
    bodies += ["this is not json", json.dumps({"event_id": "nope", "project_id": 1, "organization_id": 42})]
    for start in range(0, len(bodies), 10):
        entries = [{"Id": str(j), "MessageBody": b} for j, b in enumerate(bodies[start:start + 10])]
        sqs.send_message_batch(QueueUrl=queue_url, Entries=entries)
    print(f"sent {n} events and 2 invalid bodies to the source queue")


def show(queue_url):
    sqs = client()
    seen = []
    while True:
        out = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1)
        messages = out.get("Messages", [])
        if not messages:
            break
        for m in messages:
            seen.append(json.loads(m["Body"]))
            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=m["ReceiptHandle"])
    print(f"{len(seen)} events arrived at the destination; the first two, in short:")
    for event in seen[:2]:
        short = {k: event.get(k) for k in ("event_id", "project_id", "tags", "tag_ids")}
        print("  " + json.dumps(short))


def statsd(port, path):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", port))
    with open(path, "a", buffering=1) as out:
        while True:
            data, _ = sock.recvfrom(65535)
            out.write(data.decode("utf-8", "replace").rstrip("\n") + "\n")


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "send":
        send(sys.argv[2], int(sys.argv[3]))
    elif cmd == "show":
        show(sys.argv[2])
    elif cmd == "statsd":
        statsd(int(sys.argv[2]), sys.argv[3])
    else:
        sys.exit(__doc__)
