"""generate.v3 pinned as data: our stubs must stay wire-identical to TGI v3.3.x's proto/v3/generate.proto.

The tables below were written from TGI's file (identical in every tag v3.3.0 .. v3.3.7) and are compared with
the descriptor our generated module carries, so neither the .proto nor generate_pb2.py can drift silently.
NOTE: TGI v3.3.x has no `logit_bias` (a map<string, int32> field 12 exists only on an unmerged TGI branch);
adding it here would be a change of protocol, not a fix.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2

from tgi_async.proto import SERVICE_NAME, method_path, pb
from tgi_async.proto.service import METHODS

PROTO_FILE = Path(__file__).resolve().parents[1] / "tgi_async" / "proto" / "generate.proto"

PACKAGE = "generate.v3"
SERVICE = "TextGenerationService"
_FieldProto = descriptor_pb2.FieldDescriptorProto
Table = dict[str, dict[str, tuple[int, str, str]]]

# method -> (input message, output message); all unary-unary, in TGI's order
SERVICE_METHODS: list[tuple[str, str, str]] = [
    ("Info", "InfoRequest", "InfoResponse"),
    ("ServiceDiscovery", "ServiceDiscoveryRequest", "ServiceDiscoveryResponse"),
    ("ClearCache", "ClearCacheRequest", "ClearCacheResponse"),
    ("FilterBatch", "FilterBatchRequest", "FilterBatchResponse"),
    ("Warmup", "WarmupRequest", "WarmupResponse"),
    ("Prefill", "PrefillRequest", "PrefillResponse"),
    ("Decode", "DecodeRequest", "DecodeResponse"),
    ("Health", "HealthRequest", "HealthResponse"),
]

# message -> field -> (number, type, label); type is a scalar name, "message X" or "enum X";
# label is "" (singular, implicit presence unless a message), "repeated" or "optional" (proto3 `optional`)
MESSAGES: Table = {
    "HealthRequest": {},
    "HealthResponse": {},
    "InfoRequest": {},
    "InfoResponse": {
        "requires_padding": (1, "bool", ""),
        "dtype": (2, "string", ""),
        "device_type": (3, "string", ""),
        "window_size": (4, "uint32", "optional"),
        "speculate": (5, "uint32", ""),
        "support_chunking": (6, "bool", ""),
        "use_prefix_caching": (7, "bool", ""),
        "attention_impl": (8, "string", ""),
        "block_size": (9, "uint32", ""),
    },
    "ServiceDiscoveryRequest": {},
    "ServiceDiscoveryResponse": {
        "urls": (1, "string", "repeated"),
    },
    "ClearCacheRequest": {
        "id": (1, "uint64", "optional"),
    },
    "ClearCacheResponse": {},
    "Image": {
        "data": (1, "bytes", ""),
        "mimetype": (2, "string", ""),
    },
    "InputChunk": {
        "text": (1, "string", ""),
        "image": (2, "message generate.v3.Image", ""),
    },
    "Input": {
        "chunks": (1, "message generate.v3.InputChunk", "repeated"),
    },
    "NextTokenChooserParameters": {
        "temperature": (1, "float", ""),
        "top_k": (2, "uint32", ""),
        "top_p": (3, "float", ""),
        "typical_p": (4, "float", ""),
        "do_sample": (5, "bool", ""),
        "seed": (6, "uint64", ""),
        "repetition_penalty": (7, "float", ""),
        "frequency_penalty": (9, "float", ""),
        "watermark": (8, "bool", ""),
        "grammar": (10, "string", ""),
        "grammar_type": (11, "enum generate.v3.GrammarType", ""),
    },
    "StoppingCriteriaParameters": {
        "max_new_tokens": (1, "uint32", ""),
        "stop_sequences": (2, "string", "repeated"),
        "ignore_eos_token": (3, "bool", ""),
    },
    "Request": {
        "id": (1, "uint64", ""),
        "input_chunks": (8, "message generate.v3.Input", ""),
        "inputs": (2, "string", ""),
        "truncate": (3, "uint32", ""),
        "parameters": (4, "message generate.v3.NextTokenChooserParameters", ""),
        "stopping_parameters": (5, "message generate.v3.StoppingCriteriaParameters", ""),
        "prefill_logprobs": (6, "bool", ""),
        "top_n_tokens": (7, "uint32", ""),
        "blocks": (9, "uint32", "repeated"),
        "slots": (10, "uint32", "repeated"),
        "adapter_id": (11, "string", "optional"),
        "cache_len": (12, "uint32", ""),
        "add_special_tokens": (13, "bool", ""),
        "chunk_len": (14, "uint32", "optional"),
    },
    "Batch": {
        "id": (1, "uint64", ""),
        "requests": (2, "message generate.v3.Request", "repeated"),
        "size": (3, "uint32", ""),
        "max_tokens": (4, "uint32", ""),
        "max_blocks": (5, "uint32", ""),
    },
    "CachedBatch": {
        "id": (1, "uint64", ""),
        "request_ids": (2, "uint64", "repeated"),
        "size": (3, "uint32", ""),
        "max_tokens": (4, "uint32", ""),
        "current_tokens": (5, "uint32", ""),
    },
    "GeneratedText": {
        "text": (1, "string", ""),
        "generated_tokens": (2, "uint32", ""),
        "finish_reason": (3, "enum generate.v3.FinishReason", ""),
        "seed": (4, "uint64", "optional"),
    },
    "Tokens": {
        "ids": (1, "uint32", "repeated"),
        "logprobs": (2, "float", "repeated"),
        "texts": (3, "string", "repeated"),
        "is_special": (4, "bool", "repeated"),
    },
    "Generation": {
        "request_id": (1, "uint64", ""),
        "prefill_tokens": (2, "message generate.v3.Tokens", ""),
        "tokens": (3, "message generate.v3.Tokens", ""),
        "generated_text": (4, "message generate.v3.GeneratedText", "optional"),
        "top_tokens": (5, "message generate.v3.Tokens", "repeated"),
    },
    "FilterBatchRequest": {
        "batch_id": (1, "uint64", ""),
        "request_ids": (2, "uint64", "repeated"),
    },
    "FilterBatchResponse": {
        "batch": (1, "message generate.v3.CachedBatch", ""),
    },
    "PrefillRequest": {
        "batch": (1, "message generate.v3.Batch", ""),
        "cached_batch": (2, "message generate.v3.CachedBatch", ""),
    },
    "PrefillResponse": {
        "generations": (1, "message generate.v3.Generation", "repeated"),
        "batch": (2, "message generate.v3.CachedBatch", "optional"),
        "forward_ns": (3, "uint64", ""),
        "decode_ns": (4, "uint64", ""),
        "total_ns": (5, "uint64", ""),
        "concat_ns": (6, "uint64", "optional"),
    },
    "DecodeRequest": {
        "batches": (1, "message generate.v3.CachedBatch", "repeated"),
    },
    "DecodeResponse": {
        "generations": (1, "message generate.v3.Generation", "repeated"),
        "batch": (2, "message generate.v3.CachedBatch", "optional"),
        "forward_ns": (3, "uint64", ""),
        "decode_ns": (4, "uint64", ""),
        "total_ns": (5, "uint64", ""),
        "concat_ns": (6, "uint64", "optional"),
    },
    "WarmupRequest": {
        "batch": (1, "message generate.v3.Batch", ""),
        "max_input_tokens": (2, "uint32", "optional"),
        "max_prefill_tokens": (3, "uint32", ""),
        "max_total_tokens": (4, "uint32", "optional"),
    },
    "WarmupResponse": {
        "max_supported_total_tokens": (1, "uint32", "optional"),
        "max_input_tokens": (2, "uint32", ""),
        "max_total_tokens": (3, "uint32", ""),
    },
}

# message -> real (non-synthetic) oneof -> its fields
ONEOFS: dict[str, dict[str, tuple[str, ...]]] = {
    "InputChunk": {"chunk": ("text", "image")},
}

ENUMS: dict[str, dict[str, int]] = {
    "GrammarType": {"GRAMMAR_TYPE_NONE": 0, "GRAMMAR_TYPE_JSON": 1, "GRAMMAR_TYPE_REGEX": 2},
    "FinishReason": {
        "FINISH_REASON_LENGTH": 0,
        "FINISH_REASON_EOS_TOKEN": 1,
        "FINISH_REASON_STOP_SEQUENCE": 2,
    },
}

_TYPE_NAMES = {number: name.removeprefix("TYPE_").lower() for name, number in _FieldProto.Type.items()}


def file_proto(file_descriptor=pb.DESCRIPTOR) -> descriptor_pb2.FileDescriptorProto:
    proto = descriptor_pb2.FileDescriptorProto()
    file_descriptor.CopyToProto(proto)
    return proto


def describe_field(message: descriptor_pb2.DescriptorProto, field: _FieldProto) -> tuple[int, str, str]:
    """(number, type, label) in the tables' notation; a map field reads `map<key,value>`."""
    type_name = _TYPE_NAMES[field.type]
    label = ""
    if field.label == _FieldProto.LABEL_REPEATED:
        label = "repeated"
    elif field.proto3_optional:
        label = "optional"
    if type_name in ("message", "enum"):
        entry = next((n for n in message.nested_type if field.type_name.endswith(f".{n.name}")), None)
        if entry is not None and entry.options.map_entry:
            key, value = (_TYPE_NAMES[f.type] for f in entry.field)
            return field.number, f"map<{key},{value}>", ""
        type_name = f"{type_name} {field.type_name.lstrip('.')}"
    return field.number, type_name, label


def describe_messages(proto: descriptor_pb2.FileDescriptorProto) -> Table:
    described = {}
    for message in proto.message_type:
        described[message.name] = {field.name: describe_field(message, field) for field in message.field}
        for nested in message.nested_type:
            if not nested.options.map_entry:
                described[f"{message.name}.{nested.name}"] = {
                    field.name: describe_field(nested, field) for field in nested.field
                }
    return described


def test_package_syntax_and_service_name() -> None:
    proto = file_proto()
    assert proto.package == PACKAGE
    assert proto.syntax == "proto3"
    assert [service.name for service in proto.service] == [SERVICE]
    assert f"{PACKAGE}.{SERVICE}" == SERVICE_NAME
    assert method_path("Decode") == "/generate.v3.TextGenerationService/Decode"


def test_service_methods() -> None:
    (service,) = file_proto().service
    ours = [
        (m.name, m.input_type, m.output_type, m.client_streaming, m.server_streaming) for m in service.method
    ]
    expected = [(name, f".{PACKAGE}.{i}", f".{PACKAGE}.{o}", False, False) for name, i, o in SERVICE_METHODS]
    assert ours == expected
    assert {name: (req.__name__, res.__name__) for name, (req, res) in METHODS.items()} == {
        name: (i, o) for name, i, o in SERVICE_METHODS
    }


def test_message_names() -> None:
    assert list(describe_messages(file_proto())) == list(MESSAGES)


@pytest.mark.parametrize("name", list(MESSAGES))
def test_message_fields(name: str) -> None:
    assert describe_messages(file_proto()).get(name) == MESSAGES[name]


def test_oneofs() -> None:
    ours: dict[str, dict[str, tuple[str, ...]]] = {}
    for message in pb.DESCRIPTOR.message_types_by_name.values():
        for oneof in message.oneofs:
            fields = tuple(field.name for field in oneof.fields)
            synthetic = len(fields) == 1 and oneof.name == f"_{fields[0]}"
            if not synthetic:
                ours.setdefault(message.name, {})[oneof.name] = fields
    assert ours == ONEOFS
    chunk = pb.InputChunk(text="hello")
    assert chunk.WhichOneof("chunk") == "text"
    chunk.image.data = b"\x89PNG"
    assert chunk.WhichOneof("chunk") == "image"
    assert not chunk.text


def test_enums() -> None:
    ours = {enum.name: {value.name: value.number for value in enum.value} for enum in file_proto().enum_type}
    assert ours == ENUMS


@pytest.mark.parametrize("name", [n for n, fields in MESSAGES.items() if fields])
def test_presence_follows_labels(name: str) -> None:
    """`optional` fields track presence through a synthetic oneof; plain scalars do not (proto3)."""
    descriptor = pb.DESCRIPTOR.message_types_by_name[name]
    for field_name, (_, type_name, label) in MESSAGES[name].items():
        field = descriptor.fields_by_name[field_name]
        in_real_oneof = name in ONEOFS and any(field_name in f for f in ONEOFS[name].values())
        if label == "optional":
            assert field.has_presence, field_name
            assert field.containing_oneof is not None
            assert field.containing_oneof.name == f"_{field_name}"
            message = getattr(pb, name)()
            assert not message.HasField(field_name)
        elif label == "repeated":
            assert not field.has_presence, field_name
        elif type_name.startswith("message "):
            assert field.has_presence, field_name
        else:
            assert field.has_presence == in_real_oneof, field_name


def test_optional_zero_is_sent_and_parsed_back() -> None:
    """An explicit 0 in an `optional` field is on the wire and distinct from unset (TGI relies on this)."""
    explicit = pb.WarmupRequest(max_input_tokens=0, max_prefill_tokens=0)
    parsed = pb.WarmupRequest.FromString(explicit.SerializeToString())
    assert parsed.HasField("max_input_tokens")
    assert not parsed.HasField("max_total_tokens")
    assert pb.ClearCacheRequest().SerializeToString() == b""
    assert pb.ClearCacheRequest(id=0).SerializeToString() == b"\x08\x00"


def test_generated_module_matches_proto_file(tmp_path: Path) -> None:
    """generate_pb2.py was regenerated after the last edit of generate.proto (`make proto`)."""
    protoc = pytest.importorskip("grpc_tools.protoc")
    out = tmp_path / "generate.pb"
    code = protoc.main(["protoc", f"-I{PROTO_FILE.parent}", f"--descriptor_set_out={out}", str(PROTO_FILE)])
    assert code == 0
    descriptor_set = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    (from_file,) = descriptor_set.file
    from_module = file_proto()
    for proto in (from_file, from_module):
        _clear_json_names(proto.message_type)
    assert from_module == from_file


def _clear_json_names(messages) -> None:
    for message in messages:
        for field in message.field:
            field.ClearField("json_name")
        _clear_json_names(message.nested_type)
