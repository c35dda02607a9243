"""The registry is a leaf, and the catalog fills it: the built-ins, then plugins that installed
packages declare as entry points in the group ``selfsup.plugins``.

Each check runs in a fresh interpreter: what a process has imported, and which plugins it has
loaded, is global state that a test in this process would neither see clearly nor leave clean.
The plugins are distributions made on the spot: a ``NAME.dist-info`` folder (``METADATA``,
``entry_points.txt``) and a module, in a folder put on the interpreter's path.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path


def run_python(code: str, path: Path | None = None) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter with ``path`` (where the plugins are) on its path."""
    env = dict(os.environ)
    if path is not None:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(path), env.get("PYTHONPATH")) if p)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, env=env, timeout=300)


def make_plugin(root: Path, distribution: str, entry_points: dict[str, str],
                modules: dict[str, str]) -> None:
    """An installed distribution in ``root``: its metadata, its entry points of the group
    ``selfsup.plugins`` (name → object reference) and its modules (name → source)."""
    info = root / f"{distribution.replace('-', '_')}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {distribution}\nVersion: 0.1\n")
    lines = [f"{name} = {target}" for name, target in entry_points.items()]
    (info / "entry_points.txt").write_text("[selfsup.plugins]\n" + "\n".join(lines) + "\n")
    for name, source in modules.items():
        (root / f"{name}.py").write_text(textwrap.dedent(source))


def test_the_registry_imports_nothing_of_selfsup_but_its_errors():
    result = run_python("""
        import sys
        import selfsup.registry
        print(sorted(m for m in sys.modules if m.startswith('selfsup')))

        # using it imports nothing either: it holds what was registered, and says what it holds
        from selfsup.errors import ConfigError
        from selfsup.registry import METHODS
        METHODS.register("toy", "a toy")(object)
        assert METHODS.names() == ["toy"] and "toy" in METHODS and METHODS.help("toy") == "a toy"
        try:
            METHODS.get("simclr")
        except ConfigError as e:
            print(e)
        print(sorted(m for m in sys.modules if m.startswith('selfsup')))
    """)
    assert result.returncode == 0, result.stderr
    leaf = "['selfsup', 'selfsup.errors', 'selfsup.registry']"
    assert result.stdout.splitlines() == [leaf, "unknown method 'simclr'; known: toy", leaf]


TOY_PLUGIN = """
    from selfsup.methods.simclr import SimCLR
    from selfsup.registry import BACKBONES, METHODS


    @METHODS.register("toy", "a toy method from a plugin")
    class Toy(SimCLR):
        config_defaults = {"optim": {"name": "sgd", "lr": 0.123}}


    def register_backbone():
        BACKBONES.register("toy-cnn", "a toy backbone from a plugin")(BACKBONES.get("small-cnn"))
"""


def test_a_plugin_registers_a_method_and_a_backbone_through_entry_points(tmp_path):
    make_plugin(tmp_path, "toy-selfsup", {"toy": "toy_selfsup_plugin",
                                          "toy-backbone": "toy_selfsup_plugin:register_backbone"},
                {"toy_selfsup_plugin": TOY_PLUGIN})
    result = run_python("""
        import contextlib, io
        from selfsup.run_config import load_config

        # the config's method defaults are the first look-up a run makes: it loads the plugins
        config = load_config(None, ["method.name=toy", "backbone.name=toy-cnn"])
        print("config", config.optim.name, config.optim.lr, config.backbone["name"])

        from selfsup import catalog
        from selfsup.registry import BACKBONES, METHODS
        print("loaded", catalog.load() == catalog.load())
        print("method", METHODS.get("toy").__name__, METHODS.help("toy"))
        print("backbone", BACKBONES.get("toy-cnn") is BACKBONES.get("small-cnn"))

        from selfsup.cli import main
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert main(["list"]) == 0
        print(*(line.split()[0] for line in out.getvalue().splitlines()
                if line.strip().startswith("toy")))
    """, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "config sgd 0.123 toy-cnn", "loaded True", "method Toy a toy method from a plugin",
        "backbone True", "toy toy-cnn"]


LOAD_TWICE_THEN_LIST = """
    import contextlib, io
    from selfsup import catalog
    from selfsup.cli import main
    from selfsup.errors import ConfigError

    for attempt in range(2):  # a later call says the same (not that 'fine' registers twice)
        try:
            catalog.load()
        except ConfigError as e:
            print(e)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        print("exit", main(["list"]))
    print(err.getvalue().strip())
"""


def test_a_broken_plugin_is_named_with_its_distribution_and_the_cause(tmp_path):
    make_plugin(tmp_path, "broken-selfsup", {"fine": "fine_selfsup_plugin:register",
                                             "broken": "broken_selfsup_plugin"},
                {"broken_selfsup_plugin": "raise RuntimeError('the plugin broke')\n",
                 "fine_selfsup_plugin": """
                     from selfsup.registry import BACKBONES

                     def register():  # loaded first; called again, it would register twice
                         BACKBONES.register("fine-cnn")(BACKBONES.get("small-cnn"))
                 """})
    result = run_python(LOAD_TWICE_THEN_LIST, tmp_path)
    assert result.returncode == 0, result.stderr
    first, second, exit_code, command_line = result.stdout.splitlines()
    assert first.startswith("plugin 'broken' (broken_selfsup_plugin, from broken-selfsup 0.1) "
                            "failed to load: RuntimeError: the plugin broke. ")
    assert second == first
    assert exit_code == "exit 2" and command_line == f"selfsup: error: {first}"  # one line


def test_a_plugin_that_takes_a_built_in_name_is_named(tmp_path):
    make_plugin(tmp_path, "greedy-selfsup", {"greedy": "greedy_selfsup_plugin:register"},
                {"greedy_selfsup_plugin": """
                    from selfsup.registry import METHODS

                    def register():
                        METHODS.register("simclr")(object)
                 """})
    result = run_python(LOAD_TWICE_THEN_LIST, tmp_path)
    assert result.returncode == 0, result.stderr
    first, second, exit_code, _ = result.stdout.splitlines()
    assert first.startswith("plugin 'greedy' (greedy_selfsup_plugin:register, from greedy-selfsup "
                            "0.1) failed to load: ValueError: method 'simclr' is registered twice")
    assert second == first and exit_code == "exit 2"
