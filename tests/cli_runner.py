"""`python -m experiments.<prog>` for the tests, without paying for Python's start-up each time.

About 300 of the suite's tests run a CLI as a separate process (tests/test_layout.py), and most of
them are refused in their validation phase: each of those spent about 0.85 s of CPU importing jax,
flax, optax, absl and `l4f_jax`, and a few milliseconds on what it tests. Here one server process
per pytest worker imports those once, without starting a JAX backend or any thread, and forks a
child for every run. The child is a separate process with its own pid, file descriptors, cwd,
environment and exit status, and it runs the CLI exactly as `python -m` does
(`runpy.run_module(..., run_name="__main__")`, then Python's shutdown: non-daemon threads joined,
atexit handlers, stdio flushed). JAX reads `XLA_FLAGS` (the fake device count) when its backend
starts, which the child does itself.

`run()` takes the arguments of `subprocess.run` that the tests use. It falls back to
`subprocess.run` for any command other than `sys.executable -m experiments.<prog>`, and it keeps
one server per set of the variables that take effect at import time (JAX_*, PYTHON*, TF_*,
OMP_*, OPENBLAS_*, MKL_*), so that a child never sees modules imported under another setting.
Tests of start-up, signals, installation and hidden packages (the signalled runs of
tests/test_interrupts.py, tests/test_package.py, the artifact snippet, test_hostile's `hide=`
cases) call `subprocess` directly. `L4F_TEST_FORK=0` turns the server off.
"""
from __future__ import annotations

import atexit
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import threading

_PRELOAD = ("jax", "jax.numpy", "numpy", "PIL.Image", "absl.app", "absl.flags", "absl.logging",
            "flax.linen", "optax", "orbax.checkpoint", "l4f_jax.programs.*")
_ENV_PREFIXES = ("JAX_", "PYTHON", "TF_", "OMP_", "OPENBLAS_", "MKL_")
_lock = threading.Lock()
_server: dict = {}


def _import_env_keys(env: dict) -> dict:
  """The variables that take effect when a module is imported: they must match the server's."""
  return {k: v for k, v in env.items() if k.startswith(_ENV_PREFIXES)}


def _eligible(argv, env) -> bool:
  return (os.environ.get("L4F_TEST_FORK", "1") != "0" and len(argv) >= 3
          and argv[0] == sys.executable and argv[1] == "-m" and argv[2].startswith("experiments.")
          and sys.platform.startswith("linux"))


def _start(env: dict) -> dict:
  sock_dir = tempfile.mkdtemp(prefix="l4f_cli_server_")
  path = os.path.join(sock_dir, "sock")
  proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), path],
                          env=env, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)
  ready = proc.stdout.readline().strip()
  if ready != "ready":
    proc.kill()
    raise RuntimeError(f"tests/cli_runner.py: the CLI server did not start ({ready!r})")

  def stop():
    proc.terminate()
    try:
      proc.wait(10)
    except subprocess.TimeoutExpired:
      proc.kill()
  atexit.register(stop)
  return {"proc": proc, "path": path, "env": _import_env_keys(env)}


def _server_for(env: dict) -> dict:
  with _lock:
    key = json.dumps(sorted(_import_env_keys(env).items()))
    server = _server.get(key)
    if server is None or server["proc"].poll() is not None:
      server = _server[key] = _start(env)
    return server


def run(argv, *, env=None, cwd=None, timeout=None, capture_output=True, text=True,
        check=False) -> subprocess.CompletedProcess:
  """`subprocess.run(argv, env=, cwd=, timeout=, capture_output=True, text=True)`, forked from
  the pre-imported server where that reproduces a fresh interpreter."""
  env = dict(os.environ if env is None else env)
  if not (capture_output and text and _eligible(argv, env)):
    return subprocess.run(argv, env=env, cwd=cwd, timeout=timeout, capture_output=capture_output,
                          text=text, check=check)
  server = _server_for(env)
  request = {"argv": list(argv), "env": env, "cwd": os.path.abspath(cwd or os.getcwd()),
             "timeout": int(timeout or 0)}
  with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
    s.settimeout(None if timeout is None else timeout + 30)
    s.connect(server["path"])
    s.sendall(json.dumps(request).encode() + b"\n")
    s.shutdown(socket.SHUT_WR)
    chunks = []
    try:
      while chunk := s.recv(1 << 16):
        chunks.append(chunk)
    except socket.timeout as e:
      raise subprocess.TimeoutExpired(argv, timeout) from e
  reply = json.loads(b"".join(chunks))
  if reply.get("timed_out"):
    raise subprocess.TimeoutExpired(argv, timeout, reply["stdout"], reply["stderr"])
  result = subprocess.CompletedProcess(argv, reply["returncode"], reply["stdout"], reply["stderr"])
  if check:
    result.check_returncode()
  return result


# ------------------------------------------------------------------------------------------------
# The server (this file run as a script)

def _preload() -> None:
  import importlib
  import pkgutil
  for name in _PRELOAD:
    if name.endswith(".*"):
      package = importlib.import_module(name[:-2])
      for info in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{name[:-2]}.{info.name}")
    else:
      importlib.import_module(name)
  from jax._src import xla_bridge
  if xla_bridge._backends or threading.active_count() != 1 or "torch" in sys.modules:
    raise RuntimeError("importing started a JAX backend, a thread or torch: a fork would inherit it")


def _child(request: dict, out_path: str, err_path: str) -> None:
  """Runs in the forked child; never returns."""
  import runpy
  code = 1
  try:
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    for fd, path, flags in ((0, os.devnull, os.O_RDONLY), (1, out_path, os.O_WRONLY),
                            (2, err_path, os.O_WRONLY)):
      opened = os.open(path, flags)
      os.dup2(opened, fd)
      os.close(opened)
    if request["timeout"]:
      signal.alarm(request["timeout"])
    module = request["argv"][2]
    sys.argv = [module, *request["argv"][3:]]
    sys.path[0] = request["cwd"]
    try:
      runpy.run_module(module, run_name="__main__", alter_sys=True)
      code = 0
    except SystemExit as e:
      if e.code is None or isinstance(e.code, int):
        code = e.code or 0
      else:
        print(e.code, file=sys.stderr)
        code = 1
    except BaseException:  # what the interpreter does with an uncaught exception
      sys.excepthook(*sys.exc_info())
      code = 1
    threading._shutdown()  # as at interpreter exit: join the non-daemon threads
    atexit._run_exitfuncs()
  finally:
    for stream in (sys.stdout, sys.stderr):
      try:
        stream.flush()
      except Exception:
        pass
    os._exit(code)


def _serve(path: str) -> None:
  _preload()
  listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
  listener.bind(path)
  listener.listen(64)
  print("ready", flush=True)
  sel = selectors.DefaultSelector()
  sel.register(listener, selectors.EVENT_READ)
  pending = {}  # pid -> (connection, out path, err path)
  work = tempfile.mkdtemp(prefix="l4f_cli_runs_")
  n = 0
  while True:
    for _ in sel.select(timeout=0.01):
      conn, _ = listener.accept()
      data = b""
      while chunk := conn.recv(1 << 16):
        data += chunk
      request = json.loads(data)
      n += 1
      out_path, err_path = (os.path.join(work, f"{n}.{s}") for s in ("out", "err"))
      for p in (out_path, err_path):
        open(p, "wb").close()
      sys.stdout.flush()
      sys.stderr.flush()
      pid = os.fork()
      if pid == 0:
        listener.close()
        conn.close()
        _child(request, out_path, err_path)
      pending[pid] = (conn, out_path, err_path)
    while pending:
      pid, status = os.waitpid(-1, os.WNOHANG)
      if pid == 0:
        break
      conn, out_path, err_path = pending.pop(pid)
      returncode = os.waitstatus_to_exitcode(status)
      with open(out_path, encoding="utf-8", errors="replace") as f_out, \
          open(err_path, encoding="utf-8", errors="replace") as f_err:
        reply = {"returncode": returncode, "stdout": f_out.read(), "stderr": f_err.read(),
                 "timed_out": returncode == -signal.SIGALRM}
      os.remove(out_path)
      os.remove(err_path)
      try:
        conn.sendall(json.dumps(reply).encode())
      except OSError:
        pass
      conn.close()


if __name__ == "__main__":
  sys.path[0] = os.getcwd()  # as `python -m` from the repository root; the child sets its own cwd
  _serve(sys.argv[1])
