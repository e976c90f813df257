"""The C compiler and gpuscope.ring.schema must agree on every kind id, enum value, size and offset."""
import json
import re
import subprocess

from gpuscope.paths import native_hooks_dir
from gpuscope.ring.schema import load_schema


def _c_program(schema) -> str:
    lines = ['#include <stdio.h>', '#include <stddef.h>', '#include "gpuscope_ring.h"', "int main(void) {",
             'printf("{\\"structs\\": {");']
    for i, (name, struct) in enumerate(schema.structs.items()):
        sep = "," if i else ""
        fields = ", ".join(f'\\"{f.name}\\": [%zu, %zu]' for f in struct.fields)
        args = ", ".join(f"offsetof({name}, {f.name}), sizeof((({name}*)0)->{f.name})" for f in struct.fields)
        lines.append(f'printf("{sep}\\"{name}\\": {{\\"size\\": %zu, \\"fields\\": {{{fields}}}}}", '
                     f"sizeof({name}), {args});")
    lines.append('printf("}, \\"constants\\": {");')
    for i, name in enumerate(schema.constants):
        sep = "," if i else ""
        lines.append(f'printf("{sep}\\"{name}\\": \\"%llu\\"", (unsigned long long)({name}));')
    lines.append('printf("}, \\"kinds\\": {");')
    for i, (kind_id, kind_name) in enumerate(schema.kinds.items()):
        sep = "," if i else ""
        lines.append(f'printf("{sep}\\"{kind_name}\\": %d", (int)GPUSCOPE_KIND_{kind_name.upper()});')
    lines.append('printf("}}\\n"); return 0; }')
    return "\n".join(lines)


def test_c_and_python_layouts_agree(tmp_path):
    schema = load_schema()
    source = tmp_path / "layout.c"
    source.write_text(_c_program(schema))
    exe = tmp_path / "layout"
    subprocess.run(["cc", "-std=c11", "-Wall", "-Werror", f"-I{native_hooks_dir()}", str(source), "-o", str(exe)],
                   check=True)
    c = json.loads(subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout)

    assert set(c["structs"]) == set(schema.structs)
    for name, struct in schema.structs.items():
        assert c["structs"][name]["size"] == struct.size, name
        for field in struct.fields:
            assert c["structs"][name]["fields"][field.name] == [field.offset, field.size], (name, field.name)
    assert {k: int(v) for k, v in c["constants"].items()} == schema.constants
    assert {name: kind_id for kind_id, name in schema.kinds.items()} == c["kinds"]
    for kind_name in schema.kinds.values():
        assert schema.payload(kind_name).size <= schema.payload_size


def test_enum_values_agree(tmp_path):
    """Every enum member the C compiler sees has the value the parser read, and the parser missed none."""
    schema = load_schema()
    headers = "".join((native_hooks_dir() / name).read_text() for name in ("gpuscope_events.h", "gpuscope_ring.h"))
    declared = set(re.findall(r"^\s*(GPUSCOPE_[A-Z0-9_]+)\s*=", headers, re.M))
    assert declared == set(schema.members)
    body = "\n".join(f'printf("{m} %lld\\n", (long long){m});' for m in sorted(declared))
    source = tmp_path / "enums.c"
    source.write_text(f'#include <stdio.h>\n#include "gpuscope_ring.h"\nint main(void) {{ {body} return 0; }}\n')
    exe = tmp_path / "enums"
    subprocess.run(["cc", "-std=c11", f"-I{native_hooks_dir()}", str(source), "-o", str(exe)], check=True)
    output = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout
    c_values = {name: int(value) for name, value in (line.split() for line in output.splitlines())}
    assert c_values == schema.members
