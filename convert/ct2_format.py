"""Reader for CTranslate2's `model.bin`, including models shipped as numbered parts.

The layout below is the one written by `ModelSpec._serialize` in ctranslate2/specs/model_spec.py (binary
version 6). Integers are little-endian (CTranslate2 writes native byte order and only runs on little-endian
machines); tensors are stored row-major.

    uint32 binary_version                     # 6
    string spec_name                          # e.g. "WhisperSpec"
    uint32 spec_revision
    uint32 num_variables
    num_variables x {
        string name                           # scope path, e.g. "encoder/layer_0/ffn/linear_0/weight"
        uint8  rank, uint32 dims[rank]        # rank 0: a scalar setting such as "decoder/num_heads"
        uint8  dtype_id                       # index into _DTYPES
        uint32 num_bytes, bytes data[num_bytes]
    }
    uint32 num_aliases
    num_aliases x { string alias, string target }   # alias names a variable equal to target

    string := uint16 length (counting a trailing NUL), UTF-8 bytes, NUL

A model too large for one file may be split byte-wise into `model.bin.part1`, `model.bin.part2`, ...;
joining the parts in order gives the same stream. This module never imports ctranslate2.
"""

import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Sequence

import torch

SUPPORTED_BINARY_VERSION = 6
MODEL_FILE = "model.bin"
_PART_NAME = re.compile(r"model\.bin\.part(\d+)")
# CTranslate2's DataType enum (include/ctranslate2/types.h), in id order.
_DTYPES = (torch.float32, torch.int8, torch.int16, torch.int32, torch.float16, torch.bfloat16)
_MAX_RANK = 8


class CT2FormatError(ValueError):
    """The bytes are not a CTranslate2 model this reader understands (truncated, corrupt, other version)."""


class ModelFileNotFoundError(FileNotFoundError):
    """No model.bin (or a file the model needs next to it) where one was expected."""


class MissingPartError(ModelFileNotFoundError):
    """A split model lacks one of its numbered parts."""


@dataclass
class CT2Model:
    """The content of one model.bin: spec identity, variables by scope name, and aliases."""

    spec_name: str
    spec_revision: int
    variables: Dict[str, torch.Tensor]
    aliases: Dict[str, str]  # alias name -> name of the variable it repeats

    def resolved_variables(self) -> Dict[str, torch.Tensor]:
        """Variables with every alias replaced by the tensor it points to."""
        variables = dict(self.variables)
        for alias, target in self.aliases.items():
            if target not in self.variables:
                raise CT2FormatError(f"alias {alias!r} points to unknown variable {target!r}")
            variables[alias] = self.variables[target]
        return variables


def is_model_file(path: Path) -> bool:
    """True for `model.bin` and `model.bin.partN`."""
    return path.name == MODEL_FILE or _PART_NAME.fullmatch(path.name) is not None


def order_model_files(files: Iterable[Path]) -> List[Path]:
    """The files to read, in order: a single model.bin, or parts 1..K with none missing.

    `files` may come from several folders (a model split across packages).
    """
    files = list(files)
    whole = [path for path in files if path.name == MODEL_FILE]
    parts: Dict[int, Path] = {}
    for path in files:
        match = _PART_NAME.fullmatch(path.name)
        if match is None:
            continue
        number = int(match.group(1))
        if number in parts:
            raise CT2FormatError(f"model part {number} found twice: {parts[number]} and {path}")
        parts[number] = path
    if whole and parts:
        raise CT2FormatError(f"found both {whole[0]} and split parts {sorted(parts.values())}; give one or the other")
    if len(whole) > 1:
        raise CT2FormatError(f"found several {MODEL_FILE} files: {whole}")
    if whole:
        return whole
    if not parts:
        raise ModelFileNotFoundError(f"no {MODEL_FILE} or {MODEL_FILE}.partN among {files}")
    if min(parts) < 1:
        raise CT2FormatError(f"model parts are numbered from 1, found part {min(parts)}")
    missing = [number for number in range(1, max(parts) + 1) if number not in parts]
    if missing:
        names = ", ".join(f"{MODEL_FILE}.part{number}" for number in missing)
        raise MissingPartError(f"split model is missing {names} (found parts {sorted(parts)})")
    return [parts[number] for number in sorted(parts)]


class _JoinedStream:
    """Reads the byte stream formed by several files in a row, reporting where it ends early."""

    def __init__(self, files: Sequence[Path]):
        self._files = list(files)
        self._sizes = [path.stat().st_size for path in self._files]
        self._index = 0
        self._handle = open(self._files[0], "rb")
        self.offset = 0

    def close(self) -> None:
        self._handle.close()

    def read(self, size: int, what: str) -> bytearray:
        """Exactly `size` bytes (a writable buffer, so tensors can share it), or CT2FormatError."""
        buffer = bytearray(size)
        view = memoryview(buffer)
        filled = 0
        while filled < size:
            count = self._handle.readinto(view[filled:])
            if count:
                filled += count
            elif not self._open_next():
                raise CT2FormatError(
                    f"{self._describe()} is truncated: {what} needs {size} bytes at byte {self.offset}, "
                    f"but the data ends at byte {sum(self._sizes)}"
                )
        self.offset += size
        return buffer

    def at_end(self) -> bool:
        while not self._handle.read(1):
            if not self._open_next():
                return True
        return False

    def _open_next(self) -> bool:
        if self._index + 1 >= len(self._files):
            return False
        self._handle.close()
        self._index += 1
        self._handle = open(self._files[self._index], "rb")
        return True

    def _describe(self) -> str:
        if len(self._files) == 1:
            return str(self._files[0])
        return "the joined model (" + " + ".join(path.name for path in self._files) + ")"


def _read_uint(stream: _JoinedStream, fmt: str, what: str) -> int:
    return struct.unpack("<" + fmt, stream.read(struct.calcsize(fmt), what))[0]


def _read_string(stream: _JoinedStream, what: str) -> str:
    length = _read_uint(stream, "H", what)
    raw = stream.read(length, what)
    if length == 0 or raw[-1] != 0:
        raise CT2FormatError(f"{what} at byte {stream.offset - length} is not a NUL-terminated string")
    try:
        return raw[:-1].decode("utf-8")
    except UnicodeDecodeError as error:
        raise CT2FormatError(f"{what} at byte {stream.offset - length} is not UTF-8: {error}") from None


def _read_variable(stream: _JoinedStream, index: int):
    name = _read_string(stream, f"name of variable {index}")
    rank = _read_uint(stream, "B", f"rank of {name}")
    if rank > _MAX_RANK:
        raise CT2FormatError(f"variable {name!r} claims rank {rank}; the file is corrupt")
    shape = [_read_uint(stream, "I", f"shape of {name}") for _ in range(rank)]
    dtype_id = _read_uint(stream, "B", f"dtype of {name}")
    if dtype_id >= len(_DTYPES):
        raise CT2FormatError(f"variable {name!r} has unknown dtype id {dtype_id}")
    dtype = _DTYPES[dtype_id]
    num_bytes = _read_uint(stream, "I", f"size of {name}")
    expected = dtype.itemsize
    for dim in shape:
        expected *= dim
    if num_bytes != expected:
        raise CT2FormatError(f"variable {name!r}: {num_bytes} bytes stored for shape {shape} of {dtype}")
    data = stream.read(num_bytes, f"data of {name}")
    tensor = torch.frombuffer(data, dtype=dtype) if num_bytes else torch.empty(0, dtype=dtype)
    return name, tensor.reshape(shape)


def read_model_bin(files: Sequence[Path]) -> CT2Model:
    """Parse model.bin (or its parts, in order) into a CT2Model; any inconsistency is a CT2FormatError."""
    stream = _JoinedStream(files)
    try:
        version = _read_uint(stream, "I", "binary version")
        if version != SUPPORTED_BINARY_VERSION:
            raise CT2FormatError(
                f"CTranslate2 binary version {version} is not supported (this reader knows version "
                f"{SUPPORTED_BINARY_VERSION}); is this a CTranslate2 model.bin?"
            )
        spec_name = _read_string(stream, "spec name")
        spec_revision = _read_uint(stream, "I", "spec revision")
        variables = {}
        for index in range(_read_uint(stream, "I", "variable count")):
            name, tensor = _read_variable(stream, index)
            if name in variables:
                raise CT2FormatError(f"variable {name!r} is stored twice")
            variables[name] = tensor
        aliases = {}
        for index in range(_read_uint(stream, "I", "alias count")):
            alias = _read_string(stream, f"alias {index}")
            aliases[alias] = _read_string(stream, f"target of alias {alias}")
        if not stream.at_end():
            raise CT2FormatError(f"unexpected bytes after the last alias (byte {stream.offset}); wrong part order?")
    finally:
        stream.close()
    return CT2Model(spec_name, spec_revision, variables, aliases)
