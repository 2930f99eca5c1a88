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


def test_shipped_code_never_imports_tests():
  root = TESTS.parent
  offenders = {str(p.relative_to(root)): m
               for d in ("l4f_jax", "experiments") for p in sorted((root / d).rglob("*.py"))
               for m in _imported_modules(p) if m == "tests" or m.startswith("tests.")}
  assert not offenders, f"shipped code imports the test tree: {offenders}"


def test_reference_modules_are_used_only_by_tests_and_the_benchmark():
  """torch stays optional: only l4f_jax/reference, the converter and the benchmark may import it."""
  root = TESTS.parent
  allowed = {"l4f_jax/system/convert.py", "experiments/benchmark.py",
             "l4f_jax/programs/benchmarking.py"}
  offenders = {}
  for p in sorted((root / "l4f_jax").rglob("*.py")) + sorted((root / "experiments").rglob("*.py")):
    rel = str(p.relative_to(root))
    if rel.startswith("l4f_jax/reference/") or rel in allowed:
      continue
    bad = [m for m in _imported_modules(p) if m.split(".")[0] == "torch"
           or m.startswith("l4f_jax.reference")]
    if bad:
      offenders[rel] = bad
  assert not offenders, f"torch / reference imports outside the allowed modules: {offenders}"


def test_onnx_stays_an_optional_extra():
  """jax2onnx / onnxruntime / onnx (requirements-onnx.txt) are imported only inside a function of
  system/artifact.py, so that everything else runs without them."""
  root = TESTS.parent
  offenders = {}
  for p in sorted((root / "l4f_jax").rglob("*.py")) + sorted((root / "experiments").rglob("*.py")):
    tree = ast.parse(p.read_text(), str(p))
    inner = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
             for n in ast.walk(f)}
    for node in ast.walk(tree):
      names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
               [node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
      if any(n.split(".")[0] in ("jax2onnx", "onnxruntime", "onnx", "onnx_ir") for n in names):
        if str(p.relative_to(root)) != "l4f_jax/system/artifact.py" or id(node) not in inner:
          offenders.setdefault(str(p.relative_to(root)), []).extend(names)
  assert not offenders, f"ONNX imports outside system/artifact.py's functions: {offenders}"


PARTS = ["ops", "models", "method", "io", "datasets", "system", "programs"]
BASE = ("config.py", "errors.py", "hardening.py", "__init__.py")


def _part_lines() -> dict:
  root = TESTS.parent / "l4f_jax"
  return {part: sum(len(p.read_text().splitlines()) for p in (root / part).rglob("*.py"))
          for part in PARTS}


def test_layers_only_import_downwards():
  """ops < models < method < io < datasets < system < programs (experiments on top); every part of
  l4f_jax is in the order, l4f_jax.config and l4f_jax.errors are base utilities any layer may use,
  and l4f_jax.reference (the PyTorch references) is used only by tests and the benchmark."""
  root = TESTS.parent / "l4f_jax"
  found = {p.name for p in root.iterdir() if p.is_dir() and p.name != "__pycache__"}
  assert found == set(PARTS) | {"reference"}, found
  offenders = {}
  for i, layer in enumerate(PARTS):
    above = {f"l4f_jax.{u}" for u in PARTS[i + 1:]}
    for p in sorted((root / layer).rglob("*.py")):
      bad = [m for m in _imported_modules(p) if any(m == a or m.startswith(a + ".") for a in above)]
      if bad:
        offenders[str(p.relative_to(root.parent))] = bad
  for base in BASE:
    p = root / base
    bad = [m for m in _imported_modules(p) if m.startswith("l4f_jax.") and m not in
           ("l4f_jax.errors", "l4f_jax.config", "l4f_jax.hardening")]
    if bad:
      offenders[f"l4f_jax/{base}"] = bad
  assert not offenders, f"upward imports: {offenders}"


def test_programs_do_not_import_programs():
  """A program imports no other program, except the pipeline, whose job is to run them."""
  root = TESTS.parent / "l4f_jax" / "programs"
  offenders = {}
  for p in sorted(root.glob("*.py")):
    if p.name in ("pipeline.py", "__init__.py"):
      continue
    bad = [m for m in _imported_modules(p) if m.startswith("l4f_jax.programs")]
    if bad:
      offenders[p.name] = bad
  assert not offenders, offenders


def test_no_part_holds_more_than_35_percent_of_the_lines():
  lines = _part_lines()
  total = sum(lines.values())
  assert max(lines.values()) <= 0.35 * total, {k: round(v / total, 3) for k, v in lines.items()}


def test_no_shipped_function_exceeds_80_lines():
  root = TESTS.parent / "l4f_jax"
  long = {}
  for p in sorted(root.rglob("*.py")):
    if "reference" in p.parts:
      continue
    for node in ast.walk(ast.parse(p.read_text())):
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        n = node.end_lineno - node.lineno + 1
        if n > 80:
          long[f"{p.relative_to(root.parent)}:{node.name}"] = n
  assert not long, long
