"""man/tcpcryptd.8 and man/tcpcryptd.toml.5 render cleanly and name every command, option,
config key, state and metric; ``--version`` and click's shell completion work."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from tcpcryptd import __version__, cli
from tcpcryptd.daemon import metrics
from tcpcryptd.daemon.config import SCHEMA
from tcpcryptd.daemon.status import STATES
from testbed import tcpcryptd_command

MAN = Path(__file__).resolve().parents[2] / "man"
PAGE_8 = (MAN / "tcpcryptd.8").read_text()
PAGE_5 = (MAN / "tcpcryptd.toml.5").read_text()


def _plain(roff: str) -> str:
    """The page's words without roff escapes for the hyphen."""
    return roff.replace("\\-", "-")


@pytest.mark.skipif(shutil.which("groff") is None, reason="groff not installed")
@pytest.mark.parametrize("page", ["tcpcryptd.8", "tcpcryptd.toml.5"])
def test_pages_render_without_warnings(page: str) -> None:
    done = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-z", str(MAN / page)],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "LC_ALL": "C.UTF-8"})
    assert done.returncode == 0 and done.stderr == "", done.stderr


def test_every_command_and_option_is_in_the_page() -> None:
    text = _plain(PAGE_8)
    for name, command in cli.main.commands.items():
        assert re.search(rf"^\.B {re.escape(name)}$", text, re.M), name     # COMMANDS entry
        for param in command.params:
            for opt in getattr(param, "opts", []):
                if opt.startswith("--") and opt != "--help":
                    assert opt in text, f"{name} {opt}"


def test_every_state_and_metric_is_in_the_page() -> None:
    text = _plain(PAGE_8)
    states = text.split(".SH STATES", 1)[1].split(".SH", 1)[0]
    for state in STATES:
        assert f".B {state}\n" in states, state
    for name in re.findall(r"``(tcpcryptd_[a-z_]+)", metrics.__doc__ or ""):
        assert name in text, name


def test_every_config_key_is_in_the_config_page() -> None:
    text = _plain(PAGE_5)
    for section, (_cls, keys) in SCHEMA.items():
        body = text.split(f".SH [{section}]", 1)[1].split(".SH", 1)[0]
        for key in keys:
            assert f".BR {key} " in body, f"{section}.{key}"


def test_version() -> None:
    result = CliRunner().invoke(cli.main, ["--version"])
    assert result.exit_code == 0 and result.output == f"tcpcryptd, version {__version__}\n"


def test_bash_completion_of_subcommands_and_options() -> None:
    env = {**os.environ, "_TCPCRYPTD_COMPLETE": "bash_source"}
    source = subprocess.run(tcpcryptd_command(), env=env, capture_output=True, text=True,
                            timeout=60).stdout
    assert "complete -o nosort -F _tcpcryptd_completion tcpcryptd" in source
    env = {**os.environ, "_TCPCRYPTD_COMPLETE": "bash_complete", "COMP_WORDS": "tcpcryptd de",
           "COMP_CWORD": "1"}
    done = subprocess.run(tcpcryptd_command(), env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.stdout.split() == ["plain,decode"]
    env.update(COMP_WORDS="tcpcryptd status --a", COMP_CWORD="2")
    done = subprocess.run(tcpcryptd_command(), env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.stdout.split() == ["plain,--all"]
