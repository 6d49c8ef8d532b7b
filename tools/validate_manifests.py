"""Schema check of rendered Kubernetes manifests (stdin, as `kubectl kustomize` prints).

Built-in kinds go to kubernetes-validate (strict). KEDA's and the Prometheus Operator's
kinds, which it has no schema for, are checked here against the schemas below: the fields of keda.sh/v1alpha1
ScaledObject and TriggerAuthentication that this project uses or may use, no others, and
for the aws-sqs-queue trigger, the metadata KEDA requires. A kind with no schema at all
fails the check: nothing is passed over.
"""

import os
import subprocess
import sys
import tempfile

import jsonschema
import yaml

INT = {"type": "integer"}
STR = {"type": "string"}
NAME_REF = {
    "type": "object",
    "required": ["name"],
    "additionalProperties": False,
    "properties": {"name": STR, "kind": {"enum": ["TriggerAuthentication", "ClusterTriggerAuthentication"]}},
}
METADATA = {"type": "object", "required": ["name"], "properties": {"name": STR, "namespace": STR, "labels": {"type": "object"}, "annotations": {"type": "object"}}}

SCALED_OBJECT = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "ScaledObject"},
        "metadata": METADATA,
        "spec": {
            "type": "object",
            "required": ["scaleTargetRef", "triggers"],
            "additionalProperties": False,
            "properties": {
                "scaleTargetRef": {
                    "type": "object",
                    "required": ["name"],
                    "additionalProperties": False,
                    "properties": {"name": STR, "kind": STR, "apiVersion": STR, "envSourceContainerName": STR},
                },
                "pollingInterval": INT,
                "cooldownPeriod": INT,
                "initialCooldownPeriod": INT,
                "idleReplicaCount": INT,
                "minReplicaCount": INT,
                "maxReplicaCount": INT,
                "advanced": {"type": "object"},
                "fallback": {
                    "type": "object",
                    "required": ["failureThreshold", "replicas"],
                    "properties": {"failureThreshold": INT, "replicas": INT},
                },
                "triggers": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["type", "metadata"],
                        "additionalProperties": False,
                        "properties": {
                            "type": STR,
                            "name": STR,
                            "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                            "useCachedMetrics": {"type": "boolean"},
                            "metadata": {"type": "object", "additionalProperties": STR},
                            "authenticationRef": NAME_REF,
                        },
                        "if": {"properties": {"type": {"const": "aws-sqs-queue"}}},
                        "then": {
                            "properties": {
                                "metadata": {
                                    "required": ["awsRegion"],
                                    "oneOf": [{"required": ["queueURL"]}, {"required": ["queueURLFromEnv"]}],
                                    "properties": {
                                        "queueLength": {"pattern": "^[0-9]+$"},
                                        "activationQueueLength": {"pattern": "^[0-9]+$"},
                                        "scaleOnInFlight": {"enum": ["true", "false"]},
                                        "scaleOnDelayed": {"enum": ["true", "false"]},
                                    },
                                }
                            }
                        },
                    },
                },
            },
        },
    },
}

TRIGGER_AUTHENTICATION = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "TriggerAuthentication"},
        "metadata": METADATA,
        "spec": {
            "type": "object",
            "minProperties": 1,
            "additionalProperties": False,
            "properties": {
                "podIdentity": {
                    "type": "object",
                    "required": ["provider"],
                    "additionalProperties": False,
                    "properties": {
                        "provider": {"enum": ["none", "azure-workload", "gcp", "aws", "aws-eks"]},
                        "identityOwner": {"enum": ["keda", "workload"]},
                        "roleArn": STR,
                        "identityId": STR,
                    },
                },
                "secretTargetRef": {"type": "array"},
                "env": {"type": "array"},
            },
        },
    },
}

DURATION = {"type": "string", "pattern": "^([0-9]+(ms|s|m|h))+$"}

POD_MONITOR = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "PodMonitor"},
        "metadata": METADATA,
        "spec": {
            "type": "object",
            "required": ["selector", "podMetricsEndpoints"],
            "additionalProperties": False,
            "properties": {
                "selector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {"matchLabels": {"type": "object", "additionalProperties": STR}, "matchExpressions": {"type": "array"}},
                },
                "namespaceSelector": {"type": "object"},
                "jobLabel": STR,
                "podMetricsEndpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "port": STR,
                            "path": STR,
                            "scheme": {"enum": ["http", "https"]},
                            "interval": DURATION,
                            "scrapeTimeout": DURATION,
                            "honorLabels": {"type": "boolean"},
                            "relabelings": {"type": "array"},
                            "metricRelabelings": {"type": "array"},
                        },
                    },
                },
            },
        },
    },
}

RULE = {
    "type": "object",
    "required": ["expr"],
    "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
    "additionalProperties": False,
    "properties": {
        "alert": {"type": "string", "pattern": "^[a-zA-Z_][a-zA-Z0-9_]*$"},
        "record": STR,
        "expr": STR,
        "for": DURATION,
        "keep_firing_for": DURATION,
        "labels": {"type": "object", "additionalProperties": STR},
        "annotations": {"type": "object", "additionalProperties": STR},
    },
}

PROMETHEUS_RULE = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "PrometheusRule"},
        "metadata": METADATA,
        "spec": {
            "type": "object",
            "required": ["groups"],
            "additionalProperties": False,
            "properties": {
                "groups": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["name", "rules"],
                        "additionalProperties": False,
                        "properties": {"name": STR, "interval": DURATION, "rules": {"type": "array", "minItems": 1, "items": RULE}},
                    },
                },
            },
        },
    },
}

SCHEMAS = {
    ("keda.sh/v1alpha1", "ScaledObject"): SCALED_OBJECT,
    ("keda.sh/v1alpha1", "TriggerAuthentication"): TRIGGER_AUTHENTICATION,
    ("monitoring.coreos.com/v1", "PodMonitor"): POD_MONITOR,
    ("monitoring.coreos.com/v1", "PrometheusRule"): PROMETHEUS_RULE,
}


def is_builtin(api_version: str) -> bool:
    """Kubernetes' own groups: core (`v1`), unqualified (`apps`) or `*.k8s.io`."""
    group = api_version.rpartition("/")[0]
    return group == "" or "." not in group or group.endswith(".k8s.io")


def seconds(value: str) -> int:
    value = value.strip()
    if value.endswith("ms"):
        return -(-int(value[:-2]) // 1000)
    if value.endswith("m"):
        return int(value[:-1]) * 60
    return int(value.rstrip("s"))


def grace_fits_shutdown(docs) -> bool:
    """The pod's grace period must cover the shutdown bound, the hand-back of what is
    still unsettled at the bound (6 s) and the metrics flush: the bound plus 10 s. The
    long poll is cancelled at SIGTERM, so it costs nothing here."""
    config = {}
    for doc in docs:
        if doc.get("kind") == "ConfigMap":
            config.update(doc.get("data", {}))
    bound = seconds(config.get("FORWARDER_SHUTDOWN_TIMEOUT", "30s"))
    spare = 10
    ok = True
    for doc in docs:
        if doc.get("kind") == "Deployment":
            grace = doc["spec"]["template"]["spec"].get("terminationGracePeriodSeconds", 30)
            need = bound + spare
            fits = grace > need
            print(f"{'ok  ' if fits else 'FAIL'} terminationGracePeriodSeconds {grace} > shutdown bound {bound} s + {spare} s for the hand-back and the flush")
            ok &= fits
    return ok


def main() -> int:
    docs = [d for d in yaml.safe_load_all(sys.stdin) if d]
    builtin, failed = [], False
    for doc in docs:
        key = (doc.get("apiVersion"), doc.get("kind"))
        name = f"{key[1]}/{doc.get('metadata', {}).get('name')}"
        if key in SCHEMAS:
            errors = list(jsonschema.Draft202012Validator(SCHEMAS[key]).iter_errors(doc))
            for e in errors:
                print(f"FAIL {name}: {'/'.join(map(str, e.absolute_path))}: {e.message}")
            failed |= bool(errors)
            if not errors:
                print(f"ok   {name} ({key[0].split('/')[0]} schema)")
        elif not is_builtin(str(key[0])):
            print(f"FAIL {name}: no schema for {key[0]} {key[1]}")
            failed = True
        else:
            builtin.append(doc)
    failed |= not grace_fits_shutdown(docs)
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        yaml.safe_dump_all(builtin, f)
        f.flush()
        out = subprocess.run(
            [os.path.join(os.path.dirname(sys.executable), "kubernetes-validate"), "--strict", f.name],
            capture_output=True,
            text=True,
        )
    text = out.stdout + out.stderr
    print(text.strip())
    if out.returncode != 0 or "WARN" in text or "ERROR" in text:
        failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
