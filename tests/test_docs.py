"""The docs keep up with the code: every log line explained, every option listed, README links.

Messages are read from the source with ``ast`` (never by running the code), so a WARNING or
ERROR added anywhere in ``wsgireload/`` fails here until ``docs/troubleshooting.md`` explains
it; the failure prints the entry to paste.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import re
import textwrap
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Set, Tuple

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "wsgireload"
TROUBLESHOOTING = ROOT / "docs" / "troubleshooting.md"
CONFIGURATION = ROOT / "docs" / "configuration.md"
README = ROOT / "README.md"

# Logger method -> the level the line is logged at. WARNING and above must all be on the page;
# the INFO lines the page shows must exist too (the page need not show every one).
LEVELS = {
    "info": "INFO",
    "warning": "WARNING",
    "error": "ERROR",
    "exception": "ERROR",
    "critical": "CRITICAL",
}
MUST_EXPLAIN = ("WARNING", "ERROR", "CRITICAL")
PLACEHOLDER = "{}"
# printf-style conversions as logging applies them: %s, %d, %r, %.1f, %(name)s, %5.2g...
_PERCENT = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(?:\*|\d+)?(?:\.(?:\*|\d+))?[diouxXeEfFgGcrsa]")
_FORMAT_FIELD = re.compile(r"\{[^{}]*\}")


# -- messages in the code -------------------------------------------------------------------
@dataclass
class Message:
    level: str
    text: str  # normalised: every interpolated value is PLACEHOLDER
    where: List[str] = field(default_factory=list)  # "wsgireload/x.py:12"


def _percent_template(text: str) -> str:
    parts = text.split("%%")
    return "%".join(_PERCENT.sub(PLACEHOLDER, part) for part in parts)


class _Templates:
    """Turns a message expression into its normalised text (None: not a readable string)."""

    def __init__(self, constants: Dict[str, ast.expr], shared: Dict[str, ast.expr]) -> None:
        self.constants = constants  # this module's top-level NAME = <expr>
        self.shared = shared  # every module's, for a constant imported from another module

    def text(self, node: ast.expr, percent: bool, depth: int = 0) -> Optional[str]:
        if depth > 10:
            return None
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return _percent_template(node.value) if percent else node.value
        if isinstance(node, ast.JoinedStr):  # f-string
            out = []
            for part in node.values:
                if isinstance(part, ast.Constant) and isinstance(part.value, str):
                    out.append(part.value)
                else:
                    out.append(PLACEHOLDER)
            return "".join(out)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod):  # "..." % args
            return self.text(node.left, True, depth + 1)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            left = self.text(node.left, percent, depth + 1)
            right = self.text(node.right, percent, depth + 1)
            return (left if left is not None else PLACEHOLDER) + (
                right if right is not None else PLACEHOLDER
            )
        if (  # "...{}".format(...)
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "format"
        ):
            template = self.text(node.func.value, False, depth + 1)
            if template is None:
                return None
            return _FORMAT_FIELD.sub(PLACEHOLDER, template).replace("{{", "{").replace("}}", "}")
        if isinstance(node, ast.Name):
            value = self.constants.get(node.id, self.shared.get(node.id))
            if value is not None:
                return self.text(value, percent, depth + 1)
        return None


def _module_constants(tree: ast.Module) -> Dict[str, ast.expr]:
    constants: Dict[str, ast.expr] = {}
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1:
            target = stmt.targets[0]
            if isinstance(target, ast.Name):
                constants[target.id] = stmt.value
        elif isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.value:
            constants[stmt.target.id] = stmt.value
    return constants


def _logger_names(tree: ast.Module) -> Set[str]:
    """Names bound to ``logging.getLogger(...)`` in this module (plus the usual ones)."""
    names = {"log", "logger", "_log", "_logger"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
            func = node.value.func
            if isinstance(func, ast.Attribute) and func.attr == "getLogger":
                names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return names


# A level that is a variable (``log.log(level, ...)`` in a helper): read it at the call sites.
VARIABLE = "VARIABLE"
_NAMED_LEVELS = ("DEBUG", "INFO", "WARNING", "WARN", "ERROR", "CRITICAL", "FATAL")
_RANK = {"DEBUG": 0, "INFO": 1, "WARNING": 2, "ERROR": 3, "CRITICAL": 4}


def _named_level(node: ast.expr) -> Optional[str]:
    """``logging.WARNING`` (or a bare ``WARNING``) as "WARNING"; None for anything else."""
    name = node.attr if isinstance(node, ast.Attribute) else getattr(node, "id", "")
    if name in _NAMED_LEVELS:
        return {"WARN": "WARNING", "FATAL": "CRITICAL"}.get(name, name)
    return None


def _level_of(call: ast.Call, loggers: Set[str]) -> Tuple[Optional[str], Optional[ast.expr]]:
    """(level, message expression) of a logging call at INFO or above, else (None, None).

    ``log.log(level, ...)`` whose level is not a ``logging`` constant gives VARIABLE: the
    caller resolves it from the calls of the enclosing helper (never silently skipped).
    """
    func = call.func
    if not isinstance(func, ast.Attribute):
        return None, None
    owner = func.value
    is_logger = (isinstance(owner, ast.Name) and owner.id in loggers) or (
        isinstance(owner, ast.Call)
        and isinstance(owner.func, ast.Attribute)
        and owner.func.attr == "getLogger"
    )
    if not is_logger:
        return None, None
    if func.attr in LEVELS and call.args:
        return LEVELS[func.attr], call.args[0]
    if func.attr == "log" and len(call.args) >= 2:  # log.log(logging.WARNING, ...)
        level = _named_level(call.args[0])
        if level is None:
            return VARIABLE, call.args[1]
        if level != "DEBUG":
            return level, call.args[1]
    return None, None


@dataclass
class _Helper:
    """A function that logs at a level (and maybe a message) its callers pass in."""

    name: str
    params: List[str]  # positional parameters, ``self``/``cls`` included
    method: bool
    level: str  # the parameter holding the level
    message: Optional[str]  # the parameter holding the message, if the message is one
    literal: Optional[ast.expr]  # else the message expression inside the helper
    defaults: Dict[str, ast.expr]
    where: str


def _helper(function: ast.AST, call: ast.Call, message: ast.expr, where: str) -> Optional[_Helper]:
    if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return None
    level = call.args[0]
    args = function.args
    params = [a.arg for a in args.posonlyargs + args.args]
    if not isinstance(level, ast.Name) or level.id not in params + [a.arg for a in args.kwonlyargs]:
        return None
    defaults = dict(zip(params[len(params) - len(args.defaults):], args.defaults))
    defaults.update(
        {a.arg: d for a, d in zip(args.kwonlyargs, args.kw_defaults) if d is not None}
    )
    named = message.id if isinstance(message, ast.Name) and message.id in params else None
    return _Helper(
        name=function.name,
        params=params,
        method=bool(params) and params[0] in ("self", "cls"),
        level=level.id,
        message=named,
        literal=None if named else message,
        defaults=defaults,
        where=where,
    )


def _argument(helper: _Helper, call: ast.Call, param: str) -> Optional[ast.expr]:
    for keyword in call.keywords:
        if keyword.arg == param:
            return keyword.value
    if param in helper.params:
        index = helper.params.index(param)
        if helper.method and isinstance(call.func, ast.Attribute):
            index -= 1  # self.helper(...): self is not among the call's arguments
        if 0 <= index < len(call.args):
            return call.args[index]
    return helper.defaults.get(param)


def _called_name(call: ast.Call) -> str:
    func = call.func
    return func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")


def code_messages(
    package: Path = PACKAGE, root: Path = ROOT
) -> Tuple[Dict[Tuple[str, str], Message], List[str]]:
    """Every INFO/WARNING/ERROR message in wsgireload/, and the calls whose text cannot be read."""
    trees = {
        path: ast.parse(path.read_text(encoding="utf-8"), str(path))
        for path in sorted(package.rglob("*.py"))
    }
    shared: Dict[str, ast.expr] = {}
    for tree in trees.values():
        for name, value in _module_constants(tree).items():
            shared.setdefault(name, value)
    found: Dict[Tuple[str, str], Message] = {}
    unreadable: List[str] = []
    helpers: List[_Helper] = []

    def add(level: str, text: Optional[str], where: str) -> None:
        if text is None:
            unreadable.append(where)
            return
        text = _normalise(text)
        found.setdefault((level, text), Message(level, text)).where.append(where)

    for path, tree in trees.items():
        templates = _Templates(_module_constants(tree), shared)
        loggers = _logger_names(tree)
        parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            level, expr = _level_of(node, loggers)
            if level is None or expr is None:
                continue
            where = f"{path.relative_to(root)}:{node.lineno}"
            if level == VARIABLE:
                function: Optional[ast.AST] = parents.get(node)
                while function is not None and not isinstance(
                    function, (ast.FunctionDef, ast.AsyncFunctionDef)
                ):
                    function = parents.get(function)
                helper = _helper(function, node, expr, where) if function else None
                if helper is None:
                    unreadable.append(where)
                else:
                    helpers.append(helper)
                continue
            # logging interpolates %-placeholders only when arguments follow the message.
            arguments_from = 2 if _is_log_call(node) else 1
            add(level, templates.text(expr, percent=len(node.args) > arguments_from), where)
    # Each helper's messages, at the levels its callers pass (the highest of a literal's).
    for helper in helpers:
        calls = 0
        for path, tree in trees.items():
            templates = _Templates(_module_constants(tree), shared)
            for node in ast.walk(tree):
                if not isinstance(node, ast.Call) or _called_name(node) != helper.name:
                    continue
                level_expr = _argument(helper, node, helper.level)
                level = _named_level(level_expr) if level_expr is not None else None
                where = f"{path.relative_to(root)}:{node.lineno}"
                if level is None:
                    unreadable.append(where)
                    continue
                calls += 1
                if _RANK[level] < _RANK["INFO"]:
                    continue
                if helper.literal is not None:  # the message is written inside the helper
                    add(level, templates.text(helper.literal, percent=True), helper.where)
                    continue
                assert helper.message is not None
                message = _argument(helper, node, helper.message)
                index = helper.params.index(helper.message) - int(
                    helper.method and isinstance(node.func, ast.Attribute)
                )
                percent = len(node.args) > index + 1
                add(level, templates.text(message, percent) if message else None, where)
        if not calls:
            unreadable.append(helper.where)
    return found, unreadable


def _is_log_call(call: ast.Call) -> bool:
    return isinstance(call.func, ast.Attribute) and call.func.attr == "log"


def _normalise(text: str) -> str:
    return " ".join(text.split())


# -- messages on the page -------------------------------------------------------------------
_ENTRY = re.compile(
    r"^```text\n((?:INFO|WARNING|ERROR|CRITICAL) (?:(?!```).)*?)\n```$", re.MULTILINE | re.DOTALL
)


def page_messages(text: str) -> Dict[Tuple[str, str], int]:
    """(level, message) -> line number, from each ```text block starting with a level."""
    found: Dict[Tuple[str, str], int] = {}
    for match in _ENTRY.finditer(text):
        level, _, message = _normalise(match.group(1)).partition(" ")
        found[(level, message)] = text.count("\n", 0, match.start()) + 1
    return found


def entry_to_paste(message: Message) -> str:
    line = f"{message.level} {message.text}"  # one line: the site wraps it to the page
    title = re.split(r"[:;(]", message.text.replace("wsgireload: ", "", 1))[0]
    title = " ".join(title.replace(PLACEHOLDER, " ").split())[:60] or "A new message"
    return (
        f"(logged at {', '.join(message.where)})\n\n"
        f"### {title[:1].upper()}{title[1:]}\n\n```text\n{line}\n```\n\n"
        "**What it means.** ...\n\n**What to do.** ...\n"
    )


def test_every_warning_and_error_is_explained_on_the_troubleshooting_page() -> None:
    code, unreadable = code_messages()
    assert not unreadable, (
        "these logging calls pass a message the docs test cannot read (use a string literal, "
        "an f-string or a module-level constant): " + ", ".join(unreadable)
    )
    assert len(code) >= 20, "the extractor found suspiciously few messages"
    page = page_messages(TROUBLESHOOTING.read_text(encoding="utf-8"))
    missing = [code[key] for key in sorted(code) if key not in page and key[0] in MUST_EXPLAIN]
    obsolete = sorted((line, key) for key, line in page.items() if key not in code)
    report = []
    if missing:
        report.append(
            f"{TROUBLESHOOTING.relative_to(ROOT)} has no entry for {len(missing)} message(s) the "
            "code logs; paste each under its level's section and say what it means and what to "
            "do:\n\n" + "\n".join(entry_to_paste(m) for m in missing)
        )
    if obsolete:
        report.append(
            f"{TROUBLESHOOTING.relative_to(ROOT)} explains {len(obsolete)} message(s) the code no "
            "longer logs (at that level); delete or update these entries:\n\n"
            + "\n".join(f"line {line}: {level} {text}" for line, (level, text) in obsolete)
        )
    assert not report, "\n\n".join(report)


# The extractor itself, on code written for the purpose.
def test_the_extractor_normalises_every_way_of_building_a_message(tmp_path: Path) -> None:
    source = textwrap.dedent(
        '''
        import logging
        log = logging.getLogger("wsgireload")
        SOME_ERROR = "wsgireload: constant " "joined"
        def f(x):
            log.warning("wsgireload: %d thing%s after %.1fs (%r), 100%%", 1, "s", 2.0, x)
            log.error(f"wsgireload: f-string {x!r} and {x:>4}")
            log.error(SOME_ERROR)
            log.exception("wsgireload: {} by format".format(x))
            log.info("wsgireload: info is listed too")
            log.warning("wsgireload: no args, so 100%% stays")
            logging.getLogger("wsgireload").critical("wsgireload: " + x)
            log.log(logging.WARNING, "wsgireload: via log %s", x)
        '''
    )
    tree = ast.parse(source)
    templates = _Templates(_module_constants(tree), {})
    got = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            level, expr = _level_of(node, _logger_names(tree))
            if level is not None and expr is not None:
                extra = 2 if _is_log_call(node) else 1
                text = templates.text(expr, percent=len(node.args) > extra)
                got.append((level, _normalise(text or "")))
    assert sorted(got) == sorted([
        ("WARNING", "wsgireload: {} thing{} after {}s ({}), 100%"),
        ("ERROR", "wsgireload: f-string {} and {}"),
        ("ERROR", "wsgireload: constant joined"),
        ("ERROR", "wsgireload: {} by format"),
        ("WARNING", "wsgireload: no args, so 100%% stays"),
        ("CRITICAL", "wsgireload: {}"),
        ("WARNING", "wsgireload: via log {}"),
        ("INFO", "wsgireload: info is listed too"),
    ])


def test_the_extractor_reads_levels_a_helper_is_given(tmp_path: Path) -> None:
    """A message logged through a helper taking the level is read at its callers' levels."""
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "m.py").write_text(textwrap.dedent(
        '''
        import logging
        log = logging.getLogger("wsgireload")
        def act(level=logging.INFO):
            log.log(level, "wsgireload: acted %s", 1)
        class Check:
            def _once(self, key, level, message, *args):
                log.log(level, message, *args)
            def run(self):
                self._once("a", logging.WARNING, "wsgireload: no python %d.%d", 3, 11)
                self._once("b", logging.INFO, "wsgireload: cannot tell")
                self._once("c", logging.DEBUG, "wsgireload: detail")
        def caller():
            act(logging.DEBUG)
            act()
        def orphan(level):
            log.log(level, "wsgireload: nobody calls me")
        '''
    ))
    found, unreadable = code_messages(package, tmp_path)
    assert sorted(found) == [
        ("INFO", "wsgireload: acted {}"),
        ("INFO", "wsgireload: cannot tell"),
        ("WARNING", "wsgireload: no python {}.{}"),
    ]
    assert unreadable == ["pkg/m.py:17"], "a helper nobody calls must not pass unnoticed"


def test_the_page_parser_joins_wrapped_entries() -> None:
    page = "## Errors\n\n```text\nERROR wsgireload: a long\nwrapped   line\n```\n"
    assert page_messages(page) == {("ERROR", "wsgireload: a long wrapped line"): 3}


# -- the configuration page ------------------------------------------------------------------
def _section(text: str, heading: str) -> str:
    """The text under ``heading`` (e.g. ``## Reloader``) up to the next heading."""
    lines = text.splitlines()
    try:
        start = lines.index(heading)
    except ValueError:
        pytest.fail(f"{CONFIGURATION.relative_to(ROOT)} has no heading {heading!r}")
    out = []
    for line in lines[start + 1:]:
        if re.match(r"#{1,6} ", line):
            break
        out.append(line)
    return "\n".join(out)


def _rows(section: str) -> Iterator[List[str]]:
    for line in section.splitlines():
        if line.startswith("|") and not re.match(r"^\|[\s:|-]+\|$", line):
            yield [cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip())[1:-1]]


def _documented(section: str, key: Callable[[str], List[str]]) -> Dict[str, str]:
    """name -> default cell of each table row; ``key`` reads the names from the first cell."""
    found: Dict[str, str] = {}
    for cells in _rows(section):
        if len(cells) < 2:
            continue
        for name in key(cells[0]):
            found[name] = cells[1]
    return found


def python_default(value: object) -> str:
    """A signature default as the page writes it: ``1.0``, ``"auto"``, ``time.monotonic``."""
    if isinstance(value, str):
        return f'"{value}"'
    if callable(value):
        return f"{value.__module__}.{getattr(value, '__qualname__', value)}"
    return repr(value)


def _compare(what: str, expected: Dict[str, str], documented: Dict[str, str]) -> List[str]:
    problems = []
    for name, default in expected.items():
        if name not in documented:
            problems.append(f"{what}: `{name}` is missing; add the row | `{name}` | `{default}` |")
        elif f"`{default}`" not in documented[name]:
            problems.append(
                f"{what}: `{name}` shows default {documented[name]!r}; the code's is `{default}`"
            )
    for name in documented:
        if name not in expected:
            problems.append(f"{what}: `{name}` is not an option any more; remove its row")
    return problems


def _keywords(function: Callable[..., object]) -> Dict[str, str]:
    parameters = inspect.signature(function).parameters.items()
    return {n: python_default(p.default) for n, p in parameters if p.kind is p.KEYWORD_ONLY}


def _code_names(cell: str) -> List[str]:
    return re.findall(r"`([A-Za-z_][A-Za-z0-9_]*)`", cell)[:1]


def test_configuration_page_lists_every_python_option_as_defined() -> None:
    """The Options fields are the one definition of each option (the docstrings are made from
    them): the Reloader's table lists exactly those, with their defaults and units, plus the
    constructor's own keywords; the Watcher's and register()'s tables their own keywords."""
    from wsgireload import Reloader
    from wsgireload._options import Options
    from wsgireload.contrib.uwsgi import register
    from wsgireload.watcher import Watcher

    text = CONFIGURATION.read_text(encoding="utf-8")
    fields = dataclasses.fields(Options)
    options = {item.name: python_default(item.default) for item in fields}
    problems = []
    for heading, expected in [
        ("## Reloader", {**options, **_keywords(Reloader.__init__)}),
        ("## Watcher", _keywords(Watcher.__init__)),
        ("### The uWSGI timer: `register()`", _keywords(register)),
    ]:
        documented = _documented(_section(text, heading), _code_names)
        problems += _compare(heading.lstrip("# "), expected, documented)
    section = _section(text, "## Reloader")
    rows = {name: cells for cells in _rows(section) for name in _code_names(cells[0])}
    for item in fields:
        if item.name in rows and rows[item.name][2] != item.metadata["unit"]:
            problems.append(f"Reloader: `{item.name}` unit {rows[item.name][2]!r}, not "
                            f"{item.metadata['unit']!r}")
    assert not problems, "docs/configuration.md is out of step with the code:\n" + "\n".join(
        problems
    )


def cli_default(action: argparse.Action) -> str:
    """The default a CLI option has for the user: stated in its help, else argparse's."""
    stated = re.search(r"default:? ([^);]+)", action.help or "")
    if stated:
        return stated.group(1).strip()
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        return "off"
    if action.default in (None, [], ()):
        return "none"
    return str(action.default)


def _subcommands(parser: argparse.ArgumentParser) -> Dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def test_configuration_page_lists_every_cli_option_with_its_default() -> None:
    from wsgireload.cli import build_parser

    text = CONFIGURATION.read_text(encoding="utf-8")
    problems = []
    commands = _subcommands(build_parser())
    assert commands, "build_parser() has no subcommands"
    for command, sub in commands.items():
        heading = f"### `wsgireload {command}`"
        section = _section(text, heading)
        expected: Dict[str, str] = {}
        for action in sub._actions:
            if isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
                continue
            if not action.option_strings:  # a positional: named, no default
                if str(action.metavar or action.dest) not in section:
                    problems.append(f"{heading}: the argument `{action.metavar}` is not named")
                continue
            expected[max(action.option_strings, key=len)] = cli_default(action)
        documented = _documented(section, lambda cell: re.findall(r"`(--[a-z][a-z0-9-]*)", cell))
        problems += _compare(heading.lstrip("# "), expected, documented)
    assert not problems, "docs/configuration.md is out of step with the CLI:\n" + "\n".join(
        problems
    )


# -- the README ------------------------------------------------------------------------------
def github_slug(heading: str) -> str:
    """The anchor GitHub (and MyST, with myst_heading_anchors) gives a Markdown heading."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link: its text
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def markdown_anchors(path: Path) -> Set[str]:
    anchors: Set[str] = set()
    counts: Dict[str, int] = {}
    in_fence = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            in_fence = not in_fence
        if in_fence:
            continue
        match = re.match(r"^(#{1,6})\s+(.*?)\s*#*\s*$", line)
        if match:
            slug = github_slug(match.group(2))
            seen = counts.get(slug, 0)
            counts[slug] = seen + 1
            anchors.add(slug if seen == 0 else f"{slug}-{seen}")
        for explicit in re.findall(r'\(([A-Za-z][\w-]*)\)=', line):  # MyST (target)=
            anchors.add(explicit)
    return anchors


def markdown_links(text: str) -> List[str]:
    """Targets of inline links, images, reference definitions and autolinks (code excluded)."""
    text = re.sub(r"```.*?```", "", text, flags=re.DOTALL)
    text = re.sub(r"`[^`\n]*`", "", text)
    links = re.findall(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)", text)
    links += re.findall(r"^\s*\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", text, flags=re.MULTILINE)
    links += re.findall(r"<((?:https?|mailto):[^>\s]+)>", text)
    return links


def link_problem(base: Path, target: str) -> Optional[str]:
    parsed = urllib.parse.urlsplit(target)
    if parsed.scheme in ("http", "https"):
        return None if parsed.netloc and "." in parsed.netloc else "not a valid URL"
    if parsed.scheme == "mailto":
        return None if "@" in parsed.path else "not a valid address"
    if parsed.scheme:
        return f"unexpected scheme {parsed.scheme!r}"
    path = (base / urllib.parse.unquote(parsed.path)).resolve() if parsed.path else README
    if not path.exists():
        return f"{path.relative_to(ROOT) if ROOT in path.parents else path} does not exist"
    if parsed.fragment:
        if path.suffix != ".md":
            return "an anchor into a file that is not Markdown"
        if parsed.fragment not in markdown_anchors(path):
            return f"no heading with the anchor #{parsed.fragment} in {path.relative_to(ROOT)}"
    return None


def test_every_readme_link_resolves() -> None:
    links = markdown_links(README.read_text(encoding="utf-8"))
    assert len(links) >= 5, "the README links into the docs"
    problems = [f"{link}: {why}" for link in links if (why := link_problem(ROOT, link))]
    assert not problems, "README.md has broken links:\n" + "\n".join(problems)


def test_the_link_checker_catches_what_it_should(tmp_path: Path) -> None:
    assert link_problem(ROOT, "docs/nope.md") is not None
    assert link_problem(ROOT, "README.md#no-such-heading") is not None
    assert link_problem(ROOT, "http://") is not None
    assert link_problem(ROOT, "https://example.org/x") is None
    assert github_slug("What `auto` does: gunicorn, uWSGI") == "what-auto-does-gunicorn-uwsgi"
    text = "[a](x.md) `[b](y.md)` [c]: <z.md>\n```\n[d](w.md)\n```\n<https://e.org>"
    assert markdown_links(text) == ["x.md", "https://e.org"]


def test_python_examples_in_the_docs_compile() -> None:
    """A ```python block on a page or in the README is code a reader copies: it must parse."""
    problems = []
    for page in sorted((ROOT / "docs").rglob("*.md")) + [README]:
        text = page.read_text(encoding="utf-8")
        for match in re.finditer(r"^```python\n(.*?)^```$", text, re.MULTILINE | re.DOTALL):
            line = text.count("\n", 0, match.start()) + 2
            try:
                compile(match.group(1), f"{page.relative_to(ROOT)}:{line}", "exec")
            except SyntaxError as exc:
                where = line + (exc.lineno or 1) - 1
                problems.append(f"{page.relative_to(ROOT)}:{where}: {exc.msg}")
    assert not problems, "\n".join(problems)
