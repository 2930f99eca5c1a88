"""Every command the documentation shows parses: README.md, WORKSPACE.md and docs/*.md.

Each `python -m experiments.<cli> ...` line of a fenced code block (with its backslash
continuations) runs as a subprocess with L4F_PARSE_ONLY=1: the CLI parses its flags and flagfiles
and validates its config exactly as a real run does (unknown flags, malformed or out-of-range
values, missing flagfiles fail), then stops before any work (`config.stop_if_parse_only`). The
README's two set-up commands are run for real by CI (`.ci/run`) and by the pipeline tests.
"""
from __future__ import annotations

import concurrent.futures
import os
import pathlib
import re
import shlex
import subprocess
import sys

import pytest

from tests import cli_runner
from tests.tiny_world import ROOT, cli_env, make_generator_dir

DOCS = [pathlib.Path(ROOT, "README.md"), pathlib.Path(ROOT, "WORKSPACE.md"),
        *sorted(pathlib.Path(ROOT, "docs").glob("*.md"))]
README_MAX_LINES = 300


def _commands() -> list[tuple[str, list[str]]]:
  """(where, argv) of every experiments command in a fenced block, deduplicated."""
  found, seen = [], set()
  for doc in DOCS:
    lines = doc.read_text().splitlines()
    fenced = False
    i = 0
    while i < len(lines):
      line = lines[i]
      if line.lstrip().startswith("```"):
        fenced = not fenced
      elif fenced and line.count("-m experiments.") == 1:
        m = re.search(r"(?:^\s*|&& )(?:\S*/)?python3? -m (experiments\.\w+.*)$", line)
        if m and line[:m.start()].count('"') % 2 == 0:  # not inside a quoted remote command
          text, where = m.group(1), f"{doc.name}:{i + 1}"
          while text.rstrip().endswith("\\") and i + 1 < len(lines):
            i += 1
            text = text.rstrip()[:-1] + " " + lines[i].strip()
          text = re.split(r" #|&&|\||;", text)[0].strip()
          text = re.sub(r"<[^>]*>", "PLACEHOLDER", text)  # <folder of images>: one value
          text = re.sub(r"\$\{?\w+\}?", "0", text)  # shell variables of a loop: a number
          argv = shlex.split(text)
          if tuple(argv) not in seen:
            seen.add(tuple(argv))
            found.append((where, argv))
      i += 1
  return found


COMMANDS = _commands()


def _parse(argv: list[str]) -> subprocess.CompletedProcess:
  env = dict(cli_env(devices=1), L4F_PARSE_ONLY="1")
  return cli_runner.run([sys.executable, "-m", *argv], cwd=ROOT, env=env, timeout=300)


@pytest.fixture(scope="module")
def parsed():
  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    return dict(zip([w for w, _ in COMMANDS], pool.map(_parse, [a for _, a in COMMANDS])))


def test_the_docs_show_commands():
  clis = {argv[0] for _, argv in COMMANDS}
  assert {"experiments.pipeline", "experiments.segment", "experiments.train",
          "experiments.convert", "experiments.make_pairs", "experiments.train_student",
          "experiments.invert", "experiments.edit"} <= clis, clis


@pytest.mark.parametrize("where", [w for w, _ in COMMANDS])
def test_documented_command_parses(where, parsed):
  r = parsed[where]
  argv = dict(COMMANDS)[where]
  prog = argv[0].split(".")[1]
  assert r.returncode == 0 and f"{prog}: the flags parse" in r.stdout, (
      where, " ".join(argv), r.stderr[-1500:])


def test_readme_is_a_front_door():
  readme = pathlib.Path(ROOT, "README.md").read_text()
  assert len(readme.splitlines()) <= README_MAX_LINES
  for link in re.findall(r"\]\((docs/[^)#]+)", readme):
    assert os.path.exists(os.path.join(ROOT, link)), link
  for doc in DOCS:  # every relative link of every page resolves
    for link in re.findall(r"\]\(([^)#:]+\.md)", doc.read_text()):
      assert (doc.parent / link).exists(), (doc.name, link)


def _python_blocks(doc: pathlib.Path) -> list[str]:
  return re.findall(r"```python\n(.*?)```", doc.read_text(), flags=re.S)


def test_api_snippets_run(tmp_path):
  """docs/api.md's two main snippets run as written, each in a fresh namespace, on a random 16 px
  generator with a discriminator (its path in place of the converted checkpoints they name)."""
  asset = make_generator_dir(str(tmp_path / "g"), 16)
  blocks = _python_blocks(pathlib.Path(ROOT, "docs", "api.md"))
  first = next(b for b in blocks if 'load_weights("weights/ffhq")' in b)
  iteration = next(b for b in blocks if "S.train_step" in b)
  check = 'assert set(metrics) >= {"d_loss", "a_loss"} and int(state.step) == 2\nprint("ran")\n'
  for k, code in enumerate((first.replace('trees["noises"]', "noise"), iteration + check)):
    code = re.sub(r'load_weights\("weights/\w+"\)', f"load_weights({asset!r})", code)
    script = tmp_path / f"snippet{k}.py"  # its own process: cheap XLA compiles (cli_env)
    script.write_text(code)
    r = subprocess.run([sys.executable, str(script)], cwd=ROOT, env=cli_env(devices=1),
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
  assert r.stdout.strip() == "ran"
