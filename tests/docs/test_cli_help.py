"""Every option's help says what the option's source says: Rich markup must not eat "[default: ...]"."""

from __future__ import annotations

import re
from typing import Any

import typer
from typer.testing import CliRunner

from kaon.cli.app import _register_commands, app

if not app.registered_groups:
    _register_commands()


def _commands(group: Any, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    found = [(path, group)]
    for name, command in getattr(group, "commands", {}).items():
        found += _commands(command, (*path, name))
    return found


def test_the_defaults_written_in_option_help_are_shown():
    root = typer.main.get_command(app)
    checked = 0
    for path, command in _commands(root):
        written = [re.sub(r"\s+", " ", p.help.replace("\\[", "[")) for p in command.params
                   if p.param_type_name == "option" and getattr(p, "help", None) and "[default:" in p.help]
        if not written:
            continue
        shown = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "1000"}).output
        shown = re.sub(r"\s+", " ", shown.replace("│", " "))
        for text in written:
            default = text[text.index("[default:"):].split("]")[0]
            assert default in shown, f"kaon {' '.join(path)} --help lost {default!r}"
            checked += 1
    assert checked >= 30  # the option helps that state their own default
