"""deploy/kubernetes validated offline: core kinds against Kubernetes' own schemas (kubernetes-validate,
strict: no unknown fields), Gateway API and Inference Extension kinds against their CRDs' schemas
(tests/data/k8s), and the wiring between them: pool -> pods, picker flags -> metrics tgi-async exports,
container args -> flags `tgi-async launch` takes."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tgi_async import metrics

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = ROOT / "deploy" / "kubernetes"
SCHEMAS = Path(__file__).parent / "data" / "k8s"
KUBERNETES_VERSION = "1.33"
CRD_SCHEMAS = {
    ("inference.networking.k8s.io/v1", "InferencePool"): "inferencepool-v1.json",
    ("gateway.networking.k8s.io/v1", "Gateway"): "gateway-v1.json",
    ("gateway.networking.k8s.io/v1", "HTTPRoute"): "httproute-v1.json",
}
# The endpoint picker's flag for each gauge of the model-server protocol.
PICKER_METRIC_FLAGS = (
    "--total-queued-requests-metric",
    "--total-running-requests-metric",
    "--kv-cache-usage-percentage-metric",
    "--cache-info-metric",
    "--lora-info-metric",
)


def documents() -> list[dict]:
    docs = []
    for path in sorted(MANIFESTS.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


def by_kind(kind: str) -> list[dict]:
    return [d for d in documents() if d["kind"] == kind]


def named(kind: str, name: str) -> dict:
    (doc,) = [d for d in by_kind(kind) if d["metadata"]["name"] == name]
    return doc


@pytest.mark.parametrize("doc", documents(), ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_manifest_validates_against_its_schema(doc: dict) -> None:
    schema_file = CRD_SCHEMAS.get((doc["apiVersion"], doc["kind"]))
    if schema_file is None:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    else:
        jsonschema.validate(doc, json.loads((SCHEMAS / schema_file).read_text()))


def test_a_broken_manifest_is_caught() -> None:
    """The validators above can fail: a typo'd field and a wrong enum are refused."""
    deployment = named("Deployment", "tgi-async")
    typo = json.loads(json.dumps(deployment))
    typo["spec"]["replica"] = typo["spec"].pop("replicas")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(typo, KUBERNETES_VERSION, strict=True)
    pool = json.loads(json.dumps(named("InferencePool", "tgi-async")))
    pool["spec"]["endpointPickerRef"]["failureMode"] = "FailSometimes"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(pool, json.loads((SCHEMAS / "inferencepool-v1.json").read_text()))


def test_kustomization_lists_every_manifest() -> None:
    listed = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())["resources"]
    manifests = [p.name for p in MANIFESTS.glob("*.yaml") if p.name != "kustomization.yaml"]
    assert sorted(listed) == sorted(manifests)


def test_pool_selects_the_pods_on_their_port_and_names_its_picker() -> None:
    pool = named("InferencePool", "tgi-async")["spec"]
    pod = named("Deployment", "tgi-async")["spec"]["template"]
    assert pool["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    (container,) = pod["spec"]["containers"]
    assert [t["number"] for t in pool["targetPorts"]] == [p["containerPort"] for p in container["ports"]]
    picker_service = named("Service", pool["endpointPickerRef"]["name"])
    assert pool["endpointPickerRef"]["port"]["number"] in [p["port"] for p in picker_service["spec"]["ports"]]
    route = named("HTTPRoute", "tgi-async")["spec"]
    assert route["rules"][0]["backendRefs"][0] == {
        "group": "inference.networking.k8s.io",
        "kind": "InferencePool",
        "name": "tgi-async",
    }


def test_picker_reads_metrics_tgi_async_exports() -> None:
    """A renamed gauge would leave the picker blind, silently: its flags must name registered gauges."""
    (picker,) = named("Deployment", "tgi-async-epp")["spec"]["template"]["spec"]["containers"]
    args = picker["args"]
    exported = {m.name: m for m in metrics.REGISTRY.metrics}
    for flag in PICKER_METRIC_FLAGS:
        name = args[args.index(flag) + 1]
        assert name in exported and exported[name].kind == "gauge", (flag, name)
    info = exported[args[args.index("--cache-info-metric") + 1]]
    assert set(info.labelnames) == {"block_size", "num_gpu_blocks"}
    lora = exported[args[args.index("--lora-info-metric") + 1]]
    assert set(lora.labelnames) == {"max_lora", "running_lora_adapters", "waiting_lora_adapters"}


def test_container_args_are_launch_flags_and_probes_hit_health() -> None:
    import argparse

    from tgi_async.launcher.cli import add_parser, config_from_args

    (container,) = named("Deployment", "tgi-async")["spec"]["template"]["spec"]["containers"]
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    entrypoint = ["launch", "--shard", "tgi"]  # deploy/Dockerfile's ENTRYPOINT after `tgi-async`
    args = [a.replace("$(MODEL_ID)", "org/model") for a in container["args"]]
    config = config_from_args(parser.parse_args([*entrypoint, *args]))
    assert config.port == container["ports"][0]["containerPort"] and config.hostname == "0.0.0.0"
    grace = named("Deployment", "tgi-async")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert config.graceful_termination_timeout < grace
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] == "/health"
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    assert f'ENTRYPOINT ["tgi-async", {", ".join(json.dumps(a) for a in entrypoint)}]' in dockerfile
