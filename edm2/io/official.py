"""Safe import of the official EDM2 pickles (network snapshots, post-hoc reconstructions and
`dataset-refs` statistics) without executing anything stored in them (docs/method.md#official-details).

The released files were written with plain `pickle.dump` of objects whose classes are wrapped
by NVIDIA's `torch_utils.persistence`: such an object pickles as a call

    torch_utils.persistence._reconstruct_persistent_obj(meta)
    meta = {'type': 'class', 'version': 6, 'module_src': <Python source of the defining module>,
            'class_name': 'Precond', 'state': <the object's __dict__>}

and loading it normally *executes* `module_src`. `SafeUnpickler` below resolves every global
the stream names through a fixed allow-list instead: the persistence call becomes a
`PersistentObject` stand-in that only records `class_name` and `state` (the class name must be
one of the known EDM2 classes; the source is never looked at), torch tensors are rebuilt from
their storages with `torch.load(weights_only=True)`, NumPy arrays, `OrderedDict`, sets and
`dnnlib.EasyDict` are rebuilt as data, and any other global (`os.system`, `builtins.eval`,
`subprocess.Popen`, ...) is refused with a `FormatError` naming it. The network is then
rebuilt as `edm2.nn.Precond` from the stored constructor arguments and its state dict.
"""

import collections
import copy
import functools
import inspect
import io
import json
import math
import os
import pickle
import pickletools
import re
import warnings
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from edm2.data.encoders import check_encoder_config
from edm2.data.limits import load_npz
from edm2.errors import DataError, FormatError, one_line
from edm2.io.files import open_regular
from edm2.io.safetensors_stream import TensorLocation
from edm2.io.snapshot import (
    build_network,
    check_finite_tensors,
    check_network_kwargs,
    check_shapes,
    network_shapes,
    save_snapshot,
)
from edm2.naming import parse_snapshot_name
from edm2.nn import Precond
from edm2.utils import kimg_to_nimg

# The classes the official code wraps with `persistence.persistent_class`, by class name.
NETWORK_CLASSES = ("Precond", "UNet", "Block", "MPConv", "MPFourier")  # training/networks_edm2.py
ENCODER_CLASSES = ("StandardRGBEncoder", "StabilityVAEEncoder")  # training/encoders.py
LOSS_CLASSES = ("EDM2Loss",)  # training/training_loop.py
KNOWN_CLASSES = NETWORK_CLASSES + ENCODER_CLASSES + LOSS_CLASSES

# Plain torch containers that appear inside the network (UNet.enc / UNet.dec are ModuleDicts).
TORCH_MODULE_CLASSES = ("ModuleDict", "ModuleList", "Sequential", "Identity")

_STABILITY_VAE_DEFAULTS = dict(
    vae_name="stabilityai/sd-vae-ft-mse",
    raw_mean=[5.81, 3.25, 0.12, -2.15],
    raw_std=[4.17, 4.62, 3.71, 3.28],
    final_mean=0.0,
    final_std=0.5,
    batch_size=8,
)


# ----------------------------------------------------------------------------------------------
# Stand-ins for the objects of the pickle stream.


class PersistentObject:
    """What `_reconstruct_persistent_obj(meta)` yields here: the class name and the state."""

    def __init__(self, class_name: str, state: dict, version):
        self.class_name = class_name
        self.state = state
        self.version = version

    def __setstate__(self, state):
        raise FormatError(f"persistent {self.class_name} object modified after construction; not an EDM2 pickle")

    def __repr__(self):
        return f"PersistentObject({self.class_name})"


class _Sealed:
    """A value the pickle stream may pass around but not modify (pickle's BUILD is refused) or
    call: tensors and storages are boxed so that no torch `__setstate__` is ever reachable."""

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value

    def __setstate__(self, state):
        raise FormatError(f"{type(self.value).__name__} object modified after construction; not an EDM2 pickle")


class _Marker:
    """A class named by the stream only as an argument (e.g. `torch.Tensor`); not callable."""

    def __init__(self, name):
        self.name = name

    def __setstate__(self, state):
        raise FormatError(f"{self.name} modified by the pickle; not an EDM2 pickle")


_TENSOR = _Marker("torch.Tensor")
_PARAMETER = _Marker("torch.nn.Parameter")
_NDARRAY = _Marker("numpy.ndarray")


class TorchModuleObject:
    """A plain torch container module (`ModuleDict`, ...): the state set by pickle's BUILD."""

    class_name = "Module"

    def __init__(self, *args):
        self.state = {}

    def __setstate__(self, state):
        if not isinstance(state, dict):
            raise FormatError(f"{self.class_name} state is a {type(state).__name__}, expected a dict")
        self.state = state

    def __repr__(self):
        return f"TorchModuleObject({self.class_name})"


def _torch_module_class(name):
    return type(name, (TorchModuleObject,), {"class_name": name})


class EasyDict(dict):
    """Stand-in for `dnnlib.EasyDict` (a dict subclass); turned into a plain dict afterwards."""

    def __setstate__(self, state):
        if state:  # EasyDict keeps everything in its items; a non-empty __dict__ is not EasyDict
            raise FormatError("dnnlib.EasyDict with instance attributes is not an EDM2 EasyDict")


def _reconstruct_persistent_obj(meta):
    """Safe replacement for `torch_utils.persistence._reconstruct_persistent_obj`: never runs
    `meta['module_src']`, only checks the class name and keeps the state."""
    if not isinstance(meta, dict) or meta.get("type") != "class":
        raise FormatError("persistent object with an unknown meta format (expected type='class')")
    class_name = meta.get("class_name")
    if class_name not in KNOWN_CLASSES:
        raise FormatError(
            f"persistent class {class_name!r} is not one of the known EDM2 classes ({', '.join(KNOWN_CLASSES)}); "
            "refusing to load it (its source code is stored in the pickle and is never executed)"
        )
    state = meta.get("state")
    if state is None:
        state = {}
    if not isinstance(state, dict):
        raise FormatError(f"persistent {class_name} has a state of type {type(state).__name__}, expected a dict")
    return PersistentObject(class_name, dict(state), meta.get("version"))


def _load_from_bytes(data):
    """Safe replacement for `torch.storage._load_from_bytes`: the bytes are a legacy
    `torch.save` of one storage, read with `torch.load(weights_only=True)`."""
    if not isinstance(data, (bytes, bytearray)):
        raise FormatError(f"torch storage payload is a {type(data).__name__}, expected bytes")
    _check_storage_size(bytes(data[:_STORAGE_HEADER_BYTES]), len(data))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TypedStorage deprecation
            storage = torch.load(io.BytesIO(bytes(data)), weights_only=True, map_location="cpu")
    except Exception as e:
        raise FormatError(f"torch storage could not be read safely ({type(e).__name__}: {e})") from None
    if not isinstance(storage, torch.storage.TypedStorage):
        raise FormatError(f"torch storage payload holds a {type(storage).__name__}, expected a storage")
    return _Sealed(storage)


_STORAGE_ITEMSIZES = {
    "HalfStorage": 2,
    "BFloat16Storage": 2,
    "FloatStorage": 4,
    "DoubleStorage": 8,
    "LongStorage": 8,
    "IntStorage": 4,
    "ShortStorage": 2,
    "CharStorage": 1,
    "ByteStorage": 1,
    "BoolStorage": 1,
}


class _StorageSizeUnpickler(pickle.Unpickler):
    """The persistent id of a legacy `torch.save` of one storage: its type and element count."""

    def find_class(self, module, name):
        if module == "torch" and name in _STORAGE_ITEMSIZES:
            return _Marker(name)
        raise FormatError(f"a tensor storage names the global '{module}.{name}'; not an EDM2 pickle")

    def persistent_load(self, pid):
        self.pid = pid
        return None


def _check_storage_size(head: bytes, n: int) -> None:
    """Refuse a storage payload of `n` bytes (starting with `head`) whose header claims more
    elements than its bytes hold: torch.load would allocate the claimed size first."""
    f = io.BytesIO(head)
    try:
        for _ in range(4):  # magic number, protocol version, system info, the storage's persistent id
            check_pickle_structure(f, len(head))
            u = _StorageSizeUnpickler(f)
            u.load()
    except FormatError:
        raise
    except Exception:
        raise FormatError("a tensor storage does not have the legacy torch.save layout") from None
    pid = getattr(u, "pid", None)
    if not (isinstance(pid, tuple) and len(pid) >= 5 and isinstance(pid[1], _Marker) and isinstance(pid[4], int)):
        raise FormatError("a tensor storage has an unexpected persistent id")
    if not 0 <= pid[4] * _STORAGE_ITEMSIZES[pid[1].name] <= n:
        raise FormatError(f"a tensor storage claims {pid[4]} elements but holds only {n} bytes")


def _int_tuple(value, what):
    if not isinstance(value, (tuple, list, torch.Size)) or not all(isinstance(v, int) and v >= 0 for v in value):
        raise FormatError(f"tensor {what} {value!r} is not a tuple of non-negative integers")
    return tuple(value)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, *metadata):
    """Safe replacement for `torch._utils._rebuild_tensor_v2` (checks the view fits the storage)."""
    if not (isinstance(storage, _Sealed) and isinstance(storage.value, torch.storage.TypedStorage)):
        raise FormatError(f"tensor storage is a {type(storage).__name__}, expected a torch storage")
    storage = storage.value
    size = _int_tuple(size, "size")
    stride = _int_tuple(stride, "stride")
    if not isinstance(storage_offset, int) or storage_offset < 0 or len(size) != len(stride):
        raise FormatError(f"tensor view (offset {storage_offset!r}, size {size}, stride {stride}) is malformed")
    numel = storage._size()
    if math.prod(size) > 0 and storage_offset + sum((n - 1) * s for n, s in zip(size, stride)) >= numel:
        raise FormatError(
            f"tensor view of size {size} at offset {storage_offset} overruns its storage ({numel} elements)"
        )
    tensor = torch.empty((0,), dtype=storage.dtype)
    tensor.set_(storage._untyped_storage, storage_offset, size, stride)
    return _Sealed(tensor)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *state):
    """Safe replacement for `torch._utils._rebuild_parameter[_with_state]`: a plain tensor."""
    if not (isinstance(data, _Sealed) and isinstance(data.value, torch.Tensor)):
        raise FormatError(f"parameter data is a {type(data).__name__}, expected a tensor")
    return data


def _rebuild_from_type_v2(func, new_type, args, state):
    """Safe replacement for `torch._tensor._rebuild_from_type_v2` (tensor types only)."""
    if func not in (_rebuild_tensor_v2, _rebuild_parameter) or new_type not in (_TENSOR, _PARAMETER):
        raise FormatError("tensor rebuilt through an unexpected function or type")
    if not isinstance(args, tuple):
        raise FormatError("tensor rebuild arguments are malformed")
    return func(*args)


def _codecs_encode(text, encoding="utf-8"):
    """`_codecs.encode`, used by pickle protocol 2 for bytes; only latin-1 text is accepted."""
    if not isinstance(text, str) or encoding != "latin1":
        raise FormatError("_codecs.encode used for something other than latin-1 bytes")
    return text.encode("latin1")


def _numpy_dtype(spec, align=False, copy=False):
    """`numpy.dtype` for plain type codes ('f4', '<i8', ...): no object or structured types."""
    if not isinstance(spec, str) or not re.fullmatch(r"[<>|=]?[biufc]\d{1,2}|[?]|b1", spec):
        raise FormatError(f"NumPy dtype {spec!r} is not a plain numeric type")
    return np.dtype(spec, bool(align), bool(copy))


def _numpy_reconstruct(subtype, shape, typecode):
    """`numpy.core.multiarray._reconstruct` for plain `ndarray`s (filled by its __setstate__)."""
    if subtype is not _NDARRAY:
        raise FormatError("NumPy array of an unexpected type")
    from numpy._core import multiarray

    return multiarray._reconstruct(np.ndarray, (0,), b"b")


def _numpy_scalar(dtype, data):
    if not isinstance(dtype, np.dtype) or dtype.hasobject or not isinstance(data, bytes):
        raise FormatError("NumPy scalar of an unexpected type")
    from numpy._core import multiarray

    return multiarray.scalar(dtype, data)


def _numpy_frombuffer(buf, dtype, shape, order):
    if not isinstance(dtype, np.dtype) or dtype.hasobject or order not in ("C", "F"):
        raise FormatError("NumPy array of an unexpected type")
    return np.frombuffer(bytes(buf), dtype=dtype).reshape(shape, order=order)


def _numpy_globals():
    table = {("numpy", "ndarray"): _NDARRAY, ("numpy", "dtype"): _numpy_dtype}
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):  # NumPy 1.x / 2.x names
        table[(module, "_reconstruct")] = _numpy_reconstruct
        table[(module, "scalar")] = _numpy_scalar
    for module in ("numpy.core.numeric", "numpy._core.numeric"):
        table[(module, "_frombuffer")] = _numpy_frombuffer
    return table


_TORCH_DTYPES = (
    "float16",
    "bfloat16",
    "float32",
    "float64",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "bool",
)


def _allowed_globals():
    table = {
        ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
        ("dnnlib.util", "EasyDict"): EasyDict,
        ("dnnlib", "EasyDict"): EasyDict,
        ("collections", "OrderedDict"): OrderedDict,
        ("builtins", "set"): set,
        ("builtins", "frozenset"): frozenset,
        ("__builtin__", "set"): set,
        ("__builtin__", "frozenset"): frozenset,
        ("_codecs", "encode"): _codecs_encode,
        ("torch.storage", "_load_from_bytes"): _load_from_bytes,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
        ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
        ("torch", "Tensor"): _TENSOR,
        ("torch.nn.parameter", "Parameter"): _PARAMETER,
        ("torch", "Size"): tuple,
    }
    for name in _TORCH_DTYPES:
        table[("torch", name)] = getattr(torch, name)
    for name in TORCH_MODULE_CLASSES:
        cls = _torch_module_class(name)
        for module in ("torch.nn.modules.container", "torch.nn.modules.linear", "torch.nn"):
            table[(module, name)] = cls
    table[("torch.nn.modules.module", "Module")] = _torch_module_class("Module")
    table.update(_numpy_globals())
    return table


# ----------------------------------------------------------------------------------------------
# Bounds on the pickle stream, checked by walking its opcodes before anything is unpickled
# (docs/data.md, "Limits on input files"). The C unpickler sizes its memo by the largest index a
# PUT names (a 9-byte pickle can make it allocate gigabytes); shared references (memo GETs) let a
# small file describe a structure exponentially large once expanded (a "billion laughs": hashing
# it, copying it or writing it as JSON never ends); nesting makes every recursive consumer fail.
# The released pickles stay far inside these: about 40 levels and a few hundred thousand objects.

MAX_PICKLE_NESTING = 200  # containers within containers
MAX_PICKLE_OBJECTS = 1 << 20  # objects of the structure with every shared reference expanded
_MAX_LINE = 1 << 16  # text arguments (GLOBAL names, decimal numbers) of the old protocols

_OPCODES = {op.code.encode("latin1")[0]: op for op in pickletools.opcodes}
_IN_PLACE = {"APPEND", "APPENDS", "SETITEM", "SETITEMS", "ADDITEMS", "BUILD"}  # the container stays
_LENGTH_BYTES = {
    pickletools.TAKEN_FROM_ARGUMENT1: (1, False),
    pickletools.TAKEN_FROM_ARGUMENT4: (4, True),
    pickletools.TAKEN_FROM_ARGUMENT4U: (4, False),
    pickletools.TAKEN_FROM_ARGUMENT8U: (8, False),
}
_MARK = -1
# What the walk does with each opcode: (kind, items popped below any mark, whether a slice down
# to a mark is popped first, whether a new object is pushed).
_SKIP, _MARKOP, _PUT, _GET, _DUP, _STOP, _OTHER = range(7)


def _op_table():
    table = {}
    for code, op in _OPCODES.items():
        before = [x.name for x in op.stack_before]
        takes_slice = "stackslice" in before
        if takes_slice:
            before = before[: before.index("mark")]
        kind = {
            "PROTO": _SKIP,
            "FRAME": _SKIP,
            "MARK": _MARKOP,
            "PUT": _PUT,
            "BINPUT": _PUT,
            "LONG_BINPUT": _PUT,
            "MEMOIZE": _PUT,
            "GET": _GET,
            "BINGET": _GET,
            "LONG_BINGET": _GET,
            "DUP": _DUP,
            "STOP": _STOP,
        }.get(op.name, _OTHER)
        table[code] = (kind, op, len(before), takes_slice, bool(op.stack_after), op.name in _IN_PLACE)
    return table


_OP_TABLE = _op_table()


def check_pickle_structure(f, size: int) -> None:
    """Walk the opcodes of the pickle at the position of the binary file `f` (whose `size` bytes
    bound every length field) without building anything, and raise `FormatError` for a stream
    that is malformed or truncated, names a memo index beyond the objects made so far, nests
    containers deeper than `MAX_PICKLE_NESTING` or describes more than `MAX_PICKLE_OBJECTS`
    objects once shared references are expanded. Byte strings are skipped with a seek (tensor
    data is never read). `f` is left where it was."""
    start = f.tell()
    weight, depth = [], []  # per object made: expanded size, nesting depth
    stack, memo = [], {}
    try:
        while True:
            code = f.read(1)
            if not code:
                raise FormatError("the pickle ends before its STOP opcode (truncated?)")
            entry = _OP_TABLE.get(code[0])
            if entry is None:
                raise FormatError(f"unknown pickle opcode {code!r} at byte {f.tell() - 1}")
            kind, op, num_before, takes_slice, pushes, in_place = entry
            arg = _read_pickle_arg(f, op, size) if op.arg is not None else None
            if kind == _SKIP:
                continue
            if kind == _STOP:
                return
            if kind == _MARKOP:
                stack.append(_MARK)
            elif kind == _PUT:
                index = len(memo) if arg is None else int(arg)
                if not 0 <= index <= len(weight) or not stack or stack[-1] == _MARK:
                    raise FormatError(f"memo index {index} at byte {f.tell()} is out of range (a memory bomb?)")
                memo[index] = stack[-1]
            elif kind == _GET:
                if int(arg) not in memo:
                    raise FormatError(f"memo index {arg} at byte {f.tell()} was never stored")
                stack.append(memo[int(arg)])
            elif kind == _DUP:
                stack.append(_top(stack))
            else:
                if op.name in ("NEXT_BUFFER", "READONLY_BUFFER"):
                    raise FormatError("the pickle uses out-of-band buffers; official EDM2 pickles do not")
                popped = []
                if takes_slice:
                    while True:
                        if not stack:
                            raise FormatError(f"{op.name} without a MARK at byte {f.tell()}")
                        item = stack.pop()
                        if item == _MARK:
                            break
                        popped.append(item)
                elif op.name == "POP" and stack and stack[-1] == _MARK:
                    stack.pop()
                    continue
                for _ in range(num_before):
                    popped.append(_top(stack))
                    stack.pop()
                if in_place:
                    container = popped.pop()  # the deepest one popped
                    for i in popped:
                        weight[container] += weight[i]
                        if depth[i] >= depth[container]:
                            depth[container] = depth[i] + 1
                    _check_bounds(weight[container], depth[container])
                    stack.append(container)
                elif pushes:
                    w, d = 1, 1
                    for i in popped:
                        w += weight[i]
                        if depth[i] >= d:
                            d = depth[i] + 1
                    if w > MAX_PICKLE_OBJECTS or d > MAX_PICKLE_NESTING:
                        _check_bounds(w, d)
                    weight.append(w)
                    depth.append(d)
                    stack.append(len(weight) - 1)
    finally:
        f.seek(start)


def _top(stack):
    if not stack or stack[-1] == _MARK:
        raise FormatError("malformed pickle (an opcode takes from an empty stack)")
    return stack[-1]


def _check_bounds(weight: int, depth: int) -> None:
    if weight > MAX_PICKLE_OBJECTS:
        raise FormatError(
            f"the pickle describes more than {MAX_PICKLE_OBJECTS} objects once its shared references are "
            "expanded (a 'billion laughs'?); official EDM2 pickles are far smaller"
        )
    if depth > MAX_PICKLE_NESTING:
        raise FormatError(f"the pickle nests containers more than {MAX_PICKLE_NESTING} levels deep")


def _read_pickle_arg(f, op, size: int):
    """The argument of opcode `op` (small ones read, long strings skipped with a seek)."""
    desc = op.arg
    if desc is None:
        return None
    if desc.n >= 0:
        raw = f.read(desc.n)
        if len(raw) != desc.n:
            raise FormatError("the pickle is truncated")
        return desc.reader(io.BytesIO(raw)) if op.name in _INDEX_OPS else None
    if desc.n == pickletools.UP_TO_NEWLINE:
        for _ in range(2 if desc.name == "stringnl_noescape_pair" else 1):
            line = f.readline(_MAX_LINE)
            if not line.endswith(b"\n"):
                raise FormatError(f"a text argument of {op.name} is longer than {_MAX_LINE} bytes or truncated")
        return line.strip() if op.name in _INDEX_OPS else None
    width, signed = _LENGTH_BYTES[desc.n]
    raw = f.read(width)
    if len(raw) != width:
        raise FormatError("the pickle is truncated")
    n = int.from_bytes(raw, "little", signed=signed)
    if n < 0 or f.tell() + n > size:
        raise FormatError(f"{op.name} at byte {f.tell()} declares {n} bytes, past the end of the file (truncated?)")
    f.seek(n, io.SEEK_CUR)
    return None


_INDEX_OPS = {"PUT", "BINPUT", "LONG_BINPUT", "GET", "BINGET", "LONG_BINGET"}


def _file_size(f) -> int:
    here = f.tell()
    end = f.seek(0, io.SEEK_END)
    f.seek(here)
    return end


class SafeUnpickler(pickle.Unpickler):
    """An unpickler that resolves globals only through the allow-list of this module."""

    _allowed = None

    def find_class(self, module, name):
        if SafeUnpickler._allowed is None:
            SafeUnpickler._allowed = _allowed_globals()
        target = SafeUnpickler._allowed.get((module, name))
        if target is None:
            raise FormatError(
                f"refusing to load global '{module}.{name}' named by the pickle: it is not part of the official "
                "EDM2 file formats (the file may be malicious or from another codebase); nothing was executed"
            )
        return target

    def persistent_load(self, pid):
        raise FormatError("the pickle uses persistent ids (a torch.save file?); official EDM2 pickles do not")


def safe_load(path_or_file):
    """Unpickle a file with `SafeUnpickler` and return the raw object tree (stand-ins included)."""
    name = path_or_file if isinstance(path_or_file, (str, Path)) else getattr(path_or_file, "name", "the pickle")
    if isinstance(path_or_file, (str, Path)):
        with open_regular(path_or_file) as f:
            return _safe_load_file(f, name)
    return _safe_load_file(path_or_file, name)


def _safe_load_file(f, name):
    if not (hasattr(f, "seekable") and f.seekable()):
        f = io.BytesIO(f.read())
    head = f.read(2)
    f.seek(-len(head), io.SEEK_CUR)
    if head == b"PK":
        raise FormatError(f"{name}: a ZIP archive (torch.save?), not an official EDM2 pickle")
    try:
        check_pickle_structure(f, _file_size(f))
        return SafeUnpickler(f).load()
    except FormatError as e:
        raise FormatError(f"{name}: {e}") from None
    except Exception as e:
        raise FormatError(f"{name}: not a readable EDM2 pickle ({type(e).__name__}: {e})") from None


# ----------------------------------------------------------------------------------------------
# Turning the stand-ins into our objects.


def to_plain(obj, where="value", _depth=0, _budget=None):
    """Convert unpickled data into plain Python (dicts, lists, numbers, arrays, tensors).

    Raises `FormatError` naming `where` for objects that are not plain data, nesting deeper than
    `MAX_PICKLE_NESTING` (a structure that contains itself included) and more than
    `MAX_PICKLE_OBJECTS` values with shared references expanded."""
    budget = [MAX_PICKLE_OBJECTS] if _budget is None else _budget
    budget[0] -= 1
    if budget[0] < 0:
        raise FormatError(f"{where} holds more than {MAX_PICKLE_OBJECTS} values with shared references expanded")
    if _depth > MAX_PICKLE_NESTING:
        raise FormatError(f"{where} nests more than {MAX_PICKLE_NESTING} levels deep (or contains itself)")
    if isinstance(obj, (PersistentObject, TorchModuleObject)):
        raise FormatError(f"{where} is a {obj.class_name} object where plain data was expected")
    if isinstance(obj, _Sealed):
        return obj.value
    if isinstance(obj, _Marker):
        raise FormatError(f"{where} is the class {obj.name} where plain data was expected")
    if isinstance(obj, dict):
        return {k: to_plain(v, f"{where}[{k!r}]", _depth + 1, budget) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v, f"{where}[{i}]", _depth + 1, budget) for i, v in enumerate(obj)]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def _dataset_kwargs(value) -> dict | None:
    """The pickled dataset arguments as plain JSON-ready data (they go into snapshot metadata):
    a dict of JSON values, or None. Raises `FormatError`."""
    if not value:
        return None
    value = to_plain(value, "dataset_kwargs")
    if not isinstance(value, dict):
        raise FormatError(f"dataset_kwargs is a {type(value).__name__}, expected a dict")
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise FormatError(f"dataset_kwargs hold a value that is not plain data ({one_line(str(e), 120)})") from None
    return value


def _json_value(value, where):
    """Constructor arguments as JSON-ready values (lists for tuples, Python scalars)."""
    value = to_plain(value, where)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, torch.Tensor):
        raise FormatError(f"{where} is a tensor; expected a plain constructor argument")
    return value


def _init_kwargs(obj: PersistentObject, signature_of) -> dict:
    """The recorded constructor arguments of a persistent object, all as keywords."""
    args = obj.state.get("_init_args") or ()
    kwargs = obj.state.get("_init_kwargs") or {}
    if not isinstance(args, (tuple, list)) or not isinstance(kwargs, dict):
        raise FormatError(f"{obj.class_name}: recorded constructor arguments are malformed")
    try:
        bound = inspect.signature(signature_of).bind(*args, **kwargs)
    except TypeError as e:
        raise FormatError(f"{obj.class_name}: recorded constructor arguments do not fit ({e})") from None
    result = {}
    for name, value in bound.arguments.items():
        param = inspect.signature(signature_of).parameters[name]
        if param.kind == inspect.Parameter.VAR_KEYWORD:
            result.update({k: _json_value(v, f"{obj.class_name}.{k}") for k, v in value.items()})
        else:
            result[name] = _json_value(value, f"{obj.class_name}.{name}")
    return result


def _module_state_dict(obj, prefix="", out=None, tensor_type=torch.Tensor) -> dict:
    """Walk the pickled module tree and collect parameters and persistent buffers (values of
    `tensor_type`: tensors, or `TensorLocation`s when read by `official_pickle_layout`)."""
    out = {} if out is None else out
    if prefix.count(".") > MAX_PICKLE_NESTING:
        raise FormatError(f"the module tree nests more than {MAX_PICKLE_NESTING} levels deep (or contains itself)")
    state = obj.state
    try:
        non_persistent = set(state.get("_non_persistent_buffers_set") or ())
    except TypeError:
        raise FormatError(f"{prefix or 'the network'}: _non_persistent_buffers_set is not a set of names") from None
    for kind in ("_parameters", "_buffers", "_modules"):
        if not isinstance(state.get(kind) or {}, dict):
            raise FormatError(f"{prefix or 'the network'}: {kind} is a {type(state[kind]).__name__}, expected a dict")
    for kind in ("_parameters", "_buffers"):
        for name, value in (state.get(kind) or {}).items():
            if value is None or (kind == "_buffers" and name in non_persistent):
                continue
            if not (isinstance(value, _Sealed) and isinstance(value.value, tensor_type)):
                raise FormatError(f"{prefix}{name} is a {type(value).__name__}, expected a tensor")
            out[prefix + name] = value.value
    for name, child in (state.get("_modules") or {}).items():
        if child is None:
            continue
        if not isinstance(child, (PersistentObject, TorchModuleObject)):
            raise FormatError(f"submodule {prefix}{name} is a {type(child).__name__}, expected a module")
        _module_state_dict(child, f"{prefix}{name}.", out, tensor_type)
    return out


def network_from_object(obj, dtype: torch.dtype | None = torch.float32):
    """Rebuild an official `Precond` stand-in as an eval-mode `edm2.nn.Precond`.

    Returns `(net, network_kwargs)`; `dtype` casts floating tensors (None keeps fp16).
    """
    if not isinstance(obj, PersistentObject) or obj.class_name != "Precond":
        found = getattr(obj, "class_name", type(obj).__name__)
        raise FormatError(f"the network is a {found}, expected an EDM2 Precond")
    if "_init_kwargs" not in obj.state and "_init_args" not in obj.state:
        raise FormatError("Precond has no recorded constructor arguments (_init_args/_init_kwargs)")
    network_kwargs = _init_kwargs(obj, Precond)
    state_dict = _module_state_dict(obj)
    _check_precond_shapes(network_kwargs, {k: tuple(v.shape) for k, v in state_dict.items()})
    check_finite_tensors(state_dict, "the pickled Precond")  # NaN weights: black images, never an error
    net = build_network(network_kwargs, device="meta")
    try:
        net.load_state_dict(state_dict, strict=True, assign=True)
    except RuntimeError as e:
        raise FormatError(f"the pickled Precond weights do not match edm2.nn.Precond: {one_line(str(e))}") from None
    if dtype is not None:
        net = net.to(dtype)
    net.eval().requires_grad_(False)
    return net, network_kwargs


def encoder_config_from_object(obj, img_channels: int | None = None) -> dict:
    """Encoder config dict (docs/HELPERS.md) from an official encoder stand-in, checked with
    `edm2.data.encoders.check_encoder_config` (against the network's `img_channels` if given)."""
    if not isinstance(obj, PersistentObject) or obj.class_name not in ENCODER_CLASSES:
        found = getattr(obj, "class_name", type(obj).__name__)
        raise FormatError(f"the encoder is a {found}, expected one of {', '.join(ENCODER_CLASSES)}")
    try:
        config = _encoder_config(obj)
    except (TypeError, ValueError, KeyError, AttributeError) as e:
        raise FormatError(f"the {obj.class_name} settings are malformed ({one_line(str(e), 200)})") from None
    return check_encoder_config(config, f"the pickled {obj.class_name}", img_channels)


def _encoder_config(obj) -> dict:
    if obj.class_name == "StandardRGBEncoder":
        return {"class": "StandardRGBEncoder"}
    kwargs = to_plain(obj.state.get("_init_kwargs") or {}, "StabilityVAEEncoder init kwargs")
    args = to_plain(obj.state.get("_init_args") or (), "StabilityVAEEncoder init args")
    kwargs.update(dict(zip(_STABILITY_VAE_DEFAULTS, args)))
    config = {"class": "StabilityVAEEncoder"}
    for key, default in _STABILITY_VAE_DEFAULTS.items():
        value = kwargs.get(key, default)
        config[key] = [float(v) for v in value] if isinstance(value, (list, tuple, np.ndarray)) else value
    config["final_mean"] = float(config["final_mean"])
    config["final_std"] = float(config["final_std"])
    config["vae_name"] = str(obj.state.get("vae_name", config["vae_name"]))
    config["batch_size"] = int(obj.state.get("batch_size", config["batch_size"]))
    # The state holds scale = final_std/raw_std and bias = final_mean - raw_mean*scale (docs/method.md#encoders)
    # in float32; when they disagree with the recorded arguments, recover raw_mean/raw_std.
    scale, bias = obj.state.get("scale"), obj.state.get("bias")
    if scale is not None and bias is not None:
        scale = np.asarray(scale, dtype=np.float32)
        bias = np.asarray(bias, dtype=np.float32)
        exp_scale = np.float32(config["final_std"]) / np.float32(config["raw_std"])
        exp_bias = np.float32(config["final_mean"]) - np.float32(config["raw_mean"]) * exp_scale
        if scale.shape != exp_scale.shape or not (np.array_equal(scale, exp_scale) and np.array_equal(bias, exp_bias)):
            scale64, bias64 = scale.astype(np.float64), bias.astype(np.float64)
            config["raw_std"] = [float(f"{v:.7g}") for v in config["final_std"] / scale64]
            config["raw_mean"] = [float(f"{v:.7g}") for v in (config["final_mean"] - bias64) / scale64]
    return config


def loss_kwargs_from_object(obj) -> dict:
    """`EDM2Loss` arguments (P_mean, P_std, sigma_data) from its stand-in."""
    if not isinstance(obj, PersistentObject) or obj.class_name not in LOSS_CLASSES:
        found = getattr(obj, "class_name", type(obj).__name__)
        raise FormatError(f"the loss is a {found}, expected EDM2Loss")
    result = {}
    for key in ("P_mean", "P_std", "sigma_data"):
        if key in obj.state:
            value = obj.state[key]
            if not isinstance(value, (int, float, np.floating, np.integer)) or not math.isfinite(float(value)):
                raise FormatError(f"EDM2Loss.{key} is {str(value)[:40]}, expected a finite number")
            result[key] = float(value)
    return result


def load_official_pickle(path_or_file, dtype: torch.dtype | None = torch.float32) -> dict:
    """Load an official EDM2 network pickle (training snapshot or post-hoc reconstruction).

    Returns a dict with 'ema' (eval-mode `edm2.nn.Precond`, floating tensors cast to `dtype`;
    None keeps the stored fp16), 'network_kwargs' (its constructor arguments), 'encoder' (the
    encoder config dict, or None when the pickle has none), 'dataset_kwargs' (dict or None)
    and 'loss_fn' (EDM2Loss kwargs or None). Nothing stored in the file is executed.
    """
    name = path_or_file if isinstance(path_or_file, (str, Path)) else getattr(path_or_file, "name", "the pickle")
    data = safe_load(path_or_file)
    if not isinstance(data, dict) or "ema" not in data:
        raise FormatError(f"{name}: not an EDM2 network pickle (expected a dict with key 'ema')")
    try:
        net, network_kwargs = network_from_object(data["ema"], dtype=dtype)
        channels = network_kwargs["img_channels"]
        encoder = encoder_config_from_object(data["encoder"], channels) if data.get("encoder") is not None else None
        loss = loss_kwargs_from_object(data["loss_fn"]) if data.get("loss_fn") is not None else None
        dataset_kwargs = _dataset_kwargs(data.get("dataset_kwargs"))
    except FormatError as e:
        raise FormatError(f"{name}: {e}") from None
    return {
        "ema": net,
        "network_kwargs": network_kwargs,
        "encoder": encoder,
        "dataset_kwargs": dataset_kwargs,
        "loss_fn": loss,
    }


def load_official_stats(path) -> dict:
    """Load feature statistics: an official `dataset-refs` `.pkl` (a dict such as
    `{'fid': {'mu', 'sigma'}, 'fd_dinov2': {...}}`, read safely) or an EDM `.npz` with `mu`
    and `sigma` (returned as `{'fid': {'mu', 'sigma'}}`). Arrays come back as NumPy arrays."""
    path = Path(path)
    if path.suffix.lower() == ".npz":
        if not path.exists():
            raise FormatError(f"{path}: no such file")
        try:
            stats = {"fid": load_npz(path)}  # bounded: members, their declared sizes and .npy headers
        except DataError as e:
            raise FormatError(f"not a readable .npz statistics file: {e}") from None
        if not {"mu", "sigma"} <= set(stats["fid"]):
            raise FormatError(f"{path}: an .npz statistics file needs arrays 'mu' and 'sigma'")
        return stats
    data = to_plain(safe_load(path), "statistics")
    if not isinstance(data, dict):
        raise FormatError(f"{path}: statistics pickle holds a {type(data).__name__}, expected a dict")
    for metric, value in data.items():
        if metric == "num_images":
            continue
        if not isinstance(value, dict) or not {"mu", "sigma"} <= set(value):
            raise FormatError(f"{path}: statistics entry {metric!r} needs 'mu' and 'sigma'")
        for key in ("mu", "sigma"):
            if not isinstance(value[key], np.ndarray):
                raise FormatError(f"{path}: statistics {metric}.{key} is not an array")
    return data


def parse_official_name(name):
    """`(kimg, std)` from a file name `*-<kimg>-<std>.pkl` (docs/method.md#ema), else None."""
    parsed = parse_snapshot_name(Path(name).name, ext="pkl")
    return (parsed.kimg, parsed.std) if parsed else None


def snapshot_fields(data: dict, src) -> tuple[dict, dict]:
    """`(encoder config, extra)` for our snapshot metadata from `load_official_pickle` output."""
    encoder = data["encoder"]
    if encoder is None:
        if data["ema"].img_channels != 3:
            raise FormatError(f"{src}: the pickle has no encoder and the network is not RGB; cannot tell the encoder")
        encoder = {"class": "StandardRGBEncoder"}
    extra = {"source": Path(str(src)).name, "dataset_kwargs": data["dataset_kwargs"], "loss_kwargs": data["loss_fn"]}
    return encoder, extra


def convert_official_pickle(src, dest, nimg: int | None = None, ema_std: float | None = None) -> dict:
    """Convert an official network pickle into our snapshot format (`edm2.io.snapshot`).

    nimg and the EMA std come from the file name `*-<kimg>-<std>.pkl` unless given. Returns
    a summary dict (network_kwargs, encoder, nimg, ema_std).
    """
    parsed = parse_official_name(src) if isinstance(src, (str, Path)) else None
    if nimg is None:
        nimg = kimg_to_nimg(parsed[0]) if parsed else 0
    if ema_std is None and parsed:
        ema_std = parsed[1]
    data = load_official_pickle(src, dtype=None)
    encoder, extra = snapshot_fields(data, src)
    save_snapshot(dest, data["ema"].state_dict(), data["network_kwargs"], encoder, nimg, ema_std, extra)
    return {"network_kwargs": data["network_kwargs"], "encoder": encoder, "nimg": nimg, "ema_std": ema_std}


# ----------------------------------------------------------------------------------------------
# Where the tensors of a pickle lie in the file, without reading them (post-hoc EMA input).
#
# A tensor of the official pickles is a storage, pickled as `_load_from_bytes(<bytes>)` where the
# bytes are a legacy `torch.save` of that one storage: four small pickles (magic number, protocol
# version, system info, the persistent id ('storage', <torch.XStorage>, key, location, numel)),
# the list of storage keys, then the element count as 8 bytes and the raw little-endian data. The
# pickle stream carries those bytes verbatim (BINBYTES opcodes, pickle protocol 3 and later), so
# the data of every tensor is one contiguous run of the file. `official_pickle_layout` finds
# those runs: it unpickles the file with the safe unpickler through a reader that skips large
# byte strings with a seek instead of reading them (the C unpickler fills byte strings through
# `readinto`) and records where they start; small ones, read within a frame, are found in the
# frame's bytes. No tensor data is read or copied and no network is built.

_STORAGE_DTYPES = {
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "FloatStorage": torch.float32,
    "DoubleStorage": torch.float64,
}
_SKIP_BYTES = 4096  # byte strings at least this long are skipped, not read
_STORAGE_HEADER_BYTES = 1 << 16  # at most this much is read for the pickles before a storage's data


class _NoLayout(Exception):
    """The file cannot be read in place (e.g. protocol 2, whose bytes are re-encoded as text)."""


class _StorageLocation:
    __slots__ = ("dtype", "numel", "start")

    def __init__(self, dtype, numel, start):
        self.dtype, self.numel, self.start = dtype, numel, start


class _SkippingReader:
    """The file as the C unpickler reads it, with large byte strings skipped (see above)."""

    def __init__(self, f, size):
        self.f, self.size = f, size
        self.last_bytes = None  # (file offset, length, skipped) of the latest byte string
        self.recent = collections.deque(maxlen=2)  # (file offset, data) of the latest frame reads
        self.cursor = 0  # file offset just after the latest storage located
        self.storages = []  # (file offset, bytes) of the data of every storage located
        self.keys = []  # (file offset, bytes) of the storage keys in the storages' headers

    def read(self, n=-1):
        pos = self.f.tell()
        data = self.f.read(n)
        if len(data) > 64:
            self.recent.append((pos, data))
        return data

    def readline(self):
        return self.f.readline()

    def readinto(self, buf):
        pos, n = self.f.tell(), len(buf)
        if n >= _SKIP_BYTES:
            if pos + n > self.size:
                raise FormatError("the file ends inside a tensor (truncated?)")
            self.f.seek(n, io.SEEK_CUR)
            self.last_bytes = (pos, n, True)
            return n
        got = self.f.readinto(buf)
        self.last_bytes = (pos, got, False)
        return got


class _LayoutUnpickler(SafeUnpickler):
    """`SafeUnpickler` whose storages and tensors are `_StorageLocation`s / `TensorLocation`s."""

    def __init__(self, reader):
        super().__init__(reader)
        # A function of the reader, not a bound method: the unpickler's memo keeps the globals
        # it returns, and a reference back to the unpickler would keep every object of the file
        # alive in a cycle until the next garbage collection.
        self._globals = {
            _load_from_bytes: functools.partial(_storage_location, reader),
            _rebuild_tensor_v2: _locate_tensor,
            _rebuild_parameter: _locate_parameter,
            _rebuild_from_type_v2: _locate_from_type_v2,
        }

    def find_class(self, module, name):
        target = super().find_class(module, name)
        return self._globals.get(target, target)


def _storage_location(reader, data):
    """`_load_from_bytes` for a storage left in the file: where its data starts, its dtype, size."""
    if not isinstance(data, (bytes, bytearray)):
        raise _NoLayout()  # protocol 2: the bytes were re-encoded through _codecs.encode
    n = len(data)
    last, reader.last_bytes = reader.last_bytes, None
    if last is not None and last[1] == n:
        start, skipped = last[0], last[2]
    else:  # read from the unpickler's buffer: a small byte string inside a frame
        start, skipped = _find_in_frames(reader, data), False
    for limit in (1024, _STORAGE_HEADER_BYTES):  # the header is a few hundred bytes
        if skipped:
            here = reader.f.tell()
            reader.f.seek(start)
            head = reader.f.read(min(n, limit))
            reader.f.seek(here)
        else:
            head = bytes(data[:limit])
        try:
            dtype, numel, key = _legacy_storage_header(head)
        except _NoLayout:
            if limit < _STORAGE_HEADER_BYTES and len(head) == limit:
                continue
            raise
        nbytes = numel * dtype.itemsize
        count_at = n - nbytes - 8  # the element count precedes the data
        if count_at < 0:
            raise FormatError("a tensor storage is shorter than its data")
        if count_at + 8 <= len(head):
            break
    else:
        raise _NoLayout()  # more than the usual few pickles before the data
    if int.from_bytes(head[count_at : count_at + 8], "little") != numel:
        raise FormatError("a tensor storage does not have the legacy torch.save layout")
    reader.cursor = start + n
    reader.storages.append((start + n - nbytes, nbytes))
    reader.keys += [(start + i, length) for i, length in _key_spans(head, key, count_at)]
    return _Sealed(_StorageLocation(dtype, numel, start + n - nbytes))


def _find_in_frames(reader, data) -> int:
    """File offset of the byte string `data` that the unpickler just took from a frame it read.

    The first occurrence after the previous storage that the opcode before it declares as a byte
    string of exactly this length: the position follows from the pickle's structure, not from
    the contents, so storages with identical bytes (e.g. zero gains) each map to their own copy.
    """
    n = len(data)
    prefixes = [pickle.BINBYTES + n.to_bytes(4, "little"), pickle.BINBYTES8 + n.to_bytes(8, "little")]
    if n < 256:
        prefixes.append(pickle.SHORT_BINBYTES + bytes([n]))
    for pos, chunk in reversed(reader.recent):
        i = chunk.find(data, max(0, reader.cursor - pos))
        while i >= 0:
            if any(i >= len(p) and chunk[i - len(p) : i] == p for p in prefixes):
                return pos + i
            i = chunk.find(data, i + 1)
    raise _NoLayout()


class _StorageHeaderUnpickler(pickle.Unpickler):
    """The small pickles at the start of a legacy `torch.save` of one storage (data only)."""

    def find_class(self, module, name):
        if module == "torch" and name in _STORAGE_DTYPES:
            return _Marker(f"torch.{name}")
        raise FormatError(f"a tensor storage names the global '{module}.{name}'; not an EDM2 pickle")

    def persistent_load(self, pid):
        self.pid = pid
        return None


def _key_spans(head: bytes, key, end: int) -> list:
    """`[(offset, length)]` of the storage key's characters in `head[:end]`, where the storage's
    persistent id and the list of keys that follows it name the key (as a pickled string)."""
    if not isinstance(key, str):
        return []
    k = key.encode()
    spans = []
    for opcode in (pickle.BINUNICODE + len(k).to_bytes(4, "little"), pickle.SHORT_BINUNICODE + bytes([len(k) % 256])):
        i = head.find(opcode + k, 0, end)
        while i >= 0:
            spans.append((i + len(opcode), len(k)))
            i = head.find(opcode + k, i + 1, end)
    return spans


def _legacy_storage_header(head: bytes):
    """`(dtype, numel, key)` from the start of a legacy `torch.save` of one storage."""
    f = io.BytesIO(head)
    try:
        for _ in range(3):  # magic number, protocol version, system info
            check_pickle_structure(f, len(head))
            _StorageHeaderUnpickler(f).load()
        check_pickle_structure(f, len(head))
        u = _StorageHeaderUnpickler(f)
        u.load()
        pid = getattr(u, "pid", None)
    except FormatError:
        raise
    except Exception:
        raise _NoLayout() from None
    if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage" and isinstance(pid[1], _Marker)):
        raise FormatError("a tensor storage has an unexpected persistent id")
    numel = pid[4]
    if not isinstance(numel, int) or numel < 0:
        raise FormatError("a tensor storage has an invalid size")
    return _STORAGE_DTYPES[pid[1].name.removeprefix("torch.")], numel, pid[2]


def _locate_tensor(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, *metadata):
    """`_rebuild_tensor_v2` for a storage left in the file: a `TensorLocation` (contiguous only)."""
    if not (isinstance(storage, _Sealed) and isinstance(storage.value, _StorageLocation)):
        raise FormatError(f"tensor storage is a {type(storage).__name__}, expected a torch storage")
    storage = storage.value
    size, stride = _int_tuple(size, "size"), _int_tuple(stride, "stride")
    if not isinstance(storage_offset, int) or storage_offset < 0 or len(size) != len(stride):
        raise FormatError(f"tensor view (offset {storage_offset!r}, size {size}, stride {stride}) is malformed")
    numel = math.prod(size)
    if storage_offset + numel > storage.numel:
        raise FormatError(f"tensor view of size {size} at offset {storage_offset} overruns its storage")
    contiguous = [math.prod(size[i + 1 :]) for i in range(len(size))]
    if numel > 1 and any(s != c for s, c, n in zip(stride, contiguous, size) if n > 1):
        raise _NoLayout()
    itemsize = storage.dtype.itemsize
    return _Sealed(TensorLocation(storage.dtype, size, storage.start + storage_offset * itemsize, numel * itemsize))


def _locate_parameter(data, requires_grad=False, backward_hooks=None, *state):
    if not (isinstance(data, _Sealed) and isinstance(data.value, TensorLocation)):
        raise FormatError(f"parameter data is a {type(data).__name__}, expected a tensor")
    return data


def _locate_from_type_v2(func, new_type, args, state):
    if func not in (_locate_tensor, _locate_parameter) or new_type not in (_TENSOR, _PARAMETER):
        raise FormatError("tensor rebuilt through an unexpected function or type")
    if not isinstance(args, tuple):
        raise FormatError("tensor rebuild arguments are malformed")
    return func(*args)


def _check_precond_shapes(network_kwargs: dict, found: dict) -> None:
    """Check the recorded Precond arguments (bounded, `edm2.io.snapshot.check_network_kwargs`)
    and that the tensors {name: shape} are what they build."""
    expected = network_shapes(network_kwargs, "the recorded Precond arguments")
    check_shapes({k: list(v) for k, v in found.items()}, expected, "the pickled Precond weights")


def official_pickle_layout(path, check: bool = True):
    """Where the tensors of an official EDM2 network pickle lie in the file, read safely without
    reading the tensor data or building a network (the fast input path of post-hoc EMA).

    Returns `(tensors, info)`: `tensors` maps the state-dict names of `edm2.nn.Precond` to
    `TensorLocation`s (dtype as stored, usually fp16; absolute byte offsets into `path`), `info`
    holds 'network_kwargs', 'encoder' (config dict) and 'extra' (source file, dataset and loss
    arguments) as `snapshot_fields` gives them. Returns None when the file cannot be read in
    place (pickle protocol 2, non-contiguous tensors): use `load_official_pickle` then. Raises
    `FormatError` for files that are not EDM2 network pickles. `check` compares the tensor names
    and shapes with `edm2.nn.Precond(**network_kwargs)` (built once per process on the meta
    device, about a second of torch start-up; post-hoc EMA skips it, as for its safetensors
    inputs, and compares the inputs with each other instead).
    """
    tensors, info, _ = _parse_layout(Path(path), check)
    return None if tensors is None else (tensors, info)


def _parse_layout(path: Path, check: bool):
    """`official_pickle_layout`, plus the reader that located the storages (None, None, None when
    the file cannot be read in place)."""
    with open_regular(path) as f:
        if f.read(2) == b"PK":
            raise FormatError(f"{path}: a ZIP archive (torch.save?), not an official EDM2 pickle")
        f.seek(0)
        reader = _SkippingReader(f, os.fstat(f.fileno()).st_size)
        try:
            check_pickle_structure(f, reader.size)
            data = _LayoutUnpickler(reader).load()
        except _NoLayout:
            return None, None, None
        except FormatError as e:
            raise FormatError(f"{path}: {e}") from None
        except Exception as e:
            raise FormatError(f"{path}: not a readable EDM2 pickle ({type(e).__name__}: {e})") from None
    if not isinstance(data, dict) or "ema" not in data:
        raise FormatError(f"{path}: not an EDM2 network pickle (expected a dict with key 'ema')")
    try:
        from edm2.nn import Precond

        obj = data["ema"]
        if not isinstance(obj, PersistentObject) or obj.class_name != "Precond":
            raise FormatError(f"the network is a {getattr(obj, 'class_name', type(obj).__name__)}, expected a Precond")
        network_kwargs = check_network_kwargs(_init_kwargs(obj, Precond), "the recorded Precond arguments")
        tensors = _module_state_dict(obj, tensor_type=TensorLocation)
        if check:
            _check_precond_shapes(network_kwargs, {k: tuple(t.shape) for k, t in tensors.items()})
        channels = network_kwargs["img_channels"]
        encoder = encoder_config_from_object(data["encoder"], channels) if data.get("encoder") is not None else None
        if encoder is None:
            if network_kwargs.get("img_channels") != 3:
                raise FormatError("the pickle has no encoder and the network is not RGB; cannot tell the encoder")
            encoder = {"class": "StandardRGBEncoder"}
        loss = loss_kwargs_from_object(data["loss_fn"]) if data.get("loss_fn") is not None else None
        dataset_kwargs = _dataset_kwargs(data.get("dataset_kwargs"))
    except FormatError as e:
        raise FormatError(f"{path}: {e}") from None
    extra = {"source": path.name, "dataset_kwargs": dataset_kwargs, "loss_kwargs": loss}
    return tensors, {"network_kwargs": network_kwargs, "encoder": encoder, "extra": extra}, reader


class OfficialLayouts:
    """`official_pickle_layout` for many pickles, parsing each distinct structure once.

    The snapshots of one training run are the same pickle apart from the tensor data and the
    storage keys (`torch.save` names each storage by its memory address, so the keys differ from
    file to file while their lengths, and everything else, stay the same). A file is compared
    byte for byte with an earlier parsed one everywhere outside its tensor data and keys (one
    read per storage header, about 0.1 MB for a 238 MB snapshot); when everything matches, the
    unpickler would read the same structure (the keys play no part in it), so the earlier file's
    tensor locations hold for this one. Any other difference (another run, network or pickler,
    keys of another length) and the file is parsed on its own. Instances are callable like
    `official_pickle_layout(path)`, with the same results.
    """

    def __init__(self, check: bool = True, keep: int = 4):
        self.check, self.keep = check, keep
        self.templates = []  # (file size, [(offset, expected bytes, key spans)], tensors, info), newest first

    def __call__(self, path):
        path = Path(path)
        with open_regular(path) as f:
            size = os.fstat(f.fileno()).st_size
            for k, (t_size, gaps, tensors, info) in enumerate(self.templates):
                if t_size == size and all(_masked_read(f.fileno(), at, len(b), keys) == b for at, b, keys in gaps):
                    self.templates.insert(0, self.templates.pop(k))
                    info = copy.deepcopy(info)
                    info["extra"]["source"] = path.name
                    return dict(tensors), info
        tensors, info, reader = _parse_layout(path, self.check)
        if tensors is None:
            return None
        gaps = []
        with open(path, "rb") as f:
            for at, end in _gaps(reader.storages, reader.size):
                keys = [(i - at, n) for i, n in reader.keys if at <= i < end]
                gaps.append((at, _masked_read(f.fileno(), at, end - at, keys), keys))
        self.templates = [(reader.size, gaps, tensors, copy.deepcopy(info))] + self.templates[: self.keep - 1]
        return dict(tensors), info


def _masked_read(fd: int, at: int, n: int, spans: list) -> bytes:
    """`n` bytes of the file at offset `at`, the `(offset, length)` spans (relative) zeroed."""
    data = os.pread(fd, n, at)
    if not spans:
        return data
    data = bytearray(data)
    for i, length in spans:
        data[i : i + length] = bytes(length)
    return bytes(data)


def _gaps(regions, size: int) -> list:
    """`[(start, end)]` of the bytes of `[0, size)` outside the `(offset, length)` regions."""
    gaps, at = [], 0
    for start, length in sorted(regions):
        if start > at:
            gaps.append((at, start))
        at = max(at, start + length)
    if at < size:
        gaps.append((at, size))
    return gaps
