"""Throughput benchmarks of the JAX port next to the PyTorch reference: the library behind
`python -m experiments.benchmark` (whose docstring describes the benchmarks and configurations).

  args = Args(size=64, batch=8, repeats=3, config=flops.CONFIGS["cpu"], config_name="cpu")
  for line in report("iteration", args, BENCHMARKS["iteration"](args)):
    print(line)

Both sides run identical weights (the torch reference modules, converted with
l4f_jax.system.convert) and are timed INTERLEAVED (JAX call, torch call, JAX call, ...), so that a
varying machine load affects both alike. torch and `l4f_jax.reference` are imported lazily, inside
the functions that need them: importing this module needs neither.

Add a benchmark by writing `bench_<name>(args) -> list[Result]` and registering it in BENCHMARKS.
"""
from __future__ import annotations

import dataclasses
import os
import statistics
import time
from typing import Callable, Optional

from l4f_jax.config import option
from l4f_jax.errors import UserError
from l4f_jax.system.flops import (CONFIGS, Config, discriminator_macs, generator_macs,
                                  cpu_peak_gflops, iteration_flops, peak_tflops)


@dataclasses.dataclass
class Args:
  """What a benchmark runs: a named `config` (flops.CONFIGS), else size / channel_multiplier."""
  size: int
  batch: int
  repeats: int
  channel_multiplier: int = 2
  torch: bool = True
  torch_threads: tuple = (0,)
  config: Optional[Config] = None
  config_name: str = ""
  torch_device: str = "auto"
  compute_dtype: str = "float32"
  torch_modconv: tuple = ("fused", "nonfused")  # torch references timed (TORCH_REFERENCES)
  # JAX variants timed side by side: (compute dtype, ((conv rule, value), ...)); () = one variant,
  # compute_dtype with ops.layers' default conv rules (BenchmarkConfig.jax_variants)
  variants: tuple = ()
  r1: bool = True  # iteration: also time the R1 iteration (amortised); False: plain only

  def jax_variants(self) -> tuple:
    return self.variants or ((self.compute_dtype, ()),)

  def model_config(self) -> Config:
    if self.config is not None:
      return dataclasses.replace(self.config, batch=self.batch)
    return Config(self.size, channel_multiplier=self.channel_multiplier, batch=self.batch,
                  devices=1)


@dataclasses.dataclass
class Result:
  """The timed calls of one implementation (one printed line)."""
  name: str
  seconds: list[float]          # per timed call
  items: int                    # images (or iterations) per call
  compile_s: Optional[float] = None
  note: str = ""
  unit: str = "img/s"
  flops: Optional[float] = None  # per call

  @property
  def median(self) -> float:
    return statistics.median(self.seconds)

  @property
  def rate(self) -> float:
    return self.items / self.median


def load() -> str:
  """The machine's load average, printed next to every figure."""
  return "load %.2f %.2f %.2f" % os.getloadavg()


def _time_interleaved(fns: list[Callable[[], object]], repeats: int) -> list[list[float]]:
  """Times each fn `repeats` times, round-robin (fn0, fn1, ..., fn0, ...)."""
  out = [[] for _ in fns]
  for _ in range(repeats):
    for j, fn in enumerate(fns):
      t = time.perf_counter()
      fn()
      out[j].append(time.perf_counter() - t)
  return out


def _torch_device(args: Args):
  import torch  # noqa: PLC0415
  if args.torch_device == "auto":
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
  return torch.device(args.torch_device)


_TORCH_DEFAULT_THREADS = []


def _torch_thread_variants(args: Args, dev) -> list[int]:
  """Thread counts to time (one on a GPU); 0 = the default, resolved."""
  import torch  # noqa: PLC0415
  if not _TORCH_DEFAULT_THREADS:
    _TORCH_DEFAULT_THREADS.append(torch.get_num_threads())
  out = []
  for n in args.torch_threads[:1] if dev.type == "cuda" else args.torch_threads:
    n = n or _TORCH_DEFAULT_THREADS[0]
    if n not in out:
      out.append(n)
  return out


def _with_threads(n: int, fn: Callable[[], object]) -> Callable[[], object]:
  def run():
    import torch  # noqa: PLC0415
    torch.set_num_threads(n)
    return fn()
  return run


def _torch_sync(dev):
  import torch  # noqa: PLC0415
  if dev.type == "cuda":
    torch.cuda.synchronize()


def _torch_name(dev, what: str, threads: int = 0) -> str:
  import torch  # noqa: PLC0415
  where = (f"cuda: {torch.cuda.get_device_name(dev)}" if dev.type == "cuda"
           else f"cpu, {threads} thread{'s' if threads > 1 else ''}")
  return f"torch ({where}; {what})"


def _variant_name(dtype: str, rules: tuple) -> str:
  return ", ".join([dtype] + [f"{k}={v}" for k, v in rules])


def _jax_name(what: str) -> str:
  import jax  # noqa: PLC0415
  dev = jax.devices()[0]
  return f"jax   ({dev.platform}: {dev.device_kind}; {what})"


def _flops(compiled) -> Optional[float]:
  try:
    cost = compiled.cost_analysis()
  except Exception:  # noqa: BLE001 (not every backend implements it)
    return None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  return float(cost["flops"]) if cost and "flops" in cost else None


# ---------------------------------------------------------------------------------------------------
# Benchmarks


def _torch_generator(c: Config, fused: bool = True):
  """The torch reference G (seed 0); fused=False: rosinality's non-fused modulated conv, the same
  weights (only the forward differs)."""
  import torch  # noqa: PLC0415
  from l4f_jax.reference.torch_stylegan2 import Generator as TorchGenerator  # noqa: PLC0415
  torch.manual_seed(0)
  return TorchGenerator(c.size, c.style_dim, c.n_mlp, **c.arch(), fused_modconv=fused)


# The torch references a benchmark can time: (modulated conv, upfirdn2d). "fused" is the official
# code's path; "nonfused" rosinality's fused=False; "nonfused_depthwise" additionally blurs with one
# channel-grouped conv instead of rosinality's native CPU upfirdn2d (a one-channel conv over B*C
# images), i.e. a lean non-fused PyTorch StyleGAN2.
# "nonfused_depthwise_bf16" runs the lean reference under torch's bfloat16 autocast (CPU or CUDA):
# PyTorch's own mixed precision, the reference for --compute_dtype=bfloat16.
TORCH_REFERENCES = {"fused": (True, "native"), "nonfused": (False, "native"),
                    "nonfused_depthwise": (False, "depthwise"),
                    "nonfused_depthwise_bf16": (False, "depthwise")}


def _autocast(kind: str, dev, fn: Callable[[], object]) -> Callable[[], object]:
  """fn under torch's bfloat16 autocast for the *_bf16 references, else fn."""
  if not kind.endswith("_bf16"):
    return fn

  def run():
    import torch  # noqa: PLC0415
    with torch.autocast(dev.type, dtype=torch.bfloat16):
      return fn()
  return run


def _torch_copy(kind: str, c: Config, tg, td=None):
  """The torch reference G (and D) of `kind` (TORCH_REFERENCES) with tg's (td's) weights."""
  from l4f_jax.reference.torch_stylegan2 import Discriminator, use_upfirdn2d  # noqa: PLC0415
  fused, upfirdn = TORCH_REFERENCES[kind]
  dev = next(tg.parameters()).device
  g = _torch_generator(c, fused=fused)
  g.load_state_dict(tg.state_dict())
  g = use_upfirdn2d(g, upfirdn).to(dev)
  if td is None:
    return g
  d = Discriminator(c.size, **c.arch())
  d.load_state_dict(td.state_dict())
  return g, use_upfirdn2d(d, upfirdn).to(dev)


def bench_generator(args: Args) -> list[Result]:
  """G forward img/s: JAX (jit, non-fused) and the torch reference (no_grad, fused)."""
  import jax  # noqa: PLC0415
  import numpy as np  # noqa: PLC0415

  from l4f_jax.models.stylegan2 import Generator  # noqa: PLC0415

  c = args.model_config()
  g_kw = dict(size=c.size, style_dim=c.style_dim, n_mlp=c.n_mlp, **c.arch())
  if args.torch:
    import torch  # noqa: PLC0415

    from l4f_jax.system.convert import convert_generator  # noqa: PLC0415
    dev = _torch_device(args)
    tg = _torch_generator(c).eval()
    _, params, _ = convert_generator(tg.state_dict())
    params = jax.tree.map(np.asarray, params)
    tg = tg.to(dev)
  else:
    params = Generator(**g_kw).init(jax.random.PRNGKey(0), np.zeros((1, c.style_dim), np.float32),
                                    noise_key=jax.random.PRNGKey(1))["params"]
  dtype = None if args.compute_dtype == "float32" else jax.numpy.dtype(args.compute_dtype)
  gen = Generator(**g_kw, fused_modconv=False, dtype=dtype)
  params = jax.device_put(params)

  def forward(p, key):
    kz, kn = jax.random.split(key)
    z = jax.random.normal(kz, (c.batch, c.style_dim))
    return gen.apply({"params": p}, z, noise_key=kn)[0]

  keys = iter(jax.random.split(jax.random.PRNGKey(1), 2 * args.repeats + 4))
  t = time.perf_counter()
  compiled = jax.jit(forward).lower(params, next(keys)).compile()
  compile_s = time.perf_counter() - t
  fns = [lambda: compiled(params, next(keys)).block_until_ready()]
  names = [_jax_name(f"jit, non-fused, {args.compute_dtype}")]
  if args.torch:
    def torch_forward(g):
      def run():
        with torch.no_grad():
          out = g([torch.randn(c.batch, c.style_dim, device=dev)])[0]
        _torch_sync(dev)
        return out
      return run
    for kind in args.torch_modconv:
      g = _torch_copy(kind, c, tg).eval()
      for n in _torch_thread_variants(args, dev):
        fns.append(_with_threads(n, _autocast(kind, dev, torch_forward(g))))
        names.append(_torch_name(dev, f"no_grad, {kind}", n))
  for fn in fns:
    fn()  # warm-up
  secs = _time_interleaved(fns, args.repeats)
  flops = _flops(compiled)
  return [Result(n, s, c.batch, compile_s if j == 0 else None, flops=flops)
          for j, (n, s) in enumerate(zip(names, secs))]


def _build_iteration(c: Config, args: Args):
  """Torch G, D, A (+ optimizers) and the converted JAX state, identical weights."""
  import jax  # noqa: PLC0415
  import numpy as np  # noqa: PLC0415
  import torch  # noqa: PLC0415

  from l4f_jax.method import step as S  # noqa: PLC0415
  from l4f_jax.models.alpha import AlphaNetwork  # noqa: PLC0415
  from l4f_jax.models.stylegan2 import Discriminator, Generator  # noqa: PLC0415
  from l4f_jax.system.convert import (convert_alpha, convert_discriminator,  # noqa: PLC0415
                                      convert_generator)
  from l4f_jax.reference import torch_labels4free as tl  # noqa: PLC0415
  from l4f_jax.reference.torch_stylegan2 import Discriminator as TorchDiscriminator  # noqa: PLC0415

  tg = _torch_generator(c)
  td = TorchDiscriminator(c.size, **c.arch())
  ta = tl.BgExtractorRepro(c.size, tg.channels)
  with torch.no_grad():
    w_avg = tg.mean_latent(4096)
  sd = lambda m: {k: v.detach().numpy() for k, v in m.state_dict().items()}
  host = lambda t: jax.tree.map(np.asarray, t)
  g_params = host(convert_generator(sd(tg))[1])
  d_params = host(convert_discriminator(sd(td), c.size)[1])
  a_params = host(convert_alpha(sd(ta), dict(size=c.size, **c.arch()))[1])
  compute = None if args.compute_dtype == "float32" else args.compute_dtype
  cfg = S.L4FConfig(stddev_chunks=c.devices, compute_dtype=compute)
  models = S.Models(Generator(c.size, c.style_dim, c.n_mlp, **c.arch()), AlphaNetwork(c.size),
                    Discriminator(c.size, **c.arch()))
  return dict(tg=tg, td=td, ta=ta, w_avg=w_avg, g_params=g_params, d_params=d_params,
              a_params=a_params, cfg=cfg, models=models)


def _jax_step(models, cfg, batch: int, do_r1: bool, donate: bool = True):
  """jit(state, g_params, w_avg, real, key) -> (state, metrics); inputs drawn inside."""
  import jax  # noqa: PLC0415

  from l4f_jax.method import step as S  # noqa: PLC0415

  def fn(state, g_params, w_avg, real, key):
    inputs = S.sample_inputs(jax.random.fold_in(key, state.step), batch, models.generator,
                             real.dtype)
    return S.train_step(state, g_params, w_avg, real, inputs, models=models, cfg=cfg, do_r1=do_r1)
  return jax.jit(fn, donate_argnums=0 if donate else ())


def _torch_iterations(args: Args, c, m: dict, cfg, real_np) -> tuple[list, list]:
  """The torch official_iteration callables (plain[, R1] per reference and thread count) and
  their names, on the same weights as the JAX side."""
  import numpy as np  # noqa: PLC0415
  import torch  # noqa: PLC0415

  from l4f_jax.reference import torch_labels4free as tl  # noqa: PLC0415

  k = cfg.d_reg_every
  fns, names = [], []
  dev = _torch_device(args)
  tg, td, ta = m["tg"].to(dev), m["td"].to(dev), m["ta"].to(dev)
  treal = torch.from_numpy(np.ascontiguousarray(real_np.transpose(0, 3, 1, 2))).to(dev)
  tcfg = dict(truncation=cfg.truncation, mean_latent=m["w_avg"].to(dev), r1=cfg.r1,
              d_reg_every=k, n_devices=c.devices)
  shapes = [(c.batch, 1, 2 ** ((j + 5) // 2), 2 ** ((j + 5) // 2)) for j in range(tg.num_layers)]

  def torch_iter(r1, tg, td, opt_a, opt_d):
    def run():
      rnd = lambda s: torch.randn(*s, device=dev)
      noise = lambda: [rnd(s) for s in shapes]
      inputs = dict(z_d=rnd((c.batch, c.style_dim)), noise_fg_d=noise(), noise_bg_d=noise(),
                    z_a=rnd((c.batch, c.style_dim)), noise_fg_a=noise(), noise_bg_a=noise())
      tl.official_iteration(0 if r1 else 1, tg, ta, td, opt_a, opt_d, treal, inputs, tcfg)
      _torch_sync(dev)
    return run
  for kind in args.torch_modconv:
    g, d = _torch_copy(kind, c, tg, td)
    opts = tl.make_optimizers(ta, d, cfg.lr, cfg.g_reg_every, cfg.d_reg_every)
    for n in _torch_thread_variants(args, dev):
      fns += [_with_threads(n, _autocast(kind, dev, torch_iter(r1, g, d, *opts)))
              for r1 in _kinds(args)]
      names.append(_torch_name(dev, f"official_iteration, {kind}", n))
  return fns, names


def _kinds(args: Args) -> tuple:
  """The iterations timed: plain and R1 (amortised), or the plain one alone (--nor1)."""
  return (False, True) if args.r1 else (False,)


def _jax_iterations(args: Args, c: Config, m: dict, real_np):
  """Per JAX variant (--jax_variants; each traced with its conv rules set, ops.layers.conv_rules,
  and given its own donated state): its iteration callables (_kinds), name, compile seconds and
  XLA FLOPs per iteration kind."""
  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415

  from l4f_jax.method import step as S  # noqa: PLC0415
  from l4f_jax.ops import layers  # noqa: PLC0415

  models = m["models"]
  g_params, w_avg = jax.device_put(m["g_params"]), jnp.asarray(m["w_avg"].numpy())
  real, key = jnp.asarray(real_np), jax.random.PRNGKey(0)
  fns, names, compile_s, flops = [], [], [], []
  for dtype, rules in args.jax_variants():
    cfg = dataclasses.replace(m["cfg"], compute_dtype=None if dtype == "float32" else dtype)
    box = [S.init_state(cfg, models, jax.device_put(m["a_params"]), jax.device_put(m["d_params"]))]
    t = time.perf_counter()
    with layers.conv_rules(**dict(rules)):
      lowered = [_jax_step(models, cfg, c.batch, r1).lower(box[0], g_params, w_avg, real, key)
                 for r1 in _kinds(args)]
    compiled = [low.compile() for low in lowered]
    compile_s.append(time.perf_counter() - t)
    flops.append([_flops(comp) for comp in compiled])

    def jax_iter(comp, box=box):
      def run():
        box[0], _ = comp(box[0], g_params, w_avg, real, key)
        jax.block_until_ready(box[0])
      return run
    fns += [jax_iter(comp) for comp in compiled]
    names.append(_jax_name(f"jit, donated, non-fused, {_variant_name(dtype, rules)}"))
  return fns, names, compile_s, flops


def bench_iteration(args: Args) -> list[Result]:
  """Labels4Free iteration it/s: JAX train_step (one line per --jax_variants entry) and the torch
  official_iteration, interleaved. Every line's GFLOP/s uses the first JAX variant's XLA count."""
  import jax.numpy as jnp  # noqa: PLC0415
  import numpy as np  # noqa: PLC0415

  c = args.model_config()
  if c.batch % c.devices or (c.batch // c.devices) % min(c.batch // c.devices, 4):
    raise UserError(f"--batch={c.batch} must split into --devices={c.devices} chunks whose "
                    "size is a multiple of min(chunk, 4)")
  m = _build_iteration(c, args)
  k, nk = m["cfg"].d_reg_every, len(_kinds(args))
  real_np = np.clip(0.5 * np.random.default_rng(0).standard_normal(
      (c.batch, c.size, c.size, 3)), -1, 1).astype(np.float32)
  fns, names, compile_s, flops = _jax_iterations(args, c, m, real_np)
  if args.torch:
    torch_fns, torch_names = _torch_iterations(args, c, m, m["cfg"], real_np)
    fns += torch_fns
    names += torch_names
  for fn in fns:
    fn()  # warm-up
  # round-robin: all plain iterations, then all R1 iterations (so that load drifts hit all alike)
  order = [i for r in range(nk) for i in range(r, len(fns), nk)]
  secs = _time_interleaved([fns[i] for i in order], args.repeats)
  secs = [secs[order.index(i)] for i in range(len(fns))]

  amort = lambda f: f[0] if nk == 1 or None in f else ((k - 1) * f[0] + f[1]) / k
  per_iter = [None if None in f else amort(f) for f in flops]
  results = []
  for j, name in enumerate(names):
    plain = secs[nk * j]
    note = f"[plain {statistics.median(plain) * 1e3:.0f} ms"
    if nk == 2:
      note += (f", R1 {statistics.median(secs[nk * j + 1]) * 1e3:.0f} ms; amortised over "
               f"d_reg_every={k}")
    if len(flops) > 1 and j < len(flops) and per_iter[j]:
      note += f"; this program's XLA count {per_iter[j] / 1e9:.2f} GFLOP"
    times = plain if nk == 1 else [((k - 1) * a + b) / k for a, b in zip(plain, secs[2 * j + 1])]
    results.append(Result(name, times, 1, compile_s[j] if j < len(compile_s) else None,
                          note + "]", "it/s", per_iter[0]))
  if args.compute_dtype != "float32":
    results[0].note += "\n    " + bf16_parity(m, c, jnp.asarray(real_np))
  return results


def bf16_parity(m: dict, c: Config, real) -> str:
  """Max abs differences of one iteration's losses and alpha masks, bf16 vs float32 compute."""
  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415
  import numpy as np  # noqa: PLC0415

  from l4f_jax.method import step as S  # noqa: PLC0415

  models, w_avg = m["models"], jnp.asarray(m["w_avg"].numpy())
  inputs = S.sample_inputs(jax.random.PRNGKey(7), c.batch, models.generator)
  out = {}
  for name, cfg in (("f32", dataclasses.replace(m["cfg"], compute_dtype=None)),
                    ("bf16", dataclasses.replace(m["cfg"], compute_dtype="bfloat16"))):
    state = S.init_state(cfg, models, m["a_params"], m["d_params"])
    step = jax.jit(S.train_step, static_argnames=("models", "cfg", "do_r1", "axis_name"))
    _, metrics = step(state, m["g_params"], w_avg, real, inputs, models=models, cfg=cfg, do_r1=True)
    comp = jax.jit(S.composite, static_argnames=("models", "cfg"))
    alpha = comp(m["g_params"], m["a_params"], w_avg, inputs.z_a, inputs.noise_fg_a,
                 inputs.noise_bg_a, models=models, cfg=cfg)[1]
    out[name] = (jax.device_get(metrics), np.asarray(alpha, np.float32))
  losses = {k: abs(float(out["bf16"][0][k]) - float(out["f32"][0][k])) for k in out["f32"][0]}
  worst = max(losses, key=losses.get)
  alpha_diff = float(np.abs(out["bf16"][1] - out["f32"][1]).max())
  return (f"bf16 parity vs float32 (one R1 iteration, same state and inputs): alpha max abs "
          f"{alpha_diff:.2e}; losses max abs {losses[worst]:.2e} ({worst}); d_loss "
          f"{losses['d_loss']:.2e}, a_loss {losses['a_loss']:.2e}, r1 {losses['r1']:.2e}")


BENCHMARKS: dict[str, Callable[[Args], list[Result]]] = {
    "generator": bench_generator,
    "iteration": bench_iteration,
}


def _names(value: str) -> list[str]:
  return [v for v in value.split(",") if v]


@dataclasses.dataclass(frozen=True)
class BenchmarkConfig:
  """The options of experiments.benchmark; `plan(cfg)` gives the benchmarks and their Args."""
  what: str = option("generator", "Benchmark(s) to run, comma-separated, or 'all' (see "
                     "BENCHMARKS).")
  config: Optional[str] = option(None, "Named configuration (see CONFIGS); iteration defaults to "
                                 "'cpu'.")
  size: int = option(256, "Image size (without --config).")
  batch: Optional[int] = option(None, "Batch size (default: the config's, else 4).", ge=1)
  devices: Optional[int] = option(None, "Emulated devices the batch is split into (default: the "
                                  "config's).", ge=1)
  repeats: int = option(5, "Timed repetitions (median reported).", ge=1)
  channel_multiplier: int = option(2, "1 or 2 (config-f).")
  torch: bool = option(True, "Also time the PyTorch reference.")
  torch_threads: str = option("1,0", "torch.set_num_threads values, comma-separated, each timed "
                              "(interleaved); 0 = torch's default (all cores). The ratio uses "
                              "the fastest.")
  torch_modconv: str = option("fused,nonfused", "torch reference(s) to time, comma-separated: "
                              "rosinality's fused (batch-grouped) modulated conv, the official "
                              "path; its non-fused path ('nonfused'); and the non-fused path with "
                              "every blur as one depthwise conv ('nonfused_depthwise': a lean "
                              "PyTorch StyleGAN2); 'nonfused_depthwise_bf16': the same under "
                              "torch's bfloat16 autocast.")
  torch_device: str = option("auto", "Device of the torch reference (auto: cuda when available).",
                             choices=("auto", "cpu", "cuda"))
  compute_dtype: str = option("float32", "JAX compute dtype of G and D (L4FConfig.compute_dtype); "
                              "bfloat16 also prints its parity against float32.",
                              choices=("float32", "bfloat16"))
  jax_variants: str = option("", "iteration: JAX variants timed side by side (round-robin with "
                             "the torch references), comma-separated; each is '+'-joined items: "
                             "a compute dtype (float32, bfloat16; default --compute_dtype) and "
                             "NAME=INTEGER settings of the conv shape rules of l4f_jax.ops.layers "
                             "(CONV_RULES) while its programs are traced, e.g. 'float32,float32+"
                             "AMX_MIN_CHANNELS=1000000000'. Empty: --compute_dtype, default rules.")
  r1: bool = option(True, "iteration: also time the R1 iteration (the figures are amortised over "
                    "d_reg_every); --nor1 times the plain iteration alone.")
  xla_flags: str = option("", "Appended to XLA_FLAGS before JAX starts.")

  def __post_init__(self):  # the checks `config.validate` cannot express (before parse-only ends)
    plan(self)


def plan(cfg: BenchmarkConfig) -> tuple[list[str], Args]:
  """(the benchmarks to run, their Args), or a UserError naming the flag."""
  whats = sorted(BENCHMARKS) if cfg.what == "all" else _names(cfg.what)
  for w in whats or [cfg.what]:
    if w not in BENCHMARKS:
      raise UserError(f"--what={w} is unknown; choose from {sorted(BENCHMARKS)} or all")
  name = cfg.config or ("cpu" if "iteration" in whats else None)
  if name is not None and name not in CONFIGS:
    raise UserError(f"--config={name} is unknown; choose one of {sorted(CONFIGS)}")
  config = CONFIGS[name] if name else None
  if config is not None and cfg.devices:
    config = dataclasses.replace(config, devices=cfg.devices)
  size = config.size if config else cfg.size
  if size < 8 or size & (size - 1):
    raise UserError(f"--size={size} must be a power of two >= 8")
  threads = _names(cfg.torch_threads)
  if not threads or not all(n.isdigit() for n in threads):
    raise UserError(f"--torch_threads={cfg.torch_threads} must be integers >= 0, e.g. 1,0")
  modconv = _names(cfg.torch_modconv)
  for kind in modconv or [cfg.torch_modconv]:
    if kind not in TORCH_REFERENCES:
      raise UserError(f"--torch_modconv={kind!r} is unknown; choose from "
                      f"{', '.join(TORCH_REFERENCES)} (comma-separated)")
  variants = _parse_variants(cfg.jax_variants, cfg.compute_dtype)
  for flag, used in (("--jax_variants", bool(variants)), ("--nor1", not cfg.r1)):
    if used and "iteration" not in whats:
      raise UserError(f"{flag} applies to --what=iteration only (got --what={cfg.what})")
  if cfg.channel_multiplier not in (1, 2):
    raise UserError(f"--channel_multiplier={cfg.channel_multiplier} must be 1 or 2")
  batch = cfg.batch or (config.batch if config else 4)
  return whats, Args(size, batch, cfg.repeats, cfg.channel_multiplier, cfg.torch,
                     tuple(int(n) for n in threads), config, name or "", cfg.torch_device,
                     cfg.compute_dtype, tuple(modconv), variants, cfg.r1)


def _parse_variants(value: str, default_dtype: str) -> tuple:
  """--jax_variants as ((dtype, ((rule, value), ...)), ...), or a UserError naming the item."""
  from l4f_jax.ops.layers import conv_rule_error  # noqa: PLC0415
  dtypes = BenchmarkConfig.__dataclass_fields__["compute_dtype"].metadata["choices"]
  out = []
  for spec in _names(value):
    dtype, rules = default_dtype, {}
    for item in spec.split("+"):
      name, eq, num = item.partition("=")
      if not eq and item not in dtypes:
        raise UserError(f"--jax_variants: {item!r} is neither a compute dtype ({', '.join(dtypes)})"
                        " nor RULE=INTEGER")
      if not eq:
        dtype = item
        continue
      if not num.lstrip("-").isdigit():
        raise UserError(f"--jax_variants: {item!r}: the value must be an integer")
      error = conv_rule_error(name, int(num))
      if error:
        raise UserError(f"--jax_variants: {error}")
      rules[name] = int(num)
    out.append((dtype, tuple(rules.items())))
  return tuple(out)


def report(what: str, args: Args, results: list[Result]) -> list[str]:
  """Formats results as printed lines; with two results, adds the first/second throughput ratio."""
  c = args.model_config()
  if args.config is not None:
    desc = (f"config {args.config_name} ({c.size} px, style {c.style_dim}, mlp {c.n_mlp}, "
            f"channels {_channels(c)}), batch {c.batch}")
    if what == "iteration":
      desc += f" = {c.devices} emulated devices x {c.batch // c.devices}"
  else:
    desc = f"size {args.size}, channel_multiplier {args.channel_multiplier}, batch {args.batch}"
  lines = [f"{what}: {desc}, median of {args.repeats}; {load()}"]
  for r in results:
    comp = f", compile {r.compile_s:.1f} s" if r.compile_s is not None else ""
    fl = f", {r.flops / r.median / 1e9:.1f} GFLOP/s" if r.flops else ""
    lines.append(f"  {r.name}: {r.median * 1e3:.1f} ms/call, {r.rate:.3g} {r.unit}{fl}{comp}"
                 f"{' ' + r.note if r.note else ''}")
  if results and results[0].flops:
    unit = ("call" if what != "iteration" else
            "iteration (amortised)" if args.r1 else "plain iteration")
    first = " of the first JAX program, every line's GFLOP/s" if len(args.jax_variants()) > 1 else ""
    lines.append(f"  FLOPs per {unit}: {results[0].flops / 1e9:.2f} GFLOP (XLA cost analysis"
                 f"{first})")
    import jax  # noqa: PLC0415
    kind = jax.devices()[0].device_kind
    peak = peak_tflops(kind, args.compute_dtype)
    if peak:
      frac = results[0].flops / results[0].median / (peak * 1e12)
      label = "bf16" if args.compute_dtype == "bfloat16" else "TF32"
      lines.append(f"  JAX at {100 * frac:.1f}% of the {kind} dense {label} peak ({peak:.0f} TFLOP/s)")
    elif jax.devices()[0].platform == "cpu":
      dtypes = [args.compute_dtype] + [d for d, _ in args.jax_variants()] if what == "iteration" \
          else [args.compute_dtype]
      lines += _cpu_peak_lines(results, dtypes)
  if what == "iteration":
    k = 16  # L4FConfig.d_reg_every
    ana = ((k - 1) * iteration_flops(c, False) + iteration_flops(c, True)) / k
    if not args.r1:
      ana = iteration_flops(c, False)
    lines.append(f"  FLOPs per {'' if args.r1 else 'plain '}iteration, analytic: {ana / 1e9:.2f} GFLOP (G fwd "
                 f"{2 * generator_macs(c) / 1e9:.3f}, D fwd {2 * discriminator_macs(c) / 1e9:.3f} "
                 "GFLOP per image)")
  elif what == "generator":
    lines.append(f"  G forward, analytic: {2 * generator_macs(c) / 1e9:.3f} GFLOP per image")
  n_jax = len(args.jax_variants()) if what == "iteration" else 1
  if len(results) > n_jax:
    best = min(results[n_jax:], key=lambda r: r.median)
    for r in results[:n_jax]:
      ratio = r.median / best.median
      which = f" [{r.name.split(';')[-1].strip(' )')}]" if n_jax > 1 else ""
      lines.append(f"  ratio jax/torch time{which}: {ratio:.3f} (jax {1 / ratio:.2f}x the "
                   f"throughput of the fastest torch, {best.name.split(';')[0]}); {load()}")
  return lines


# The measured roofline next to the derived peaks: XLA's [n x n] @ [n x n] matmul (bfloat16 with
# float32 accumulation, the form of the bf16 convs) in the same run, best of 5. The derived peaks
# use the clock /proc/cpuinfo reports, which boost clocks exceed (a 2-core AMD Zen 4 at a reported
# 2.6 GHz ran this float32 matmul at 207 GFLOP/s, 125 % of its derived 166). This matmul is the
# measured ceiling that a program made of XLA's GEMMs at that precision can approach.
ROOFLINE_MATMUL = 2048


def matmul_gflops(dtype: str, n: int = ROOFLINE_MATMUL, repeats: int = 5) -> float:
  """GFLOP/s of XLA's n x n x n matmul on this backend: float32, or bfloat16 operands with float32
  accumulation (`preferred_element_type`); the best of `repeats` timed calls after a warm-up."""
  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415
  a, b = (jax.random.normal(jax.random.key(i), (n, n), jnp.float32).astype(dtype) for i in (0, 1))
  f = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32))
  call = lambda: f(a, b).block_until_ready()
  call()
  return 2 * n ** 3 / min(_time_interleaved([call], repeats)[0]) / 1e9


def _cpu_peak_lines(results: list[Result], dtypes: list[str]) -> list[str]:
  """Every result's FLOP/s (the JAX program's count) against this CPU's float32 peak and, where a
  program runs in bfloat16, its bf16 peak: AMX or AVX512_BF16 (flops.cpu_peak_gflops says how each
  is derived); then against the same run's XLA matmul at each of those dtypes (`matmul_gflops`)."""
  out, measured = [], []
  fracs = lambda peak: ", ".join(f"{r.name.split(';')[-1].strip(' )')} "
                                 f"{100 * r.flops / r.median / 1e9 / peak:.0f}%"
                                 for r in results if r.flops)
  for d in dict.fromkeys(["float32", *dtypes]):
    peak = cpu_peak_gflops(d)
    if peak is not None:
      out.append(f"  of this CPU's {d} peak {peak[0]:.0f} GFLOP/s ({peak[1]}): {fracs(peak[0])}")
    mm = matmul_gflops(d)
    form = "float32" if d == "float32" else f"{d} -> float32"
    measured.append(f"  of this run's XLA {form} matmul [{ROOFLINE_MATMUL}]^3 at {mm:.0f} GFLOP/s "
                    f"(best of 5): {fracs(mm)}")
  return out + measured


def _channels(c: Config) -> str:
  from l4f_jax.models.stylegan2 import channel_table  # noqa: PLC0415
  ch = channel_table(c.size, c.channel_multiplier, c.channel_base, c.channel_max)
  return "/".join(str(ch[r]) for r in sorted(ch))
