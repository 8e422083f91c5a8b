"""Every example a `--help` shows parses as that command line, and every file it names that
synthgen ships (configs/) exists: help that lies costs a new user their first try."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import typer

from synthgen.cli import app

ROOT = Path(__file__).resolve().parents[1]


def commands(group: Any, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    """(path, command) for every command and group (typer's own click: duck-typed)."""
    found = []
    for name, command in group.commands.items():
        if hasattr(command, "commands"):
            found += commands(command, (*path, name))
        found.append(((*path, name), command))
    return found


def examples(epilog: str) -> list[list[str]]:
    """The command lines in an epilog: each `synthgen ...` up to `&&`, `|` or a line end."""
    found = []
    for line in re.findall(r"synthgen [^\n|&]+", epilog):
        found.append(shlex.split(line.strip())[1:])
    return found


ALL = [
    (path, args)
    for path, command in commands(typer.main.get_command(app))
    for args in examples(command.epilog or "")
]


def test_every_command_with_options_shows_an_example():
    shown = {path for path, _ in ALL}
    plain = {("train",), ("data",), ("watermark",), ("release",)}  # groups: their commands show
    missing = [p for p, _ in commands(typer.main.get_command(app)) if p not in shown | plain]
    assert not missing, missing


@pytest.mark.parametrize(("path", "args"), ALL, ids=[" ".join(a[:3]) for _, a in ALL])
def test_a_help_example_parses_and_names_shipped_files_that_exist(path, args):
    command, rest, names = typer.main.get_command(app), list(args), []
    while hasattr(command, "commands"):  # down the groups; `release X` means `release create X`
        name = rest.pop(0) if rest and rest[0] in command.commands else "create"
        command = command.commands[name]
        names.append(name)
    given = list(rest)  # click consumes the list it parses
    command.make_context(" ".join(names), rest)  # raises on an unknown option or a bad value
    assert tuple(names[: len(path)]) == path
    for token in args:
        for value in token.split("="):
            if value.startswith("configs/"):
                assert (ROOT / value).is_file(), f"{' '.join(path)} --help names {value}"
    if "--config" not in args:
        return
    # the config and its overrides validate as the command's model
    from synthgen.config import (
        AETrainConfig,
        DiffusionTrainConfig,
        EditConfig,
        EvalConfig,
        ReleaseConfig,
        SampleConfig,
        load_config,
    )  # fmt: skip

    model = {("train", "ae"): AETrainConfig, ("train", "ldm"): DiffusionTrainConfig,
             ("train", "inpaint"): DiffusionTrainConfig, ("sample",): SampleConfig,
             ("edit",): EditConfig, ("eval",): EvalConfig,
             ("release", "create"): ReleaseConfig}[tuple(names)]  # fmt: skip
    overrides = [t for t in args if "=" in t and not t.startswith("-")]
    if model is ReleaseConfig:  # SAMPLES is the positional argument
        overrides.append(f"samples={given[0]}")
    load_config(model, ROOT / args[args.index("--config") + 1], overrides)
