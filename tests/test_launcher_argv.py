"""`tgi-async launch` without processes: flags/env/defaults as TGI's launcher, the resolved limits, and the
argv/env of every child, as pure functions of a LaunchConfig and Facts."""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import replace

import pytest

from tgi_async.cli import build_parser
from tgi_async.launcher.cli import config_from_args
from tgi_async.launcher.config import LaunchConfig, LaunchError
from tgi_async.launcher.plan import (
    Facts,
    bundled_shard_args,
    fmt_float,
    notes,
    plan,
    resolve,
    router_args,
    shard_env,
    shard_log_level,
    tgi_shard_args,
)
from tgi_async.launcher.sizing import (
    GpuInfo,
    ModelConfig,
    compute_type,
    default_max_batch_prefill_tokens,
    parse_model_config,
    resolve_attention,
    resolve_num_shard,
    visible_devices,
)

# TGI v3.3.x launcher/src/main.rs `Args`: flag -> default (None: no default)
TGI_DEFAULTS = {
    "model_id": "bigscience/bloom-560m",
    "revision": None,
    "validation_workers": 2,
    "sharded": None,
    "num_shard": None,
    "quantize": None,
    "speculate": None,
    "dtype": None,
    "kv_cache_dtype": None,
    "trust_remote_code": False,
    "max_concurrent_requests": 128,
    "max_best_of": 2,
    "max_stop_sequences": 4,
    "max_top_n_tokens": 5,
    "max_input_tokens": None,
    "max_input_length": None,
    "max_total_tokens": None,
    "waiting_served_ratio": 0.3,
    "max_batch_prefill_tokens": None,
    "max_batch_total_tokens": None,
    "max_waiting_tokens": 20,
    "max_batch_size": None,
    "cuda_graphs": None,
    "hostname": "0.0.0.0",
    "port": 3000,
    "prometheus_port": 9000,
    "shard_uds_path": "/tmp/text-generation-server",
    "master_addr": "localhost",
    "master_port": 29500,
    "huggingface_hub_cache": None,
    "weights_cache_override": None,
    "disable_custom_kernels": False,
    "cuda_memory_fraction": 1.0,
    "rope_scaling": None,
    "rope_factor": None,
    "json_output": False,
    "otlp_endpoint": None,
    "otlp_service_name": "text-generation-inference.router",
    "cors_allow_origin": (),
    "api_key": None,
    "watermark_gamma": None,
    "watermark_delta": None,
    "ngrok": False,
    "ngrok_authtoken": None,
    "ngrok_edge": None,
    "tokenizer_config_path": None,
    "disable_grammar_support": False,
    "env": False,
    "max_client_batch_size": 4,
    "lora_adapters": None,
    "usage_stats": "on",
    "payload_limit": 2_000_000,
    "enable_prefill_logprobs": False,
    "graceful_termination_timeout": 90,
}

TINY = ModelConfig(
    max_position_embeddings=4096, head_dim=16, num_heads=4, num_kv_heads=4, num_layers=2, hidden_size=64,
    intermediate_size=128, model_type="llama", vocab_size=1024,
)  # fmt: skip
LLAMA_8B = parse_model_config(
    {
        "model_type": "llama", "hidden_size": 4096, "num_attention_heads": 32, "num_key_value_heads": 8,
        "num_hidden_layers": 32, "intermediate_size": 14336, "vocab_size": 128256,
        "max_position_embeddings": 131072,
    }
)  # fmt: skip
H100 = GpuInfo(name="NVIDIA H100 80GB HBM3", memory_mib=81559, compute_capability=(9, 0))
NO_ENV: dict[str, str] = {}
HAS_ROUTER = importlib.util.find_spec("tgi_async.router.cli") is not None
HAS_SHARD = importlib.util.find_spec("tgi_async.shard.cli") is not None


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No launcher env vars leak in from the machine."""
    for name in [*(n.upper() for n in TGI_DEFAULTS), "TGI_ASYNC_SCHEDULER", "TGI_ASYNC_SHARD", "LOG_LEVEL"]:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def parse(*argv: str) -> LaunchConfig:
    args = build_parser("launch").parse_args(["launch", *argv])
    return config_from_args(args)


def facts(**kwargs) -> Facts:
    return Facts(**{"environ": {}, "model": TINY, **kwargs})


def test_defaults_are_tgis(clean_env: pytest.MonkeyPatch) -> None:
    config = parse()
    assert {name: getattr(config, name) for name in TGI_DEFAULTS} == TGI_DEFAULTS
    assert (config.scheduler, config.shard) == ("async", "auto")


def test_every_tgi_flag_is_accepted(clean_env: pytest.MonkeyPatch) -> None:
    config = parse(
        "--model-id", "m", "--revision", "r", "--validation-workers", "3", "--sharded", "false",
        "--num-shard", "1", "--quantize", "awq", "--speculate", "2", "--dtype", "bfloat16",
        "--kv-cache-dtype", "fp8_e5m2", "--trust-remote-code", "--max-concurrent-requests", "7",
        "--max-best-of", "1", "--max-stop-sequences", "2", "--max-top-n-tokens", "3",
        "--max-input-tokens", "100", "--max-total-tokens", "200", "--waiting-served-ratio", "1.2",
        "--max-batch-prefill-tokens", "300", "--max-batch-total-tokens", "4000", "--max-waiting-tokens", "9",
        "--max-batch-size", "8", "--cuda-graphs", "1,2,0", "--hostname", "127.0.0.1", "-p", "8080",
        "--prometheus-port", "9100", "--shard-uds-path", "/tmp/x", "--master-addr", "h", "--master-port", "1",
        "--huggingface-hub-cache", "/c", "--weights-cache-override", "/w", "--disable-custom-kernels",
        "--cuda-memory-fraction", "0.5", "--rope-scaling", "dynamic", "--rope-factor", "2",
        "--json-output", "--otlp-endpoint", "http://o:4317", "--otlp-service-name", "svc",
        "--cors-allow-origin", "a", "--cors-allow-origin", "b", "--api-key", "k", "--watermark-gamma", "0.4",
        "--watermark-delta", "3", "--ngrok", "--ngrok-authtoken", "t", "--ngrok-edge", "e",
        "--tokenizer-config-path", "/t.json", "--disable-grammar-support", "--env",
        "--max-client-batch-size", "2", "--lora-adapters", "a/b", "--usage-stats", "no-stack",
        "--payload-limit", "10", "--enable-prefill-logprobs", "-g", "5", "--scheduler", "sync",
        "--shard", "bundled",
    )  # fmt: skip
    assert config.max_input_tokens == 100 and config.cuda_graphs == (1, 2, 0) and config.port == 8080
    assert config.cors_allow_origin == ("a", "b") and config.sharded is False and config.rope_factor == 2.0
    assert config.graceful_termination_timeout == 5 and config.env and config.ngrok
    assert (config.scheduler, config.shard) == ("sync", "bundled")


def test_env_vars_and_cli_precedence(clean_env: pytest.MonkeyPatch) -> None:
    for name, value in {
        "MODEL_ID": "from-env", "PORT": "8000", "TRUST_REMOTE_CODE": "true", "JSON_OUTPUT": "false",
        "CUDA_GRAPHS": "4,8", "CORS_ALLOW_ORIGIN": "http://x", "TGI_ASYNC_SCHEDULER": "sync",
        "SHARDED": "true", "WATERMARK_GAMMA": "0.25", "TGI_ASYNC_SHARD": "bundled",
    }.items():  # fmt: skip
        clean_env.setenv(name, value)
    config = parse()
    assert (config.model_id, config.port, config.trust_remote_code, config.json_output) == (
        "from-env",
        8000,
        True,
        False,
    )
    assert (config.cuda_graphs, config.cors_allow_origin, config.scheduler) == ((4, 8), ("http://x",), "sync")
    assert (config.sharded, config.watermark_gamma, config.shard) == (True, 0.25, "bundled")
    flags = parse("--model-id", "m", "--port", "1", "--cors-allow-origin", "y", "--scheduler", "async")
    assert (flags.model_id, flags.port, flags.cors_allow_origin, flags.scheduler) == ("m", 1, ("y",), "async")


def test_bad_values_are_clear_errors(clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        parse("--port", "eighty")
    assert "invalid int value: 'eighty'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse("--sharded", "maybe")
    assert "expected true or false" in capsys.readouterr().err
    clean_env.setenv("TGI_ASYNC_SCHEDULER", "fast")
    with pytest.raises(
        LaunchError, match=r"invalid value 'fast' for --scheduler \(env TGI_ASYNC_SCHEDULER\)"
    ):
        parse()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"max_input_tokens": 10, "max_input_length": 5},
            "Both `max_input_tokens` (10) and `max_input_length` (5)",
        ),
        (
            {"max_input_tokens": 10, "max_total_tokens": 10},
            "`max_input_tokens`(10) must be < `max_total_tokens`(10)",
        ),
        (
            {"max_input_length": 20, "max_total_tokens": 10},
            "`max_input_tokens`(20) must be < `max_total_tokens`(10)",
        ),
        ({"validation_workers": 0}, "`validation_workers` must be > 0"),
        (
            {"max_total_tokens": 200, "max_batch_total_tokens": 100},
            "`max_total_tokens` must be <= `max_batch_total",
        ),
        ({"ngrok": True}, "`ngrok-authtoken` must be set"),
        ({"ngrok": True, "ngrok_authtoken": "t"}, "`ngrok-edge` must be set"),
        ({"sharded": True, "num_shard": 1}, "`sharded` is true but `num_shard` <= 1"),
        ({"num_shard": 0}, "`num_shard` cannot be < 1"),
        ({"num_shard": 2, "quantize": "exl2"}, "not supported with `exl2`"),
        ({"lora_adapters": "a/b@r1@r2"}, "Invalid LoRA adapter format: a/b@r1@r2"),
        ({"shard": "tgi"}, "--shard tgi: text-generation-server is not importable"),
    ],
)
def test_validation_matches_tgi(changes: dict, message: str) -> None:
    with pytest.raises(LaunchError) as error:
        resolve(replace(LaunchConfig(), **changes), facts())
    assert message in str(error.value)


def test_num_shard_rules() -> None:
    assert visible_devices({"CUDA_VISIBLE_DEVICES": "0,1,2"}, None) == 3
    assert visible_devices({"NVIDIA_VISIBLE_DEVICES": "all"}, 8) == 8
    assert visible_devices({"NVIDIA_VISIBLE_DEVICES": "1,3"}, 8) == 2
    assert visible_devices({"ZE_AFFINITY_MASK": "0"}, None) == 1
    assert visible_devices({}, 4) is None
    assert resolve_num_shard(None, None, None) == 1
    assert resolve_num_shard(None, None, 4) == 4
    assert resolve_num_shard(False, None, 4) == 1
    assert resolve_num_shard(False, 3, 4) == 3
    assert resolve_num_shard(True, None, 2) == 2
    assert resolve_num_shard(None, 2, None) == 2
    with pytest.raises(LaunchError, match="only found 1 CUDA devices"):
        resolve_num_shard(True, None, 1)
    # the bundled shard is not tensor-parallel: visible GPUs alone do not multiply it, TGI's shard follows TGI
    gpus = {"CUDA_VISIBLE_DEVICES": "0,1"}
    assert resolve(LaunchConfig(), facts(environ=gpus)).num_shard == 1
    assert resolve(LaunchConfig(), facts(environ=gpus, tgi_shard=("tgs",))).num_shard == 2


def test_shard_kind_selection() -> None:
    assert resolve(LaunchConfig(shard="auto"), facts()).shard_kind == "bundled"
    assert resolve(LaunchConfig(shard="auto"), facts(tgi_shard=("tgs",))).shard_kind == "tgi"
    assert resolve(LaunchConfig(shard="bundled"), facts(tgi_shard=("tgs",))).shard_kind == "bundled"
    assert resolve(LaunchConfig(shard="tgi"), facts(tgi_shard=("tgs",))).shard_kind == "tgi"


def test_router_argv_defaults_follow_spawn_webserver() -> None:
    config = LaunchConfig(model_id="org/model")
    assert router_args(config, resolve(config, facts())) == [
        "--max-client-batch-size", "4",
        "--max-concurrent-requests", "128",
        "--max-best-of", "2",
        "--max-stop-sequences", "4",
        "--max-top-n-tokens", "5",
        "--max-batch-prefill-tokens", "4096",
        "--waiting-served-ratio", "0.3",
        "--max-waiting-tokens", "20",
        "--validation-workers", "2",
        "--hostname", "0.0.0.0",
        "--port", "3000",
        "--prometheus-port", "9000",
        "--master-shard-uds-path", "/tmp/text-generation-server-0",
        "--tokenizer-name", "org/model",
        "--payload-limit", "2000000",
        "--usage-stats", "on",
        "--otlp-service-name", "text-generation-inference.router",
        "--scheduler", "async",
        "--prefill-step-tokens", "768",
        "--shard-call-timeout", "60.0",
        "--health-stall-timeout", "4.0",
        "--http-header-timeout", "10.0",
        "--http-body-timeout", "30.0",
        "--http-max-silent-connections", "256",
    ]  # fmt: skip


FULL = LaunchConfig(
    model_id="m", revision="r", max_input_tokens=100, max_total_tokens=200, max_batch_prefill_tokens=300,
    max_batch_total_tokens=4000, max_batch_size=8, trust_remote_code=True, json_output=True,
    otlp_endpoint="http://o:4317", cors_allow_origin=("a", "b"), api_key="k", ngrok=True, ngrok_authtoken="t",
    ngrok_edge="e", tokenizer_config_path="/t.json", disable_grammar_support=True, usage_stats="off",
    scheduler="sync", waiting_served_ratio=1.5, http_header_timeout=5.0, http_body_timeout=0.0,
    http_max_silent_connections=64,
)  # fmt: skip


def test_router_argv_with_every_option() -> None:
    args = router_args(FULL, resolve(FULL, facts()))
    joined = " ".join(args)
    for part in (
        "--max-batch-prefill-tokens 300", "--waiting-served-ratio 1.5", "--max-input-tokens 100",
        "--max-total-tokens 200", "--usage-stats off", "--disable-grammar-support",
        "--tokenizer-config-path /t.json", "--max-batch-total-tokens 4000", "--max-batch-size 8",
        "--revision r", "--trust-remote-code", "--json-output", "--otlp-endpoint http://o:4317",
        "--cors-allow-origin a --cors-allow-origin b", "--api-key k",
        "--ngrok --ngrok-authtoken t --ngrok-edge e",
    ):  # fmt: skip
        assert part in joined, part
    assert args[-14:-10] == ["--scheduler", "sync", "--prefill-step-tokens", "768"]
    assert args[-6:] == [
        "--http-header-timeout", "5.0", "--http-body-timeout", "0.0", "--http-max-silent-connections", "64"
    ]  # fmt: skip


@pytest.mark.skipif(not HAS_ROUTER, reason="tgi_async.router.cli not built yet")
@pytest.mark.parametrize("config", [LaunchConfig(), FULL], ids=["defaults", "full"])
def test_router_cli_accepts_the_argv(config: LaunchConfig, clean_env: pytest.MonkeyPatch) -> None:
    args = router_args(config, resolve(config, facts()))
    parsed = build_parser("router").parse_args(["router", *args])
    assert parsed.scheduler == config.scheduler
    assert parsed.master_shard_uds_path == f"{config.shard_uds_path}-0"
    assert parsed.tokenizer_name == config.model_id
    assert parsed.waiting_served_ratio == config.waiting_served_ratio
    assert parsed.max_input_tokens == config.max_input_tokens
    assert parsed.api_key == config.api_key
    assert parsed.http_header_timeout == config.http_header_timeout
    assert parsed.http_body_timeout == config.http_body_timeout
    assert parsed.http_max_silent_connections == config.http_max_silent_connections


def test_tgi_shard_argv_and_env() -> None:
    environ = {"PATH": "/bin", "LOG_LEVEL": "debug", "HF_API_TOKEN": "hf_x", "ATTENTION": "paged"}
    config = replace(FULL, num_shard=2, quantize="gptq", speculate=2, dtype="float16", rope_scaling="dynamic",
                     enable_prefill_logprobs=True, watermark_gamma=0.4, lora_adapters="a/b@v1,c=/local",
                     cuda_memory_fraction=1.0, max_input_tokens=None)  # fmt: skip
    launch = plan(config, facts(environ=environ, tgi_shard=("/opt/tgs",)))
    resolved = launch.resolved
    assert resolved.shard_kind == "tgi" and resolved.num_shard == 2
    assert [c.name for c in launch.shards] == ["shard-0", "shard-1"]
    assert launch.sockets == ("/tmp/text-generation-server-0", "/tmp/text-generation-server-1")
    assert launch.shards[0].argv == (
        "/opt/tgs", "serve", "m", "--uds-path", "/tmp/text-generation-server", "--logger-level", "DEBUG",
        "--json-output", "--trust-remote-code", "--sharded", "--quantize", "gptq", "--speculate", "2",
        "--dtype", "float16", "--revision", "r", "--otlp-endpoint", "http://o:4317",
        "--otlp-service-name", "text-generation-inference.router",
    )  # fmt: skip
    env = launch.shards[1].env
    assert {k: env[k] for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")} == {
        "RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "localhost", "MASTER_PORT": "29500",
    }  # fmt: skip
    assert env["ATTENTION"] == "paged" and env["PREFIX_CACHING"] == "0"
    assert env["CUDA_MEMORY_FRACTION"] == "1" and env["HF_TOKEN"] == "hf_x" and "LOG_LEVEL" not in env
    assert (env["ROPE_SCALING"], env["ROPE_FACTOR"]) == ("dynamic", "1")
    assert (
        env["MAX_TOTAL_TOKENS"] == "200" and env["MAX_BATCH_SIZE"] == "8" and env["REQUEST_LOGPROBS"] == "1"
    )
    assert env["LORA_ADAPTERS"] == "a/b@v1,c=/local" and env["WATERMARK_GAMMA"] == "0.4"
    assert env["CUDA_GRAPHS"] == "1,2,4,8,16,32" and env["HF_HUB_ENABLE_HF_TRANSFER"] == "1"
    assert env["PATH"] == "/bin" and env["TORCH_NCCL_AVOID_RECORD_STREAMS"] == "1"
    assert [c.argv for c in launch.downloads] == [
        ("/opt/tgs", "download-weights", "m", "--extension", ".safetensors", "--logger-level", "INFO",
         "--json-output", "--merge-lora", "--revision", "r", "--trust-remote-code"),
        ("/opt/tgs", "download-weights", "a/b", "--extension", ".safetensors", "--logger-level", "INFO",
         "--json-output", "--revision", "v1", "--trust-remote-code"),
    ]  # fmt: skip
    assert launch.router.argv[:4] == (sys.executable, "-m", "tgi_async.cli", "router")
    assert launch.router.env["HF_TOKEN"] == "hf_x" and "COMPUTE_TYPE" not in launch.router.env


def test_bundled_shard_argv_and_env() -> None:
    config = LaunchConfig(model_id="/models/tiny", max_input_tokens=100, cuda_graphs=(0,), rope_factor=2.0)
    launch = plan(config, facts(environ={"PATH": "/bin"}))
    (shard,) = launch.shards
    assert shard.argv == (
        sys.executable, "-m", "tgi_async.cli", "shard", "serve", "/models/tiny",
        "--uds-path", "/tmp/text-generation-server", "--logger-level", "INFO", "--json-output",
        "--otlp-service-name", "text-generation-inference.router", "--max-input-tokens", "100",
    )  # fmt: skip
    assert (
        shard.env["RANK"] == "0" and shard.env["WORLD_SIZE"] == "1" and shard.env["PYTHONUNBUFFERED"] == "1"
    )
    assert "HF_HUB_ENABLE_HF_TRANSFER" not in shard.env and "CUDA_GRAPHS" not in shard.env
    # prefix caching: TGI turns it off without CUDA kernels; the bundled shard has it anyway, unless told not
    assert shard.env["PREFIX_CACHING"] == "true"
    off = plan(config, facts(environ={"PATH": "/bin", "PREFIX_CACHING": "0"}))
    assert off.shards[0].env["PREFIX_CACHING"] == "0"
    assert launch.downloads == ()
    assert notes(config, launch.resolved) == (
        "--cuda-graphs: accepted, not applicable to the bundled shard",
        "--rope-factor: accepted, not applicable to the bundled shard",
    )
    traced = bundled_shard_args(
        replace(config, json_output=True), replace(launch.resolved, shard_log_level="TRACE")
    )
    assert "--json-output" in traced and traced[traced.index("--logger-level") + 1] == "DEBUG"


@pytest.mark.skipif(not HAS_SHARD, reason="tgi_async.shard.cli not built yet")
def test_bundled_shard_cli_accepts_the_argv(clean_env: pytest.MonkeyPatch) -> None:
    config = replace(FULL, dtype="bfloat16", kv_cache_dtype="fp8_e5m2")
    args = bundled_shard_args(config, resolve(config, facts()))
    parsed = build_parser("shard").parse_args(args)
    assert (parsed.model_id, parsed.uds_path, parsed.revision) == ("m", "/tmp/text-generation-server", "r")
    assert (parsed.dtype, parsed.max_input_tokens, parsed.trust_remote_code) == ("bfloat16", 100, True)


def test_prefill_default_and_compute_type() -> None:
    assert default_max_batch_prefill_tokens(None, None, 1, 1.0) == 4096
    assert default_max_batch_prefill_tokens(TINY, None, 1, 1.0) == 4096
    assert default_max_batch_prefill_tokens(replace(TINY, max_position_embeddings=2048), None, 1, 1.0) == 2048
    vlm = replace(TINY, model_type="qwen2_vl", max_position_embeddings=None)
    assert default_max_batch_prefill_tokens(vlm, None, 1, 1.0) == 10_000
    # Llama-3-8B on one H100: 900 TFLOP/s // 15,032,385,536 FLOP per token; then positions, then memory
    assert default_max_batch_prefill_tokens(LLAMA_8B, H100, 1, 1.0) == 59_870
    short = replace(LLAMA_8B, max_position_embeddings=8192)
    assert default_max_batch_prefill_tokens(short, H100, 1, 1.0) == 8192
    # (16,000 MiB * 0.95 - 14,449,770,496 B of weights) // 260,096 B per token
    assert default_max_batch_prefill_tokens(LLAMA_8B, replace(H100, memory_mib=16_000), 1, 1.0) == 5723
    assert compute_type(H100, 2) == "2-nvidia-h100-80fb-hbm3"  # TGI's spelling, clients see it
    assert compute_type(GpuInfo("Tesla X", None, None), 1) == "1-tesla-x"
    assert compute_type(None, 1) is None
    config = LaunchConfig()
    assert resolve(config, facts(gpu=H100, gpu_count=1)).compute_type == "1-nvidia-h100-80fb-hbm3"
    assert resolve(config, facts(environ={"COMPUTE_TYPE": "cpu"}, gpu=H100)).compute_type == "cpu"


def test_attention_resolution() -> None:
    assert resolve_attention(TINY, None, None, None, None) == ("0", "paged")  # head_dim 16: no flashinfer
    assert resolve_attention(LLAMA_8B, None, (9, 0), None, None) == ("true", "flashinfer")
    assert resolve_attention(LLAMA_8B, "a/b", (9, 0), None, None) == ("0", "flashinfer")
    assert resolve_attention(replace(LLAMA_8B, model_type="falcon"), None, (9, 0), None, None) == (
        "true",
        "flashdecoding",
    )
    assert resolve_attention(replace(LLAMA_8B, has_vision_config=True), None, (9, 0), None, None)[0] == "0"
    assert resolve_attention(LLAMA_8B, None, None, "paged", None) == ("0", "paged")
    assert resolve_attention(None, None, None, None, "1") == ("1", "flashinfer")


def test_small_formats() -> None:
    assert (fmt_float(1.0), fmt_float(0.3), fmt_float(2.5), fmt_float(90)) == ("1", "0.3", "2.5", "90")
    assert shard_log_level(NO_ENV) == "INFO"
    assert shard_log_level({"LOG_LEVEL": "warn"}) == "WARNING"
    assert (
        shard_log_level({"LOG_LEVEL": "text_generation_launcher=info,text_generation_router=debug"})
        == "DEBUG"
    )
    assert tgi_shard_args(LaunchConfig(), resolve(LaunchConfig(), facts()))[:4] == [
        "serve", "bigscience/bloom-560m", "--uds-path", "/tmp/text-generation-server",
    ]  # fmt: skip
    assert (
        shard_env(LaunchConfig(), facts(), resolve(LaunchConfig(), facts()), 0)["CUDA_GRAPHS"]
        == "1,2,4,8,16,32"
    )
