"""Turn a CustomResourceDefinition into the JSON schema the deploy test validates against (offline).

    python tests/data/k8s/strip_crd.py CRD.yaml VERSION > tests/data/k8s/KIND-VERSION.json

Keeps the served version's openAPIV3Schema without its `description`s (they are most of the bytes and do not
change what validates). The sources and their commits are listed in tests/data/k8s/README.md.
"""

from __future__ import annotations

import json
import sys

import yaml


def strip(node: object) -> object:
    if isinstance(node, dict):
        return {k: strip(v) for k, v in node.items() if k != "description"}
    if isinstance(node, list):
        return [strip(v) for v in node]
    return node


def main() -> None:
    path, version = sys.argv[1], sys.argv[2]
    with open(path) as f:
        crd = yaml.safe_load(f)
    (served,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    json.dump(strip(served["schema"]["openAPIV3Schema"]), sys.stdout, separators=(",", ":"), sort_keys=True)


if __name__ == "__main__":
    main()
