"""The in-process binding: llama-cpp-python's ctypes declarations, pointed at a patched engine build.

llama-cpp-python is installed without its vendored engine (`CMAKE_ARGS=-DLLAMA_BUILD=OFF`) and loads whatever
`libllama.so` `LLAMA_CPP_LIB_PATH` names, once per process. Its structs are declared by hand for one version of
`llama.h`; forks add fields (to `llama_context_params`, for example), and a struct passed by value with the wrong
layout corrupts memory silently. So before loading a build, the struct declarations of the build's own `llama.h`
are compared field by field with the binding's, read from the binding's source without importing it.
"""
from __future__ import annotations

import ast
import ctypes
import importlib.metadata
import importlib.util
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from gpuscope.engine.build import find_build
from gpuscope.errors import BindingMismatchError, EngineConflictError, EngineNotFoundError

# Structs the binding passes by value to the engine: their layouts must agree.
CHECKED_STRUCTS = ("llama_model_params", "llama_context_params")
_POINTER_SIZE = ctypes.sizeof(ctypes.c_void_p)
_C_SIZES = {
    "bool": 1, "char": 1, "int8_t": 1, "uint8_t": 1, "int16_t": 2, "uint16_t": 2, "int": 4, "int32_t": 4,
    "uint32_t": 4, "float": 4, "int64_t": 8, "uint64_t": 8, "double": 8, "size_t": _POINTER_SIZE,
}


@dataclass(frozen=True)
class EngineBuild:
    """A build whose bin/ holds libllama.so, the ggml libraries and the engine's programs, and whose headers
    (include/llama.h, ggml.h, ...) describe its C API."""
    root: Path
    bin_dir: Path
    include_dirs: tuple[Path, ...]
    meta: dict

    @property
    def library(self) -> Path:
        return self.bin_dir / "libllama.so"

    def program(self, name: str) -> Path:
        path = self.bin_dir / name
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise EngineNotFoundError(f"the engine build at {self.root} has no program {name!r} in {self.bin_dir}")
        return path

    def header(self, name: str) -> Path | None:
        return next((d / name for d in self.include_dirs if (d / name).is_file()), None)

    def headers_text(self) -> str:
        return "".join(path.read_text() for folder in self.include_dirs for path in sorted(folder.glob("*.h")))


def resolve_engine(engine: str | os.PathLike | EngineBuild | None = None) -> EngineBuild:
    """An engine build: a folder (a `gpuscope engine build` folder, its build/ or bin/, or any folder with bin/ and
    include/), or a build name known to `gpuscope engine list` (None: the most recent hooked CPU build)."""
    if isinstance(engine, EngineBuild):
        return engine
    if engine is not None and (Path(engine).is_dir() or os.sep in str(engine)):
        return _build_at(Path(engine))
    return _build_at(find_build(None if engine is None else str(engine)).root)


def _build_at(path: Path) -> EngineBuild:
    path = path.expanduser().resolve()
    bin_dir = next((d for d in (path / "build" / "bin", path / "bin", path) if (d / "libllama.so").is_file()), None)
    if bin_dir is None:
        raise EngineNotFoundError(f"{path} is not an engine build: no libllama.so in it, its bin/ or build/bin/ "
                                  "(build one with `gpuscope engine build`)")
    root = path if bin_dir != path else bin_dir.parent
    folders = [root, bin_dir.parent, bin_dir.parent.parent]
    include_dirs = tuple(dict.fromkeys(
        d for folder in folders for d in (folder / "include", folder / "src" / "include",
                                          folder / "src" / "ggml" / "include") if d.is_dir() and any(d.glob("*.h"))))
    meta_file = next((f for folder in (bin_dir.parent, root) if (f := folder / "gpuscope-build.json").is_file()), None)
    meta = json.loads(meta_file.read_text()) if meta_file else {"root": str(root), "bin_dir": str(bin_dir)}
    return EngineBuild(root=root, bin_dir=bin_dir, include_dirs=include_dirs, meta=meta)


# -- C struct declarations ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CField:
    name: str
    ctype: str          # the declared type, whitespace-normalized ('const float *', 'enum llama_split_mode')
    count: str | None   # array length expression, None for scalars


def _strip_comments(text: str) -> str:
    return re.sub(r"//[^\n]*", "", re.sub(r"/\*.*?\*/", "", text, flags=re.S))


def c_struct_fields(header_text: str, struct: str) -> list[CField]:
    """The fields of `struct NAME { ... };` in declaration order."""
    code = _strip_comments(header_text)
    match = re.search(rf"\bstruct\s+{re.escape(struct)}\s*\{{", code)
    if match is None:
        raise KeyError(struct)
    depth, end = 1, match.end()
    while depth:
        depth += {"{": 1, "}": -1}.get(code[end], 0)
        end += 1
    fields = []
    for declaration in code[match.end():end - 1].split(";"):
        declaration = " ".join(declaration.split())
        if not declaration:
            continue
        decl = re.fullmatch(r"(.+?)\s*\b(\w+)\s*(?:\[\s*([^\]]+?)\s*\])?", declaration)
        if decl is None:
            raise ValueError(f"cannot read the declaration {declaration!r} of struct {struct}")
        fields.append(CField(name=decl.group(2), ctype=decl.group(1).strip(), count=decl.group(3)))
    return fields


def c_typedefs(header_text: str) -> dict[str, str]:
    """typedef name -> 'pointer' (pointers and function pointers) or the aliased type."""
    code = _strip_comments(header_text)
    typedefs: dict[str, str] = {}
    for name in re.findall(r"typedef[^;{}]*?\(\s*\*\s*(\w+)\s*\)\s*\(", code):
        typedefs[name] = "pointer"
    for target, star, name in re.findall(r"typedef\s+([\w\s]+?)\s*(\*?)\s*(\w+)\s*;", code):
        typedefs.setdefault(name, "pointer" if star else " ".join(target.split()))
    return typedefs


def c_field_size(field: CField, typedefs: dict[str, str]) -> int | None:
    """Bytes the field occupies (arrays excluded: None for anything this cannot size)."""
    if field.count is not None:
        return None
    ctype = field.ctype.replace("const ", "").strip()
    for _ in range(8):  # follow typedef chains
        if "*" in ctype or typedefs.get(ctype) == "pointer":
            return _POINTER_SIZE
        if ctype.startswith("enum "):
            return 4
        if ctype in _C_SIZES:
            return _C_SIZES[ctype]
        if ctype not in typedefs:
            return None
        ctype = typedefs[ctype]
    return None


# -- the binding's declarations, read without importing it ---------------------------------------------------------

def binding_source() -> Path:
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        raise EngineNotFoundError(
            "llama-cpp-python is not installed: install it without its vendored engine with "
            "CMAKE_ARGS=-DLLAMA_BUILD=OFF pip install llama-cpp-python==0.3.36 (gpuscope's set-up does this)")
    return Path(list(spec.submodule_search_locations)[0]) / "llama_cpp.py"


def binding_struct_fields(source: Path, struct: str) -> list[tuple[str, int | None]]:
    """(field name, size in bytes or None when unknown) of the binding's ctypes.Structure `struct`."""
    module = ast.parse(source.read_text())
    assignments = {target.id: node.value for node in module.body if isinstance(node, ast.Assign)
                   for target in node.targets if isinstance(target, ast.Name)}
    for node in module.body:
        if isinstance(node, ast.ClassDef) and node.name == struct:
            for statement in node.body:
                if (isinstance(statement, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "_fields_"
                                                              for t in statement.targets)):
                    return [(ast.literal_eval(item.elts[0]), _ctypes_size(item.elts[1], assignments))
                            for item in statement.value.elts]
    raise KeyError(struct)


def _ctypes_size(node: ast.expr, assignments: dict[str, ast.expr], depth: int = 0) -> int | None:
    if depth > 8:
        return None
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "ctypes":
        ctype = getattr(ctypes, node.attr, None)
        return ctypes.sizeof(ctype) if ctype is not None else None
    if isinstance(node, ast.Call):
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        return _POINTER_SIZE if name in ("POINTER", "CFUNCTYPE") else None
    if isinstance(node, ast.Name) and node.id in assignments:
        return _ctypes_size(assignments[node.id], assignments, depth + 1)
    return None


def abi_differences(build: EngineBuild, source: Path | None = None) -> list[str]:
    """Human-readable differences between the build's llama.h structs and the binding's; [] when they agree."""
    if build.header("llama.h") is None:
        return [f"the build at {build.root} has no include/llama.h to check the binding against"]
    text = build.headers_text()
    typedefs = c_typedefs(text)
    source = source or binding_source()
    problems: list[str] = []
    for struct in CHECKED_STRUCTS:
        try:
            engine_fields = c_struct_fields(text, struct)
        except KeyError:
            problems.append(f"llama.h declares no struct {struct}")
            continue
        binding_fields = binding_struct_fields(source, struct)
        engine_names = [f.name for f in engine_fields]
        binding_names = [name for name, _ in binding_fields]
        if engine_names != binding_names:
            added = [n for n in engine_names if n not in binding_names]
            missing = [n for n in binding_names if n not in engine_names]
            detail = "; ".join(filter(None, [f"the build adds {', '.join(added)}" if added else "",
                                             f"the build lacks {', '.join(missing)}" if missing else "",
                                             "the order differs" if not (added or missing) else ""]))
            problems.append(f"struct {struct}: {detail}")
            continue
        for field, (_, binding_size) in zip(engine_fields, binding_fields, strict=True):
            engine_size = c_field_size(field, typedefs)
            if engine_size is None or binding_size is None or engine_size != binding_size:
                problems.append(f"struct {struct}: field {field.name} is `{field.ctype}` in llama.h "
                                f"({engine_size or '?'} bytes), {binding_size or '?'} bytes in the binding")
    return problems


# -- loading -----------------------------------------------------------------------------------------------------

def loaded_library() -> Path | None:
    """The libllama this process already loaded through llama-cpp-python, if any."""
    module = sys.modules.get("llama_cpp.llama_cpp")
    return Path(module._lib._name).resolve() if module is not None else None


def load_binding(build: EngineBuild):
    """Import llama-cpp-python's low-level module bound to `build` (checked first); returns the module."""
    problems = abi_differences(build)
    if problems:
        raise BindingMismatchError(
            f"the engine build at {build.root} has a C API that llama-cpp-python "
            f"{_binding_version()} does not match, so it cannot be loaded in-process:\n  - "
            + "\n  - ".join(problems)
            + "\nRecord its programs out of process instead: gpuscope record --out run.trace -- "
              f"{build.bin_dir}/llama-bench -m MODEL")
    loaded = loaded_library()
    if loaded is not None:
        if loaded != build.library.resolve():
            raise EngineConflictError(
                f"this process already loaded {loaded}; a process can load one libllama, so {build.library} "
                "cannot be loaded beside it: run this build in a worker process (open_session(..., isolate=True))")
        return sys.modules["llama_cpp.llama_cpp"]
    _cxx_runtime_global()
    os.environ["LLAMA_CPP_LIB_PATH"] = str(build.bin_dir)
    import llama_cpp.llama_cpp as llama  # here, not above: importing it loads libllama, only after the check

    return llama


def _cxx_runtime_global() -> None:
    """Put the C++ runtime in the process's global symbol scope before libllama loads.

    ctypes loads libllama with RTLD_LOCAL into a Python that links no libstdc++, so libllama's C++ symbols are then
    looked up through its own dependencies, breadth first. A CUDA build's libggml-cuda exports copies of some
    libstdc++ templates (`std::ostream::_M_insert<long>`), and those were picked over libstdc++'s: on two H200s
    every in-process load died with SIGSEGV in `llama_model::print_info` while llama-bench, which links libstdc++
    itself, ran. With libstdc++ global first (what LD_PRELOAD of it also fixed), the lookup finds the real one.
    """
    try:
        ctypes.CDLL("libstdc++.so.6", mode=ctypes.RTLD_GLOBAL)
    except OSError:
        pass  # no libstdc++ on the search path: libllama's own DT_NEEDED then fails with the loader's message


def _binding_version() -> str:
    try:
        return importlib.metadata.version("llama_cpp_python")
    except importlib.metadata.PackageNotFoundError:
        return "(unknown version)"
