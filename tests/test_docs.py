"""The docs stay true: the reference pages are what the code generates, every `bclm ...` command shown in the
README or the docs parses against the real CLI and config (without running), the README's links resolve,
and the site builds with `mkdocs build --strict`."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from bclm import config as cfg
from bclm import reference
from bclm.cli import sweep_recipe

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
SHELL_FENCES = {"", "bash", "sh", "shell", "console"}


class _Parsed(Exception):
    """Raised once a command's arguments parsed: the check stops before anything runs."""


def shell_commands(markdown: str) -> list[str]:
    """The `bclm ...` commands (arguments after `bclm`) of a page's shell code blocks."""
    commands, fence, block = [], None, []
    for line in markdown.splitlines():
        mark = re.match(r"^\s*```(\w*)", line)
        if mark and fence is None:
            fence, block = mark.group(1), []
        elif mark:
            if fence in SHELL_FENCES:
                text = re.sub(r"\\\n\s*", " ", "\n".join(block))
                commands += [c for ln in text.splitlines() for c in _bclm_segments(ln)]
            fence = None
        elif fence is not None:
            block.append(line)
    return commands


def _bclm_segments(line: str) -> list[str]:
    found = []
    for segment in re.split(r"&&|\|\||;|\|", line.strip().removeprefix("$ ")):
        tokens = shlex.split(segment, comments=True)
        while tokens and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", tokens[0]):      # VAR=value prefixes
            tokens = tokens[1:]
        if tokens and tokens[0] in ("accelerate", "python", "python3", "torchrun") and "bclm" in tokens:
            tokens = tokens[tokens.index("bclm"):]
        if tokens and (tokens[0] == "bclm" or tokens[0].endswith("/bclm")):
            found.append(shlex.join(tokens[1:]))
    return found


def check_command(args: str) -> str | None:
    """None when `bclm ARGS` parses against the real CLI and config; else what it printed."""
    from bclm.cli import main

    real_parse, real_build = argparse.ArgumentParser.parse_args, cfg.build_config

    def parse(self, *a, **k):
        real_parse(self, *a, **k)
        raise _Parsed

    def build(cls, recipe, overrides):
        if recipe is not None and not Path(recipe).is_file():     # a user's own recipe: check the flags
            recipe = None
        real_build(cls, recipe, overrides)
        raise _Parsed

    err = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        mp.setattr(argparse.ArgumentParser, "parse_args", parse)
        mp.setattr(cfg, "build_config", build)
        mp.chdir(ROOT)
        try:
            code = main(shlex.split(args))
        except _Parsed:
            return None
        except SystemExit as e:
            code = e.code
    return None if code == 0 else (err.getvalue().strip() or f"exit {code}")


def test_a_planted_typo_in_a_docs_command_is_caught():
    page = ("```bash\nbclm train --dataset d --output-dir o --train.lrr 0.1\n"
            "bclm collect --env X --episodes 2 --output d --seeds 1\n```\n")
    problems = [check_command(c) for c in shell_commands(page)]
    assert "unknown option --train.lrr" in problems[0] and "unrecognized arguments: --seeds 1" in problems[1]
    assert check_command("train --dataset d --output-dir o --train.lr 0.1 --overwrite") is None


def test_every_bclm_command_in_the_readme_and_docs_parses():
    bad = {}
    for page in DOCS:
        for command in shell_commands(page.read_text(encoding="utf-8")):
            problem = check_command(command)
            if problem:
                bad[f"{page.relative_to(ROOT)}: bclm {command}"] = problem.splitlines()[-1]
    assert not bad, "\n".join(f"{k}\n    {v}" for k, v in bad.items())


def test_the_reference_pages_are_what_the_code_generates():
    for name, text in reference.pages().items():
        page = ROOT / "docs" / "reference" / name
        assert page.read_text(encoding="utf-8") == text, f"{page} is stale: python -m bclm.reference docs/reference"


def test_the_cli_key_list_is_what_the_code_generates():
    assert json.loads(cfg.KEYS_FILE.read_text()) == reference.recipe_keys(), \
        "bclm/config_keys.json is stale: python -m bclm.reference docs/reference"


@pytest.mark.parametrize("command", ["train", "dagger", "sweep"])
def test_a_typo_is_named_before_torch_is_imported(command):
    code = (f"import sys; from bclm.cli import main; code = main([{command!r}, '--train.lrr', '0.1']); "
            "sys.exit(10 if 'torch' in sys.modules else code)")
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "unknown option --train.lrr (did you mean --train.lr?)" in run.stderr


def test_the_config_reference_lists_every_field_of_every_section():
    page = (ROOT / "docs" / "reference" / reference.CONFIG_PAGE).read_text(encoding="utf-8")
    listed = re.findall(r"^\| `--([\w.]+)` \|", page, re.M)
    assert listed == [key for key, *_ in cfg.leaf_fields(sweep_recipe())]


def test_the_readme_is_short_opens_with_the_two_commands_and_its_links_resolve():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 200
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    assert "bclm demo" in blocks[0] and "python -m pytest -q" in blocks[1]
    assert "python -m pytest -q" in (ROOT / ".ci" / "run").read_text()
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if not re.match(r"\w+://|mailto:", target):
            assert (ROOT / target).exists(), f"README links to {target}, which does not exist"


def test_the_site_builds_strictly(tmp_path):
    pytest.importorskip("mkdocs")
    built = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path)],
                           cwd=ROOT, capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
