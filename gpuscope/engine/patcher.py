"""Apply gpuscope's hook patch series to a llama.cpp tree, anchored on function names instead of line numbers.

A series is a folder of `*.hooks` files applied in name order. Each file holds edits:

    ## <id>: <what the edit does>
    file: ggml/src/ggml-backend.cpp
    function: ggml_backend_synchronize          (optional; `name(params)` picks one overload)
    anchor: backend->iface.synchronize(backend);
    replace:
    ~~~
    <text>
    ~~~

`function` is found by its definition (name, parameter list, then the body's opening brace; constructor
initializer lists are skipped) and its body by brace matching, outside comments and string literals. `anchor`
must occur exactly once inside the function (or, without `function`, once in the whole file); whitespace runs in
an anchor match any whitespace. A one-line value may follow the colon; a longer one goes in a `~~~` block on the
next lines. The action is one of:
    before:   insert the text on its own lines before the anchor's line(s)
    after:    insert the text on its own lines after the anchor's line(s)
    replace:  replace the anchor's lines with the text
    start:    insert the text at the start of the function's body (no anchor)
An anchor that starts or ends mid-line is edited in place instead of by whole lines.

Every edit is planned before any file is written: if an anchor or function is missing or ambiguous, the error
names each such site and the tree is left untouched. The hooks' C sources are copied to ggml/src/gpuscope/ with a
marker that makes a second application a no-op (same series) or an error (another one).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from gpuscope.errors import PatchError
from gpuscope.paths import native_hooks_dir

ACTIONS = ("before", "after", "replace", "start")
FENCE = "~~~"
HOOKS_SUBDIR = Path("ggml/src/gpuscope")
MARKER_NAME = "PATCHED.json"
# The C sources the hooks compile with, copied into the tree next to the ggml-base sources.
NATIVE_SOURCES = ("gpuscope_events.h", "gpuscope_ring.h", "gpuscope_ring.c", "gpuscope_hooks.h", "gpuscope_hooks.c")


def series_dir() -> Path:
    return native_hooks_dir() / "patches"


@dataclass(frozen=True)
class Edit:
    id: str
    description: str
    file: str
    function: str | None
    anchor: str | None
    action: str
    text: str
    origin: str  # "<series file>:<line>" for messages

    @property
    def site(self) -> str:
        where = f"{self.file}: {self.function}" if self.function else self.file
        anchor = f" anchor {_short(self.anchor)!r}" if self.anchor is not None else " (body start)"
        return f"{where}:{anchor} [{self.id}, {self.origin}]"


def _short(text: str | None, limit: int = 70) -> str:
    one_line = " ".join((text or "").split())
    return one_line if len(one_line) <= limit else one_line[: limit - 3] + "..."


# ---- parsing the series -----------------------------------------------------------------------------------------

def parse_series_file(path: Path) -> list[Edit]:
    lines = path.read_text().splitlines()
    edits: list[Edit] = []
    current: dict | None = None
    i = 0

    def finish() -> None:
        if current is not None:
            edits.append(_make_edit(current, path))

    while i < len(lines):
        line = lines[i]
        i += 1
        if line.startswith("## "):
            finish()
            head = line[3:].strip()
            ident, _, description = head.partition(":")
            current = {"id": ident.strip(), "description": description.strip(), "line": i, "fields": {}}
            continue
        if current is None or not line.strip() or (line.startswith("#") and not line.startswith("##")):
            continue  # preamble and comments
        key, sep, value = line.partition(":")
        key = key.strip()
        if not sep or not re.fullmatch(r"[a-z]+", key):
            raise PatchError(f"{path.name}:{i}: expected `key: value`, got {line!r}")
        if key in current["fields"]:
            raise PatchError(f"{path.name}:{i}: {key} given twice in edit {current['id']}")
        value = value.strip()
        if value == "" and key in ("anchor", *ACTIONS):
            if i >= len(lines) or lines[i].strip() != FENCE:
                if key == "start":
                    raise PatchError(f"{path.name}:{i}: `start:` needs its text in a {FENCE} block")
                raise PatchError(f"{path.name}:{i}: `{key}:` needs a value or a {FENCE} block on the next line")
            end = i + 1
            while end < len(lines) and lines[end].strip() != FENCE:
                end += 1
            if end >= len(lines):
                raise PatchError(f"{path.name}:{i + 1}: unterminated {FENCE} block")
            value = "\n".join(lines[i + 1:end])
            i = end + 1
        current["fields"][key] = value
    finish()
    return edits


def _make_edit(raw: dict, path: Path) -> Edit:
    fields = raw["fields"]
    origin = f"{path.name}:{raw['line']}"
    unknown = set(fields) - {"file", "function", "anchor", *ACTIONS}
    if unknown:
        raise PatchError(f"{origin}: unknown key(s) {', '.join(sorted(unknown))} in edit {raw['id']}")
    actions = [a for a in ACTIONS if a in fields]
    if len(actions) != 1:
        raise PatchError(f"{origin}: edit {raw['id']} needs exactly one of {', '.join(ACTIONS)}")
    action = actions[0]
    if "file" not in fields:
        raise PatchError(f"{origin}: edit {raw['id']} names no file")
    if action == "start":
        if "function" not in fields or "anchor" in fields:
            raise PatchError(f"{origin}: a `start` edit ({raw['id']}) needs a function and no anchor")
    elif "anchor" not in fields:
        raise PatchError(f"{origin}: edit {raw['id']} needs an anchor")
    return Edit(id=raw["id"], description=raw["description"], file=fields["file"], function=fields.get("function"),
                anchor=fields.get("anchor"), action=action, text=fields[action], origin=origin)


def load_series(folder: Path | None = None) -> list[Edit]:
    folder = folder or series_dir()
    files = sorted(folder.glob("*.hooks"))
    if not files:
        raise PatchError(f"no *.hooks files in {folder}")
    return [edit for path in files for edit in parse_series_file(path)]


def series_digest(folder: Path | None = None) -> str:
    """sha256 over the series and the C sources it copies: what a build key depends on."""
    folder = folder or series_dir()
    digest = hashlib.sha256()
    for path in sorted(folder.glob("*.hooks")) + [native_hooks_dir() / name for name in NATIVE_SOURCES]:
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


# ---- locating functions and anchors -----------------------------------------------------------------------------

def code_only(text: str) -> str:
    """`text` with comments and string/char literals blanked (same length), so searches see only code."""
    out = list(text)
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "/" and i + 1 < n and text[i + 1] == "/":
            end = text.find("\n", i)
            end = n if end < 0 else end
        elif c == "/" and i + 1 < n and text[i + 1] == "*":
            end = text.find("*/", i + 2)
            end = n if end < 0 else end + 2
        elif c in "\"'":
            raw = re.match(r'R"([^(\s]*)\(', text[i - 1:i + 20]) if c == '"' and i > 0 and text[i - 1] == "R" else None
            if raw:
                close = text.find(")" + raw.group(1) + '"', i)
                end = n if close < 0 else close + len(raw.group(1)) + 2
            else:
                end = i + 1
                while end < n and text[end] != c and text[end] != "\n":
                    end += 2 if text[end] == "\\" else 1
                end = min(end + 1, n)
        else:
            i += 1
            continue
        for j in range(i, end):
            if out[j] != "\n":
                out[j] = " "
        i = end
    return "".join(out)


_PAIRS = {"(": ")", "{": "}", "[": "]"}


def _match(code: str, open_at: int) -> int:
    """Index of the bracket closing the one at `open_at`, or -1."""
    opener = code[open_at]
    closer = _PAIRS[opener]
    depth = 0
    for i in range(open_at, len(code)):
        if code[i] == opener:
            depth += 1
        elif code[i] == closer:
            depth -= 1
            if depth == 0:
                return i
    return -1


_QUALIFIERS = re.compile(r"\s*(?:const|noexcept|override|final|volatile|&&|&|->\s*[\w:<>,\s*&]+?(?=\s*\{))")
_INIT_NAME = re.compile(r"\s*[\w:]+(?:<[^<>]*>)?\s*")


def _body_open(code: str, after_params: int) -> int:
    """Index of the body's `{` for a definition whose parameter list ends before `after_params`, or -1."""
    i = after_params
    while True:
        m = _QUALIFIERS.match(code, i)
        if not m or m.end() == i:
            break
        i = m.end()
    while i < len(code) and code[i].isspace():
        i += 1
    if i < len(code) and code[i] == "{":
        return i
    if i < len(code) and code[i] == ":" and code[i + 1:i + 2] != ":":
        i += 1  # constructor initializer list: name(args) or name{args}, comma separated
        while True:
            m = _INIT_NAME.match(code, i)
            if not m or not m.group().strip():
                return -1
            i = m.end()
            if i >= len(code) or code[i] not in "({":
                return -1
            close = _match(code, i)
            if close < 0:
                return -1
            i = close + 1
            while i < len(code) and code[i].isspace():
                i += 1
            if i < len(code) and code[i] == ",":
                i += 1
                continue
            return i if i < len(code) and code[i] == "{" else -1
    return -1


@dataclass(frozen=True)
class Span:
    start: int       # start of the line where the function's name is
    body_open: int   # its `{`
    end: int         # one past its closing `}`


def find_function(text: str, code: str, function: str) -> list[Span]:
    """Every definition of `function` (`name` or `name(params)`) in a file."""
    name, paren, params = function.partition("(")
    name = name.strip()
    wanted_params = re.sub(r"\s+", "", params[:-1]) if paren else None
    name_pattern = r"\s*::\s*".join(re.escape(part) for part in name.split("::"))
    spans = []
    for m in re.finditer(r"(?<![\w.>:])" + name_pattern + r"\s*\(", code):
        open_paren = m.end() - 1
        close_paren = _match(code, open_paren)
        if close_paren < 0:
            continue
        if wanted_params is not None and re.sub(r"\s+", "", code[open_paren + 1:close_paren]) != wanted_params:
            continue
        body = _body_open(code, close_paren + 1)
        if body < 0:
            continue
        body_close = _match(code, body)
        if body_close < 0:
            continue
        spans.append(Span(start=code.rfind("\n", 0, m.start()) + 1, body_open=body, end=body_close + 1))
    return spans


def anchor_pattern(anchor: str) -> re.Pattern:
    parts = anchor.strip().split()
    return re.compile(r"\s+".join(re.escape(p) for p in parts))


@dataclass(frozen=True)
class PlannedChange:
    start: int
    end: int
    text: str
    order: int


def _line_bounds(text: str, start: int, end: int) -> tuple[int, int, bool, bool]:
    """The anchor widened to whole lines when only whitespace surrounds it on its first and last line."""
    line_start = text.rfind("\n", 0, start) + 1
    line_end = text.find("\n", end)
    line_end = len(text) if line_end < 0 else line_end
    whole_start = text[line_start:start].strip() == ""
    whole_end = text[end:line_end].strip() == ""
    return (line_start if whole_start else start), (line_end if whole_end else end), whole_start, whole_end


def _plan_one(edit: Edit, text: str, span_start: int, span_end: int, body_open: int | None,
              order: int) -> PlannedChange | str:
    """The change an edit makes, or why it cannot be made."""
    if edit.action == "start":
        line_end = text.find("\n", body_open)
        rest_of_line = text[body_open + 1:line_end] if line_end >= 0 else ""
        if line_end >= 0 and rest_of_line.strip() == "":
            return PlannedChange(line_end, line_end, "\n" + edit.text, order)
        return PlannedChange(body_open + 1, body_open + 1, edit.text, order)
    matches = list(anchor_pattern(edit.anchor).finditer(text, span_start, span_end))
    if len(matches) != 1:
        return "not found" if not matches else f"found {len(matches)} times (must be unique)"
    start, end, whole_start, whole_end = _line_bounds(text, matches[0].start(), matches[0].end())
    if edit.action == "before":
        return PlannedChange(start, start, edit.text + ("\n" if whole_start else ""), order)
    if edit.action == "after":
        return PlannedChange(end, end, ("\n" if whole_end else "") + edit.text, order)
    return PlannedChange(start, end, edit.text, order)


@dataclass
class Plan:
    root: Path
    new_texts: dict[str, str]   # relative path -> patched text
    edits: list[Edit]


def plan(root: Path, edits: list[Edit]) -> Plan:
    """Plan every edit against the unmodified tree; raise naming every site that cannot be patched."""
    problems: list[str] = []
    changes: dict[str, list[PlannedChange]] = {}
    texts: dict[str, tuple[str, str]] = {}
    for order, edit in enumerate(edits):
        path = root / edit.file
        if edit.file not in texts:
            if not path.is_file():
                problems.append(f"{edit.site}: file missing")
                continue
            text = path.read_text()
            texts[edit.file] = (text, code_only(text))
        text, code = texts[edit.file]
        span_start, span_end, body_open = 0, len(text), None
        if edit.function:
            spans = find_function(text, code, edit.function)
            if len(spans) != 1:
                problems.append(f"{edit.site}: function {'not found' if not spans else f'defined {len(spans)} times'}")
                continue
            span_start, span_end, body_open = spans[0].start, spans[0].end, spans[0].body_open
        change = _plan_one(edit, text, span_start, span_end, body_open, order)
        if isinstance(change, str):
            problems.append(f"{edit.site}: {change}")
            continue
        changes.setdefault(edit.file, []).append(change)
    for file, planned in changes.items():
        ordered = sorted(planned, key=lambda c: (c.start, c.order))
        for a, b in zip(ordered, ordered[1:]):
            if b.start < a.end:
                problems.append(f"{file}: edits {edits[a.order].id} and {edits[b.order].id} overlap")
    if problems:
        raise PatchError(f"cannot apply the hook patch series to {root}: {len(problems)} site(s) failed "
                         "(the tree was not changed):\n  " + "\n  ".join(problems))
    new_texts = {}
    for file, planned in changes.items():
        text = texts[file][0]
        out, pos = [], 0
        for change in sorted(planned, key=lambda c: (c.start, c.order)):
            out.append(text[pos:change.start])
            out.append(change.text)
            pos = change.end
        out.append(text[pos:])
        new_texts[file] = "".join(out)
    return Plan(root=root, new_texts=new_texts, edits=edits)


# ---- applying ---------------------------------------------------------------------------------------------------

def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.gpuscope-tmp")
    tmp.write_text(text)
    shutil.copymode(path, tmp)
    os.replace(tmp, path)


def marker_path(root: Path) -> Path:
    return root / HOOKS_SUBDIR / MARKER_NAME


def applied_digest(root: Path) -> str | None:
    """The series digest a tree was patched with, None for an unpatched tree."""
    marker = marker_path(root)
    if marker.is_file():
        return json.loads(marker.read_text())["series_sha256"]
    if (root / HOOKS_SUBDIR).exists():
        return "unknown"
    return None


def apply_series(root: Path, series: Path | None = None) -> bool:
    """Patch the tree at `root` in place. Returns False when it already carries this series (nothing done)."""
    root = Path(root)
    if not (root / "ggml" / "src").is_dir() or not (root / "src").is_dir():
        raise PatchError(f"{root} does not look like a llama.cpp tree (no ggml/src and src folders)")
    digest = series_digest(series)
    previous = applied_digest(root)
    if previous == digest:
        return False
    if previous is not None:
        raise PatchError(f"{root} is already patched by gpuscope with another hook series ({marker_path(root)}, "
                         f"series {previous[:12]}): apply the hooks to a clean tree")
    result = plan(root, load_series(series))
    for file, text in result.new_texts.items():
        _write_atomic(root / file, text)
    hooks_dir = root / HOOKS_SUBDIR
    hooks_dir.mkdir(parents=True)
    for name in NATIVE_SOURCES:
        shutil.copyfile(native_hooks_dir() / name, hooks_dir / name)
    marker_path(root).write_text(json.dumps({
        "series_sha256": digest,
        "edits": len(result.edits),
        "files": sorted(result.new_texts),
    }, indent=2) + "\n")
    return True


def apply_user_patch(root: Path, patch: Path) -> None:
    """Apply an ordinary unified diff (`patch -p1`) after the hook series; fails without partial hunks."""
    patch = Path(patch).resolve()
    if not patch.is_file():
        raise PatchError(f"patch file not found: {patch}")
    base = ["patch", "-p1", "--batch", "--forward", "--no-backup-if-mismatch", "-i", str(patch)]
    check = subprocess.run([*base, "--dry-run"], cwd=root, capture_output=True, text=True)
    if check.returncode != 0:
        raise PatchError(f"{patch.name} does not apply to the engine tree:\n{(check.stdout + check.stderr).strip()}")
    done = subprocess.run(base, cwd=root, capture_output=True, text=True)
    if done.returncode != 0:
        raise PatchError(f"applying {patch.name} failed:\n{(done.stdout + done.stderr).strip()}")
