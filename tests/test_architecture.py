"""Architecture rules read from the source: the import graph has no cycle, and sd-scripts facts live in one place."""

from __future__ import annotations

import ast
import itertools
from collections.abc import Iterator
from pathlib import Path

PACKAGE = "kohya_1to2"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE


def module_files() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its __init__.py)."""
    modules: dict[str, Path] = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _runtime_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node, at module level or inside functions, except under `if TYPE_CHECKING:` (never executed)."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def _dynamic_prefix(call: ast.Call) -> str | None:
    """The module name, or its constant prefix, given to importlib.import_module / __import__."""
    func = call.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
    if name not in {"import_module", "__import__"} or not call.args:
        return None
    arg = call.args[0]
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        return arg.value
    if isinstance(arg, ast.JoinedStr) and arg.values and isinstance(arg.values[0], ast.Constant):
        return str(arg.values[0].value)
    if isinstance(arg, ast.BinOp) and isinstance(arg.left, ast.Constant) and isinstance(arg.left.value, str):
        return arg.left.value
    return None


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that `module` imports, lazily or not, statically or through importlib."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in _runtime_nodes(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                # `from package import submodule` imports the submodule; a name imports the package itself
                found.add(f"{target}.{alias.name}" if f"{target}.{alias.name}" in modules else target)
        elif isinstance(node, ast.Call) and (prefix := _dynamic_prefix(node)) is not None:
            if prefix in modules:
                found.add(prefix)
            else:  # a computed name: any module it could be
                found |= {name for name in modules if name.startswith(prefix) and name != prefix.rstrip(".")}
    return {name for name in found if name in modules and name != module}


def import_graph() -> dict[str, set[str]]:
    modules = module_files()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a list of modules (first repeated at the end), or None."""
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_the_graph_sees_lazy_and_dynamic_imports() -> None:
    graph = import_graph()
    assert "kohya_1to2.commands.prepare" in graph["kohya_1to2.cli"], "importlib.import_module(f'...commands.{x}')"
    assert len(graph) > 40 and sum(map(len, graph.values())) > 100


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


LAYERS: tuple[tuple[str, ...], ...] = (
    ("modes",),
    ("errors", "models", "flags"),
    ("fsutil", "imagefiles", "kohya", "hfcache"),
    ("rundir",),
    ("dataset",),
    ("configs",),
    ("launch",),
    ("environment",),
    ("evaluate",),
    ("commands",),
    ("cli",),
    ("__main__",),
)
"""The package's rooms (a subpackage, or a top-level module), lowest first: a room imports only from rooms below
it (or its own), at module level or inside a function alike. `kohya_1to2` itself (the version) is below all."""


def room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    level = {name: height for height, names in enumerate(LAYERS) for name in names}
    level[""] = -1
    found = []
    for module, targets in sorted(graph.items()):
        for target in sorted(targets):
            if level[room(target)] > level[room(module)] or (
                    level[room(target)] == level[room(module)] and room(target) != room(module)):
                found.append(f"{module} -> {target}")
    return found


def test_every_room_has_a_layer() -> None:
    assert {room(module) for module in import_graph()} - {""} == {name for names in LAYERS for name in names}


def test_the_layer_check_sees_an_upward_import() -> None:
    assert upward_imports({"kohya_1to2.dataset.x": {"kohya_1to2.configs.y"}}) == [
        "kohya_1to2.dataset.x -> kohya_1to2.configs.y"]
    assert upward_imports({"kohya_1to2.configs.y": {"kohya_1to2.dataset.x", "kohya_1to2.configs.z"}}) == []


def test_no_upward_import_and_so_no_package_loop() -> None:
    """Issue 22: `dataset/tokens.py` pulled dataset above configs, launch and environment (a package loop through
    function-level imports); `rundir` imported `configs.presets`, `evaluate.report` imported `commands.plan`."""
    assert upward_imports(import_graph()) == []


# ------------------------------------------------------------------ sd-scripts facts live in kohya_1to2/kohya/

KOHYA_PACKAGE = ROOT / "kohya"

SD_SCRIPTS_STRINGS = (
    # scripts and files of the pinned tree, its version, what it writes
    "train_network.py", "gen_img.py", "requirements.txt", "v0.10.1", "train_state.json", "-state",
    # log lines
    "No data found", "load network weights",
    # option names
    "network_weights", "output_dir", "output_name", "sample_prompts", "dataset_config", "caption_extension",
    "caption_prefix", "keep_tokens", "shuffle_caption", "enable_bucket", "bucket_reso_steps", "min_bucket_reso",
    "max_bucket_reso", "max_token_length", "pretrained_model_name_or_path", "image_dir", "num_repeats",
    "save_model_as", "network_module", "network_args", "train_batch_size", "clip_skip", "logging_dir", "is_reg",
    "class_tokens", "prior_loss_weight",
    # precision, attention, optimizer, scheduler and schedule options (issue 22: they were spelled in lint,
    # substitutions, render, stage_plans, argv, probe and pipeline)
    "mixed_precision", "save_precision", "full_fp16", "full_bf16", "fp8_base", "sdpa", "optimizer_type",
    "lr_scheduler", "learning_rate", "unet_lr", "text_encoder_lr", "max_train_epochs", "max_train_steps",
    "max_data_loader_n_workers", "sample_every_n_epochs", "sample_sampler", "save_every_n_epochs", "save_state",
    "v_parameterization", "zero_terminal_snr", "alpha_mask",
    # gen_img.py's options (kohya.gen_img)
    "--ckpt", "--sdxl", "--v1", "--v2", "--v_parameterization", "max_embeddings_multiples", "--sampler", "--sdpa",
    "--xformers", "from_file", "--outdir", "--batch_size", "images_per_prompt", "network_mul", "network_merge",
    # what sd-scripts asserts
    "caption file is empty",
)
"""Strings only the kohya package may spell in code (docstrings and comments may explain them; templates/*.toml
are data). A module needing one asks kohya (kohya.options for option names)."""


def _docstring_ids(tree: ast.AST) -> set[int]:
    """Module, class and function docstrings, and the string right after an assignment (an attribute docstring)."""
    found: set[int] = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if not isinstance(body, list):
            continue
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and body and \
                isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
            found.add(id(body[0].value))
        for before, after in itertools.pairwise(body):
            if isinstance(before, ast.Assign | ast.AnnAssign) and isinstance(after, ast.Expr) and \
                    isinstance(after.value, ast.Constant):
                found.add(id(after.value))
    return found


def code_strings(source: str) -> Iterator[tuple[int, str]]:
    """(line, text) of every string constant in code, f-string parts included, docstrings left out."""
    tree = ast.parse(source)
    docstrings = _docstring_ids(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            yield node.lineno, node.value


OUR_NAMES = {
    ("kohya_1to2/models.py", "output_name"): "the Job field (--output-name) that sets the option",
    ("kohya_1to2/rundir.py", "sample_prompts"): "our file name in a run folder, sample_prompts.txt",
    ("kohya_1to2/models.py", "caption_extension"): "the SourceSettings field (--caption-extension)",
    ("kohya_1to2/models.py", "keep_tokens"): "a validation message; models is imported by kohya, so cannot ask it",
}
"""Our own names (and models.py, which kohya.facts imports) that contain a listed string; each must still occur
(else remove it here)."""


def sd_scripts_strings_outside_kohya() -> list[tuple[str, str, int]]:
    """(file, listed string, line) of every listed string in code outside the kohya package."""
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        if path.is_relative_to(KOHYA_PACKAGE):
            continue
        for line, text in code_strings(path.read_text(encoding="utf-8")):
            found += [(path.relative_to(ROOT.parent).as_posix(), word, line) for word in SD_SCRIPTS_STRINGS
                      if word in text]
    return found


def test_the_string_scan_sees_code_and_skips_docstrings() -> None:
    source = '"""Module: train_network.py."""\nX = 1\n"""X: output_dir."""\ndef f():\n    """output_name"""\n' \
             '    return f"--{a}output_dir" + "No data found"\n'
    assert sorted(text for _, text in code_strings(source)) == ["--", "No data found", "output_dir"]


def test_every_listed_string_is_a_fact_kohya_holds() -> None:
    text = "\n".join(path.read_text(encoding="utf-8") for path in KOHYA_PACKAGE.glob("*.py"))
    # a flag (`--ckpt`) is held as its name; kohya.flag spells it
    assert [word for word in SD_SCRIPTS_STRINGS if word.removeprefix("--") not in text] == []


def test_no_module_outside_kohya_spells_an_sd_scripts_string() -> None:
    found = [f"{file}:{line}: {word!r}" for file, word, line in sd_scripts_strings_outside_kohya()
             if (file, word) not in OUR_NAMES]
    assert found == [], "ask kohya_1to2.kohya instead:\n" + "\n".join(found)


def test_our_names_that_look_like_sd_scripts_ones_are_still_there() -> None:
    assert set(OUR_NAMES) <= {(file, word) for file, word, _ in sd_scripts_strings_outside_kohya()}


ARGV_MODULES = ("kohya_1to2/evaluate/argv.py", "kohya_1to2/launch/argv.py")


def flags_spelled(source: str) -> list[tuple[int, str]]:
    """(line, text) of every string constant in code that is a whole command-line flag (`--name`)."""
    return [(line, text) for line, text in code_strings(source) if text.startswith("--") and text[2:3].isalpha()]


def test_the_flag_scan_finds_a_spelled_flag() -> None:
    source = 'def f(a):\n    """--doc"""\n    return ["--ckpt", a, f"--{a}", "--", "-v", "x --y"]\n'
    assert flags_spelled(source) == [(3, "--ckpt")]


def test_argv_modules_spell_no_flag() -> None:
    """Every flag of the argv builders is `--` + a name: sd-scripts' and gen_img's names come from kohya, and
    accelerate's own option names go through the same helper."""
    found = [f"{name}:{line}: {text!r}" for name in ARGV_MODULES
             for line, text in flags_spelled((ROOT.parent / name).read_text(encoding="utf-8"))]
    assert found == [], "spell flags as kohya.flag(kohya.NAME):\n" + "\n".join(found)


# ---------------------------------------------------------------- tests assert behaviour, never wall-clock time

TESTS = Path(__file__).resolve().parent
CLOCKS = {"time", "perf_counter", "monotonic", "perf_counter_ns", "monotonic_ns", "time_ns"}
TIMINGS = {"measured_seconds_per_step"}
"""Functions that return measured wall-clock figures (sd-scripts' s/step from a log of a real run)."""
TIMED_ASSERT_EXCEPTIONS: dict[str, str] = {
    "test_plan.py::test_measured_seconds_per_step_from_sd_scripts_progress_lines":
        "parses fixed progress lines written in the test: the s/step figures are its inputs, not measurements",
}
"""`path::function` -> why it may assert on a clock reading. Nothing else: a timed assertion passes or fails with
the machine's load (issue 18); speed belongs in bench/, and a wait for an event goes through waiting.wait_for."""


def _reads_a_clock(node: ast.AST, timed: set[str]) -> bool:
    for sub in ast.walk(node):
        if isinstance(sub, ast.Call):
            func = sub.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            if name in TIMINGS or (name in CLOCKS and not (isinstance(func, ast.Attribute) and isinstance(
                    func.value, ast.Name) and func.value.id not in ("time", "_time"))):
                return True
        if isinstance(sub, ast.Name) and sub.id in timed:
            return True
    return False


def timed_assertions(source: str) -> list[str]:
    """Functions with an `assert` on a clock reading, directly or through a variable assigned from one."""
    found = []
    for func in ast.walk(ast.parse(source)):
        if not isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        timed: set[str] = set()
        for _ in range(2):  # a variable computed from a timed one is timed too (assigned in any order)
            for node in ast.walk(func):
                if isinstance(node, ast.Assign | ast.AnnAssign) and node.value and _reads_a_clock(node.value, timed):
                    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                    timed |= {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
        if any(isinstance(node, ast.Assert) and _reads_a_clock(node.test, timed) for node in ast.walk(func)):
            found.append(func.name)
    return found


# Samples for the scan, kept off `assert` lines (a line-based grep of tests/ for clock asserts would flag them).
TIMED_DIRECT = ("import time\ndef t():\n    s = time.{clock}()\n    assert time.{clock}() - s < 3\n"
                .format(clock="monotonic"))
TIMED_DERIVED = "def t():\n    took = perf_counter() - s\n    ratio = took / 2\n    assert ratio < 1\n"


def test_the_timed_assertion_scan_finds_one() -> None:
    assert timed_assertions(TIMED_DIRECT) == ["t"]
    assert timed_assertions(TIMED_DERIVED) == ["t"]
    assert not timed_assertions("import time\ndef t():\n    wait_for(done, 5, 'x')\n    assert run(5) == 0\n")


def test_no_test_asserts_on_wall_clock_time() -> None:
    found = [f"{path.relative_to(TESTS)}::{name}" for path in sorted(TESTS.rglob("*.py"))
             for name in timed_assertions(path.read_text(encoding="utf-8"))]
    assert [f for f in found if f not in TIMED_ASSERT_EXCEPTIONS] == []


# ------------------------------------------------------------------------- commands are thin, functions short

FUNCTION_LINES = {"commands": 40}
"""Most lines a function may span (decorators excluded), by room; 60 anywhere else (issue 22): a command parses
options, calls its package and maps the result to output and an exit code."""
DEFAULT_FUNCTION_LINES = 60


def long_functions(source: str, limit: int) -> list[str]:
    """`name (N lines)` of every function, nested or not, spanning more than `limit` lines."""
    return [f"{node.name} ({node.end_lineno - node.lineno + 1} lines)" for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno is not None
            and node.end_lineno - node.lineno + 1 > limit]


def test_the_length_check_sees_a_long_function() -> None:
    body = "".join(f"    x{i} = {i}\n" for i in range(5))
    assert long_functions(f"def f():\n{body}\ndef g():\n    return 1\n", 5) == ["f (6 lines)"]


def test_no_function_is_longer_than_its_room_allows() -> None:
    found = []
    for module, path in module_files().items():
        limit = FUNCTION_LINES.get(room(module), DEFAULT_FUNCTION_LINES)
        found += [f"{path.relative_to(ROOT.parent)}: {name}" for name in
                  long_functions(path.read_text(encoding="utf-8"), limit)]
    limits = f"commands/: {FUNCTION_LINES['commands']} lines, else {DEFAULT_FUNCTION_LINES}"
    assert found == [], f"split these ({limits}):\n" + "\n".join(found)


# ------------------------------------------------------- function-level imports: only with a reason beside them


def unexplained_lazy_imports(source: str) -> list[int]:
    """Lines of imports inside a function without a `#` reason on the line, or on the comment and import lines
    right above it (one reason serves a group), and outside a `try` that handles ImportError."""
    lines = source.splitlines()
    found = []
    tree = ast.parse(source)
    guarded: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and any(
                isinstance(h.type, ast.Name) and h.type.id in ("ImportError", "ModuleNotFoundError")
                for h in node.handlers):
            guarded |= {sub.lineno for stmt in node.body for sub in ast.walk(stmt) if hasattr(sub, "lineno")}
    for func in ast.walk(tree):
        if not isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for node in ast.walk(func):
            if not isinstance(node, ast.Import | ast.ImportFrom) or node.lineno in guarded:
                continue
            row = node.lineno - 1
            while row >= 0 and "#" not in lines[row] and lines[row].strip().startswith(("import ", "from ")):
                row -= 1
            if row < 0 or "#" not in lines[row]:
                found.append(node.lineno)
    return found


def test_the_lazy_import_check_wants_a_reason() -> None:
    source = ("def f():\n    import a\n\ndef g():\n    # heavy\n    import b\n    import c\n\ndef h():\n"
              "    try:\n        import d\n    except ImportError:\n        pass\n    import e  # why\n")
    assert unexplained_lazy_imports(source) == [2]


def test_every_function_level_import_says_why() -> None:
    """Issue 22: about 50 imports inside functions hid the real layering; those left keep start-up light (torch
    and friends, the other commands' modules) or run only in a child, and say so."""
    found = [f"{path.relative_to(ROOT.parent)}:{line}" for path in module_files().values()
             for line in unexplained_lazy_imports(path.read_text(encoding="utf-8"))]
    assert found == [], "hoist these imports to the top, or say why beside them:\n" + "\n".join(found)
