"""`gpuscope bench overhead` without its unhooked twin: the command it names must make a build without hooks."""
from __future__ import annotations

import re
import shlex
import uuid

import pytest

from gpuscope.cli import build_parser, main
from gpuscope.cli.engine import build_spec


def _named_command(message: str):
    """The `gpuscope engine build ...` a message names, parsed by gpuscope's own parser."""
    found = re.search(r"`(gpuscope engine build [^`]*)`", message)
    assert found, message
    return build_parser().parse_args(shlex.split(found[1])[1:])


@pytest.mark.parametrize("baseline", ["absent", "hooked"])
def test_bench_overhead_names_a_command_that_builds_the_twin_without_hooks(engine_build, capsys, baseline):
    hooked = engine_build.meta["name"]
    twin = f"{hooked}-absent-{uuid.uuid4().hex[:8]}" if baseline == "absent" else hooked  # 'hooked': has hooks
    assert main(["bench", "overhead", "--engine", hooked, "--baseline", twin, "--rounds", "1"]) == 2
    message = capsys.readouterr().err
    assert message.startswith("gpuscope: error: ") and message.count("\n") == 1
    assert ("cannot stand for the unpatched engine" if baseline == "hooked" else "no unhooked twin") in message
    spec = build_spec(_named_command(message))
    assert spec.hooks is False and spec.backend == engine_build.meta["backend"] and not spec.patches
    assert spec.resolved_name() == (twin if baseline == "absent" else f"{hooked}-nohooks")
