"""Request parsing that turns malformed messages into the caller's INVALID_ARGUMENT.

grpc answers a request its deserializer cannot parse with a generic INTERNAL. The servicer
registers ``parser(cls)`` instead: a message that fails to parse (e.g. invalid UTF-8 in a
string field) becomes an ``Undecodable`` that the handler answers, naming the bad field.
"""

from __future__ import annotations

import collections
import contextvars
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from google.protobuf import empty_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError
from google.protobuf.unknown_fields import UnknownFieldSet

from gateway.core.errors import InvalidInput

_LENGTH_DELIMITED = 2  # protobuf wire type of strings, bytes and messages
# Size of the message last parsed in this task: grpc parses a request in the task that then
# runs its handler (a stream's messages: in the task that reads them).
_parsed_bytes: contextvars.ContextVar[int] = contextvars.ContextVar("parsed_bytes", default=0)


@dataclass(frozen=True)
class Undecodable:
    """Stands in for a request that failed to parse, so the handler can answer it."""

    message_type: str
    error: str
    # The string field that is not valid UTF-8 (``labels[1]``), when that is the reason.
    bad_utf8_field: str | None = None


def raise_if_undecodable(request: Any, field: str) -> None:
    if not isinstance(request, Undecodable):
        return
    if request.bad_utf8_field:
        # Message fields are named relative to the request (or stream message) they are in.
        raise InvalidInput("not valid UTF-8 (string fields must be valid UTF-8)",
                           field=request.bad_utf8_field)
    raise InvalidInput(
        f"not a valid {request.message_type}: {request.error} "
        "(string fields must be valid UTF-8)", field=field)


def parsed_bytes() -> int:
    """Bytes on the wire of the request (or stream message) this task parsed last."""
    return _parsed_bytes.get()


def parser(message_cls: type) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        _parsed_bytes.set(len(data))
        try:
            return message_cls.FromString(data)
        except DecodeError as exc:
            return Undecodable(message_cls.DESCRIPTOR.full_name, str(exc) or "malformed message",
                               _bad_utf8_field(message_cls.DESCRIPTOR, data))
    return parse


def _bad_utf8_field(descriptor: Descriptor, data: bytes, prefix: str = "") -> str | None:
    """Names the first string field of ``data`` that is not UTF-8 (protobuf's DecodeError
    does not say which): the wire format is walked as unknown fields of an empty message."""
    try:
        wire = UnknownFieldSet(empty_pb2.Empty.FromString(data))
    except DecodeError:
        return None  # not a protobuf at all
    seen: collections.Counter[int] = collections.Counter()
    for item in wire:
        fd = descriptor.fields_by_number.get(item.field_number)
        if fd is None or item.wire_type != _LENGTH_DELIMITED:
            continue
        name = prefix + fd.name
        if _is_repeated(fd):
            name += f"[{seen[item.field_number]}]"
            seen[item.field_number] += 1
        if fd.type == FieldDescriptor.TYPE_STRING:
            try:
                item.data.decode("utf-8")
            except UnicodeDecodeError:
                return name
        elif fd.type == FieldDescriptor.TYPE_MESSAGE:
            found = _bad_utf8_field(fd.message_type, item.data, name + ".")
            if found:
                return found
    return None


def _is_repeated(fd: FieldDescriptor) -> bool:
    # Newer protobuf (6.x) has is_repeated and deprecates label; older versions have label only.
    is_repeated = getattr(fd, "is_repeated", None)
    return fd.label == FieldDescriptor.LABEL_REPEATED if is_repeated is None else is_repeated
