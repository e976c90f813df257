"""ctypes on the ggml libraries of a build, for what llama-cpp-python binds nothing of: the backend registry,
devices, RPC servers, the tensors an eval callback sees, and the ring writer's control functions.

The libraries are opened by path from the build's bin/ after libllama loaded them, so the dynamic loader hands back
the very objects libllama uses (one registry, one ring per process).
"""
from __future__ import annotations

import ast
import ctypes
import operator
import re
from dataclasses import dataclass

from gpuscope.errors import RpcServerError
from gpuscope.session.binding import EngineBuild, c_struct_fields
from gpuscope.session.config import DeviceSpec

_DEVICE_KINDS = {0: "cpu", 1: "gpu", 2: "igpu", 3: "accel", 4: "meta"}  # enum ggml_backend_dev_type


@dataclass(frozen=True)
class Device:
    name: str
    description: str
    kind: str             # 'cpu', 'gpu', 'igpu', 'accel', or 'rpc' for devices behind a ggml-rpc-server
    backend: str          # the backend registry's name ('CPU', 'CUDA', 'RPC[127.0.0.1:50052]')
    memory_total: int
    memory_free: int
    row_split: bool
    handle: int           # ggml_backend_dev_t

    def spec(self) -> DeviceSpec:
        return DeviceSpec(name=self.name, kind=self.kind, row_split=self.row_split)


class Ggml:
    """The ggml entry points of one build's libraries (already loaded by libllama)."""

    def __init__(self, build: EngineBuild):
        self.build = build
        self.lib = ctypes.CDLL(str(build.bin_dir / "libggml.so"))
        self.base = ctypes.CDLL(str(build.bin_dir / "libggml-base.so"))
        p, c_size, c_char_p = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p
        self._declare(self.lib, "ggml_backend_dev_count", c_size)
        self._declare(self.lib, "ggml_backend_dev_get", p, c_size)
        self._declare(self.lib, "ggml_backend_reg_by_name", p, c_char_p)
        for name, restype in (("ggml_backend_dev_name", c_char_p), ("ggml_backend_dev_description", c_char_p),
                              ("ggml_backend_dev_type", ctypes.c_int), ("ggml_backend_dev_backend_reg", p)):
            self._declare(self.base, name, restype, p)
        self._declare(self.base, "ggml_backend_dev_memory", None, p, ctypes.POINTER(c_size), ctypes.POINTER(c_size))
        self._declare(self.base, "ggml_backend_reg_name", c_char_p, p)
        self._declare(self.base, "ggml_backend_reg_dev_count", c_size, p)
        self._declare(self.base, "ggml_backend_reg_dev_get", p, p, c_size)
        self._declare(self.base, "ggml_backend_reg_get_proc_address", p, p, c_char_p)
        self._declare(self.base, "ggml_backend_tensor_get", None, p, p, c_size, c_size)
        self._declare(self.base, "ggml_nbytes", c_size, p)
        self._declare(self.base, "ggml_type_name", c_char_p, ctypes.c_int)
        self.tensor_struct = tensor_struct(build)

    @staticmethod
    def _declare(lib: ctypes.CDLL, name: str, restype, *argtypes) -> None:
        function = getattr(lib, name)
        function.restype = restype
        function.argtypes = list(argtypes)

    # -- devices -------------------------------------------------------------------------------------------------

    def device(self, handle: int, kind: str | None = None) -> Device:
        base = self.base
        free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
        base.ggml_backend_dev_memory(handle, ctypes.byref(free), ctypes.byref(total))
        reg = base.ggml_backend_dev_backend_reg(handle)
        return Device(
            name=base.ggml_backend_dev_name(handle).decode(),
            description=(base.ggml_backend_dev_description(handle) or b"").decode(),
            kind=kind or _DEVICE_KINDS.get(base.ggml_backend_dev_type(handle), "unknown"),
            backend=base.ggml_backend_reg_name(reg).decode() if reg else "",
            memory_total=total.value, memory_free=free.value,
            row_split=bool(reg and base.ggml_backend_reg_get_proc_address(reg, b"ggml_backend_split_buffer_type")),
            handle=handle,
        )

    def local_devices(self) -> list[Device]:
        """Every device in the build's backend registry (RPC servers are never registered there by gpuscope)."""
        return [self.device(self.lib.ggml_backend_dev_get(i)) for i in range(self.lib.ggml_backend_dev_count())]

    def rpc_devices(self, endpoint: str) -> list[Device]:
        """The devices a ggml-rpc-server at HOST:PORT offers (connects to it)."""
        reg = self.lib.ggml_backend_reg_by_name(b"RPC")
        if not reg:
            raise RpcServerError(f"the engine build at {self.build.root} has no RPC backend: build it with "
                                 "GGML_RPC=ON (gpuscope engine build does)")
        address = self.base.ggml_backend_reg_get_proc_address(reg, b"ggml_backend_rpc_add_server")
        add_server = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_char_p)(address)
        server_reg = add_server(endpoint.encode())
        if not server_reg:
            raise RpcServerError(f"no ggml-rpc-server answers at {endpoint} (or it offers no device)")
        count = self.base.ggml_backend_reg_dev_count(server_reg)
        return [self.device(self.base.ggml_backend_reg_dev_get(server_reg, i), kind="rpc") for i in range(count)]

    # -- tensors (eval callback) ---------------------------------------------------------------------------------

    def tensor(self, address: int):
        return self.tensor_struct.from_address(address)

    def tensor_bytes(self, address: int) -> bytes:
        """A copy of the tensor's data, wherever its buffer lives."""
        size = self.base.ggml_nbytes(address)
        out = ctypes.create_string_buffer(size)
        self.base.ggml_backend_tensor_get(address, out, 0, size)
        return out.raw

    def type_name(self, ggml_type: int) -> str:
        return self.base.ggml_type_name(ggml_type).decode()

    # -- the ring ------------------------------------------------------------------------------------------------

    def ring_functions(self):
        """(open, close) of the ring writer compiled into ggml-base, or None in an unpatched build."""
        try:
            ring_open, ring_close = self.base.gpuscope_ring_open, self.base.gpuscope_ring_close
        except AttributeError:
            return None
        ring_open.restype, ring_open.argtypes = ctypes.c_int, [ctypes.c_char_p, ctypes.c_uint64, ctypes.c_uint64]
        ring_close.restype, ring_close.argtypes = None, []
        return ring_open, ring_close

    def forget_reported_plans(self) -> bool:
        """Have the hooks report FA plans and op placements again from now on (each is reported once per ring);
        False for a build whose hooks predate this."""
        try:
            forget = self.base.gpuscope_plans_forget
        except AttributeError:
            return False
        forget.restype, forget.argtypes = None, []
        forget()
        return True


def tensor_struct(build: EngineBuild) -> type[ctypes.Structure]:
    """`struct ggml_tensor` as a ctypes Structure, laid out from the build's own ggml.h."""
    header = build.header("ggml.h")
    if header is None:
        raise FileNotFoundError(f"the build at {build.root} has no include/ggml.h")
    text = header.read_text()
    defines = {name: int(value) for name, value in re.findall(r"#\s*define\s+(\w+)\s+(\d+)\b", text)}
    scalar = {"int64_t": ctypes.c_int64, "size_t": ctypes.c_size_t, "int32_t": ctypes.c_int32,
              "char": ctypes.c_char}
    fields = []
    for field in c_struct_fields(text, "ggml_tensor"):
        ctype = ctypes.c_void_p if "*" in field.ctype else (
            ctypes.c_int if field.ctype.startswith("enum ") else scalar[field.ctype])
        if field.count is not None:
            ctype = ctype * _array_length(field.count, defines)
        fields.append((field.name, ctype))
    return type("ggml_tensor", (ctypes.Structure,), {"_fields_": fields})


_OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.floordiv,
              ast.FloorDiv: operator.floordiv}


def _array_length(expression: str, defines: dict[str, int]) -> int:
    """Evaluate an array length like `GGML_MAX_OP_PARAMS / sizeof(int32_t)`."""
    expression = re.sub(r"sizeof\s*\(\s*(u?int(8|16|32|64)_t)\s*\)", lambda m: str(int(m.group(2)) // 8), expression)

    def evaluate(node: ast.AST) -> int:
        if isinstance(node, ast.Expression):
            return evaluate(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.Name) and node.id in defines:
            return defines[node.id]
        if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
            return _OPERATORS[type(node.op)](evaluate(node.left), evaluate(node.right))
        raise ValueError(f"cannot evaluate the array length {expression!r} from ggml.h")

    return evaluate(ast.parse(expression, mode="eval"))

