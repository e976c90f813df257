"""The anchored patcher: locating functions, planning every edit first, and refusing to half-patch a tree."""
from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gpuscope.engine import patcher
from gpuscope.engine.source import pinned_source
from gpuscope.errors import PatchError

TEST_PATCHES = Path(__file__).resolve().parent.parent / "native_hooks" / "test-patches"


@pytest.fixture(scope="module")
def pinned() -> Path:
    return pinned_source()


@pytest.fixture()
def small_tree(tmp_path: Path, pinned: Path) -> Path:
    """Only the files the hook series edits, in their places: enough for the patcher."""
    for file in sorted({edit.file for edit in patcher.load_series()}):
        target = tmp_path / "tree" / file
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(pinned / file, target)
    (tmp_path / "tree" / "src").mkdir(exist_ok=True)
    return tmp_path / "tree"


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_series_plans_cleanly_on_the_pinned_tree(pinned: Path) -> None:
    edits = patcher.load_series()
    plan = patcher.plan(pinned, edits)
    assert {edit.file for edit in edits} == set(plan.new_texts)
    # every edit left its text in the file it names
    for edit in edits:
        assert edit.text.strip().splitlines()[0].strip() in plan.new_texts[edit.file], edit.id
    assert "ggml_cuda_get_best_fattn_kernel(const int device, const ggml_tensor * dst, uint8_t * reason)" \
        in plan.new_texts["ggml/src/ggml-cuda/fattn.cu"]


def test_apply_twice_is_a_no_op_and_another_series_is_refused(small_tree: Path) -> None:
    assert patcher.apply_series(small_tree) is True
    assert (small_tree / patcher.HOOKS_SUBDIR / "gpuscope_hooks.c").is_file()
    after_first = _snapshot(small_tree)
    assert patcher.apply_series(small_tree) is False
    assert _snapshot(small_tree) == after_first

    marker = patcher.marker_path(small_tree)
    marker.write_text(marker.read_text().replace(patcher.series_digest(), "0" * 64))
    with pytest.raises(PatchError, match="another hook series"):
        patcher.apply_series(small_tree)


def test_missing_anchors_are_all_named_and_nothing_changes(small_tree: Path) -> None:
    backend = small_tree / "ggml/src/ggml-backend.cpp"
    text = backend.read_text()
    # a fork that renamed a function and dropped a sync the hooks anchor on
    text = text.replace("void ggml_backend_event_wait(", "void ggml_backend_event_wait_renamed(")
    alloc = small_tree / "ggml/src/ggml-alloc.c"
    alloc.write_text(alloc.read_text().replace("static struct vbuffer * ggml_vbuffer_alloc(",
                                               "static struct vbuffer * ggml_vbuffer_allocate("))
    backend.write_text(text.replace("if (split->n_inputs == 0 && prev_backend_id >= 0", "if (prev_backend_id >= 0"))
    before = _snapshot(small_tree)

    with pytest.raises(PatchError) as failure:
        patcher.apply_series(small_tree)
    message = str(failure.value)
    assert "ggml/src/ggml-alloc.c: ggml_vbuffer_alloc" in message and "function not found" in message
    assert "ggml/src/ggml-backend.cpp: ggml_backend_event_wait" in message
    assert "split->n_inputs == 0 && prev_backend_id >= 0" in message and "split-boundary" in message
    assert "3 site(s) failed" in message
    assert _snapshot(small_tree) == before
    assert not (small_tree / patcher.HOOKS_SUBDIR).exists()


def test_cli_patch_reports_missing_sites(small_tree: Path) -> None:
    context = small_tree / "src/llama-context.cpp"
    context.write_text(context.read_text().replace("sched_need_reserve = false;", "sched_need_reserve = !true;"))
    done = subprocess.run([sys.executable, "-m", "gpuscope.cli", "engine", "patch", str(small_tree)],
                          capture_output=True, text=True)
    assert done.returncode == 2
    assert "src/llama-context.cpp: llama_context::sched_reserve" in done.stderr
    assert "sched_need_reserve = false;" in done.stderr
    assert "the tree was not changed" in done.stderr


def _series(tmp_path: Path, body: str, name: str = "series") -> Path:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "00-test.hooks").write_text(textwrap.dedent(body))
    return folder


def test_function_lookup_handles_overloads_constructors_and_comments(tmp_path: Path) -> None:
    source = textwrap.dedent("""\
        // void widget::run(int a) { not this one }
        static const char * s = "widget::run(int a) {";
        widget::widget(int a, int b) : a_(a), b_{b} {
            setup();
        }
        void widget::run(int a) {
            if (ok(a)) { go(a); }
        }
        void widget::run(const std::string & name) {
            go(name);
        }
        void caller() { widget::run(1); }
        """)
    code = patcher.code_only(source)
    ctor = patcher.find_function(source, code, "widget::widget")
    assert len(ctor) == 1 and source[ctor[0].body_open:ctor[0].end].strip().startswith("{\n    setup();")
    assert len(patcher.find_function(source, code, "widget::run")) == 2
    named = patcher.find_function(source, code, "widget::run(const std::string & name)")
    assert len(named) == 1 and "go(name)" in source[named[0].start:named[0].end]


def test_edit_actions_and_ambiguity(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    (root / "ggml" / "src").mkdir(parents=True)
    (root / "src").mkdir()
    (root / "src" / "a.cpp").write_text(textwrap.dedent("""\
        int f(int x) {
            x += 1;
            x += 1;
            return x;
        }
        """))
    edits = patcher.load_series(_series(tmp_path, """\
        ## start: first line of the body
        file: src/a.cpp
        function: f
        start:
        ~~~
            trace(x);
        ~~~

        ## ret: wrap the return
        file: src/a.cpp
        function: f
        anchor: return x;
        replace:
        ~~~
            const int r = x;
            return r;
        ~~~
        """))
    result = patcher.plan(root, edits)
    assert result.new_texts["src/a.cpp"] == textwrap.dedent("""\
        int f(int x) {
            trace(x);
            x += 1;
            x += 1;
            const int r = x;
            return r;
        }
        """)
    ambiguous = patcher.load_series(_series(tmp_path, """\
        ## twice: not unique
        file: src/a.cpp
        function: f
        anchor: x += 1;
        after:
        ~~~
            log(x);
        ~~~
        """, name="ambiguous"))
    with pytest.raises(PatchError, match=r"found 2 times \(must be unique\)"):
        patcher.plan(root, ambiguous)


def test_malformed_series_is_rejected(tmp_path: Path) -> None:
    folder = _series(tmp_path, """\
        ## no-action: forgot what to do
        file: src/a.cpp
        anchor: x
        """)
    with pytest.raises(PatchError, match="needs exactly one of"):
        patcher.load_series(folder)


def test_test_patches_apply_to_the_hooked_tree(tmp_path: Path, pinned: Path) -> None:
    tree = tmp_path / "tree"
    for file in ("src/llama-context.cpp", "src/llama-context.h"):
        (tree / file).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(pinned / file, tree / file)
    (tree / "ggml" / "src").mkdir(parents=True)
    edits = [e for e in patcher.load_series() if e.file.startswith("src/llama-context")]
    for file, text in patcher.plan(tree, edits).new_texts.items():
        (tree / file).write_text(text)
    patcher.apply_user_patch(tree, TEST_PATCHES / "alternate-topologies.diff")
    patcher.apply_user_patch(tree, TEST_PATCHES / "fix-stable-topology.diff")
    patcher.apply_user_patch(tree, TEST_PATCHES / "abort-mid-decode.diff")
    text = (tree / "src/llama-context.cpp").read_text()
    assert "test patch: abort in the middle of a decode step" in text and "gpuscope_decode_begin" in text
    with pytest.raises(PatchError, match="does not apply"):
        patcher.apply_user_patch(tree, TEST_PATCHES / "fix-stable-topology.diff")
