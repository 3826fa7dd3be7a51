"""Open Inference Protocol (V2) protobuf messages as the JSON-shaped objects mappings read (docs/attach.md).

Seldon Core 2 writes a model's responses to its `.outputs` topic as a serialized `inference.
ModelInferResponse` whenever the request came as protobuf (its model gateway, scheduler/pkg/kafka/gateway/
worker.go). The schema is the OIP's `grpc_predict_v2.proto` (SeldonIO/seldon-core apis/mlops/v2_dataplane/
v2_dataplane.proto); it is declared here with descriptor_pb2 so no generated code or protoc is needed.
A decoded response looks like the REST/JSON body: `{model_name, model_version, id, parameters,
outputs: [{name, datatype, shape, parameters, data}]}`, with `data` taken from the typed contents or
decoded from `raw_output_contents` (little-endian, row-major, as the protocol states).

Needs the `protobuf` package (`pip install mlmon[seldon]`); imported only by inputs that ask for it.
"""

from __future__ import annotations

import struct
from functools import cache
from typing import Any

import numpy as np

_T = {"string": 9, "bytes": 12, "bool": 8, "int32": 5, "int64": 3, "uint32": 13, "uint64": 4, "float": 2,
      "double": 1, "message": 11}
_CONTENTS = ("bool_contents", "int_contents", "int64_contents", "uint_contents", "uint64_contents",
             "fp32_contents", "fp64_contents", "bytes_contents")
_RAW_DTYPES = {"BOOL": "<?", "UINT8": "<u1", "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8", "INT8": "<i1",
               "INT16": "<i2", "INT32": "<i4", "INT64": "<i8", "FP16": "<f2", "FP32": "<f4", "FP64": "<f8"}


class OipDecodeError(ValueError):
    """The bytes are not an OIP ModelInferResponse."""


@cache
def _classes() -> tuple[Any, Any]:
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    fd = descriptor_pb2.FileDescriptorProto(name="mlmon_oip_v2.proto", package="inference", syntax="proto3")

    def message(parent: Any, name: str, fields: list[tuple[str, int, str, str | None, bool]]) -> Any:
        msg = parent.add(name=name)
        for fname, number, ftype, type_name, repeated in fields:
            f = msg.field.add(name=fname, number=number, type=_T[ftype],
                              label=3 if repeated else 1)
            if type_name:
                f.type_name = type_name
        return msg

    param = message(fd.message_type, "InferParameter", [("bool_param", 1, "bool", None, False),
                                                         ("int64_param", 2, "int64", None, False),
                                                         ("string_param", 3, "string", None, False)])
    param.oneof_decl.add(name="parameter_choice")
    for f in param.field:
        f.oneof_index = 0
    message(fd.message_type, "InferTensorContents",
            [(n, i + 1, t, None, True) for i, (n, t) in enumerate(zip(_CONTENTS, (
                "bool", "int32", "int64", "uint32", "uint64", "float", "double", "bytes"), strict=True))])

    def params_entry(msg: Any) -> None:
        entry = msg.nested_type.add(name="ParametersEntry")
        entry.options.map_entry = True
        entry.field.add(name="key", number=1, type=_T["string"], label=1)
        entry.field.add(name="value", number=2, type=_T["message"], label=1, type_name=".inference.InferParameter")

    response = message(fd.message_type, "ModelInferResponse", [
        ("model_name", 1, "string", None, False), ("model_version", 2, "string", None, False),
        ("id", 3, "string", None, False),
        ("parameters", 4, "message", ".inference.ModelInferResponse.ParametersEntry", True),
        ("outputs", 5, "message", ".inference.ModelInferResponse.InferOutputTensor", True),
        ("raw_output_contents", 6, "bytes", None, True)])
    params_entry(response)
    tensor = message(response.nested_type, "InferOutputTensor", [
        ("name", 1, "string", None, False), ("datatype", 2, "string", None, False),
        ("shape", 3, "int64", None, True),
        ("parameters", 4, "message", ".inference.ModelInferResponse.InferOutputTensor.ParametersEntry", True),
        ("contents", 5, "message", ".inference.InferTensorContents", False)])
    params_entry(tensor)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fd)
    cls = message_factory.GetMessageClass(pool.FindMessageTypeByName("inference.ModelInferResponse"))
    return cls, pool


def response_class() -> Any:
    """The ModelInferResponse message class (tests build messages with it)."""
    return _classes()[0]


def _parameters(params: Any) -> dict[str, Any]:
    out = {}
    for key, value in params.items():
        which = value.WhichOneof("parameter_choice")
        out[key] = getattr(value, which) if which else None
    return out


def _raw(data: bytes, datatype: str) -> list[Any]:
    if datatype == "BYTES":  # each element: a 4-byte little-endian length, then the bytes
        out, i = [], 0
        while i + 4 <= len(data):
            (n,) = struct.unpack_from("<I", data, i)
            out.append(data[i + 4:i + 4 + n].decode("utf-8", errors="replace"))
            i += 4 + n
        return out
    dtype = _RAW_DTYPES.get(datatype)
    if dtype is None or len(data) % np.dtype(dtype).itemsize:
        raise OipDecodeError(f"raw output contents do not fit datatype {datatype!r}")
    return np.frombuffer(data, dtype=dtype).tolist()


def decode_response(raw: bytes) -> dict[str, Any]:
    """A serialized ModelInferResponse as the OIP JSON body; OipDecodeError if it is not one."""
    from google.protobuf.message import DecodeError

    msg = response_class()()
    try:
        msg.ParseFromString(raw)
    except DecodeError as exc:
        raise OipDecodeError(str(exc)) from None
    raws = list(msg.raw_output_contents)
    outputs = []
    for i, t in enumerate(msg.outputs):
        if i < len(raws):
            data = _raw(raws[i], t.datatype)
        else:
            data = next((list(getattr(t.contents, n)) for n in _CONTENTS if len(getattr(t.contents, n))), [])
            if data and isinstance(data[0], bytes):
                data = [b.decode("utf-8", errors="replace") for b in data]
        outputs.append({"name": t.name, "datatype": t.datatype, "shape": list(t.shape),
                        "parameters": _parameters(t.parameters), "data": data})
    return {"model_name": msg.model_name, "model_version": msg.model_version, "id": msg.id,
            "parameters": _parameters(msg.parameters), "outputs": outputs}
