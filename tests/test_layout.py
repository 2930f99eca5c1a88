"""Layout rules that keep the suite order-independent.

The CLIs in experiments/ define absl flags at import time, and several share natural names
(--size, --batch, --seed), so importing two of them in one process raises DuplicateFlagError.
Tests therefore import library code (l4f_jax) in-process and run the CLIs as subprocesses.
"""
import ast
import pathlib

TESTS = pathlib.Path(__file__).parent


def _imported_modules(path: pathlib.Path) -> list[str]:
  names = []
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.Import):
      names += [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module:
      names.append(node.module)
  return names


def test_tests_do_not_import_cli_modules_in_process():
  offenders = {p.name: m for p in sorted(TESTS.rglob("*.py"))
               for m in _imported_modules(p) if m == "experiments" or m.startswith("experiments.")}
  assert not offenders, f"import these from l4f_jax instead (or run the CLI): {offenders}"
