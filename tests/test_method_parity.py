"""Parity of the Labels4Free iteration (l4f_jax.method.step) with the torch reference.

The torch reference (`l4f_jax/reference/torch_labels4free.official_iteration`) and `train_step` are fed
identical weights (torch modules, perturbed, converted), latents, noise maps and real images. The
multi-iteration comparisons run in float64 on both sides (float32 Adam with
beta1 = 0 amplifies rounding), in a subprocess with JAX_ENABLE_X64=1 so that x64 never leaks into
other test modules. This file is that subprocess's script too (`python tests/test_method_parity.py
'<json case>'` prints a JSON report).

Float64 agrees to about 1e-13 or better here, so the checks assert 1e-10 (losses relative; alpha
masks and final parameters absolute). The former 1e-5 would let a wrong Adam beta2 (0.99 instead
of 0.99^(k/(k+1))) through the parameter check: it moves the final parameters by only ~4e-6.

The default cases run at 32 px (A with 3 levels) and at 256 px with narrow channels (the official
6-level A). The 256 px float64 case with the full-width networks takes about 10 minutes on 2 idle
cores (JAX side 467 s, torch 99 s); it runs only with L4F_SLOW_TESTS=1.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

# float64 on both sides. Measured (default cases): losses <= 4e-13 relative (the largest on a
# near-zero D logit), alpha <= 8e-16, parameters <= 1.1e-13; the slow 256 px case 2.4e-14,
# 1.2e-15, 3.5e-14 (README).
RTOL_LOSS = 1e-10
ATOL_ALPHA = 1e-10
ATOL_PARAM = 1e-10

SMALL = dict(size=32, batch=4, style_dim=32, n_mlp=2, channel_multiplier=2, channel_base=512,
             channel_max=32)

# ---------------------------------------------------------------------------------------------------
# torch state_dict -> Flax trees (l4f_jax.system.convert)


def converters():
  """(convert_generator(sd), convert_discriminator(sd, size), convert_alpha(sd, arch), source):
  each returns a Flax params tree; `arch` = dict(size, channel_multiplier, channel_base, channel_max)."""
  from l4f_jax.system import convert as c
  return (lambda sd: c.convert_generator(sd)[1], lambda sd, size: c.convert_discriminator(sd, size)[1],
          lambda sd, arch: c.convert_alpha(sd, arch)[1], "l4f_jax.system.convert")


def _sd(module):
  return {k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}


# ---------------------------------------------------------------------------------------------------
# One comparison case (runs in float64 in the worker subprocess, or float32 in-process)


def _build(case, dtype):
  """Torch G, D, A (perturbed) and the matching Flax modules and converted trees."""
  import torch
  from l4f_jax.method.step import Models
  from l4f_jax.models.alpha import AlphaNetwork
  from l4f_jax.models.stylegan2 import Discriminator, Generator
  from l4f_jax.reference import torch_labels4free as tl
  from l4f_jax.reference import torch_stylegan2 as ts

  tdtype = torch.float64 if dtype == "float64" else torch.float32
  arch = dict(channel_multiplier=case["channel_multiplier"], channel_base=case["channel_base"],
              channel_max=case["channel_max"])
  size, seed = case["size"], case.get("seed", 0)
  torch.manual_seed(seed)
  tg = ts.perturb_(ts.Generator(size, case["style_dim"], case["n_mlp"], **arch), seed).to(tdtype)
  td = ts.perturb_(ts.Discriminator(size, **arch), seed + 1).to(tdtype)
  ta = tl.BgExtractorRepro(size, tg.channels).to(tdtype)
  with torch.no_grad():
    w_avg = tg.mean_latent(256)
  conv_g, conv_d, conv_a, _ = converters()
  models = Models(Generator(size, case["style_dim"], case["n_mlp"], **arch),
                  AlphaNetwork(size), Discriminator(size, **arch))
  return dict(tg=tg, td=td, ta=ta, w_avg=w_avg, models=models, g_params=conv_g(_sd(tg)),
              d_params=conv_d(_sd(td), size), alpha_params=conv_a(_sd(ta), dict(arch, size=size)),
              arch=dict(arch, size=size))


def _draw_inputs(rng, case, num_layers):
  b, size = case["batch"], case["size"]
  shapes = [(b, 2 ** ((j + 5) // 2), 2 ** ((j + 5) // 2), 1) for j in range(num_layers)]
  noise = lambda: [rng.standard_normal(s) for s in shapes]
  return dict(z_d=rng.standard_normal((b, case["style_dim"])), noise_fg_d=noise(),
              noise_bg_d=noise(), z_a=rng.standard_normal((b, case["style_dim"])),
              noise_fg_a=noise(), noise_bg_a=noise(),
              real=np.clip(0.5 * rng.standard_normal((b, size, size, 3)), -1, 1))


def _rel(a, b):
  a, b = float(a), float(b)
  return abs(a - b) / max(abs(b), 1e-30) if a != b else 0.0


LOSS_KEYS = ["d_loss", "real_score", "fake_score", "r1", "r1_quirk", "r1_loss", "a_loss", "a_sat",
             "a_binarization", "a_fg_coverage", "a_bg_coverage", "a_fake_score"]


def run_case(case):
  """Runs `case['iters']` iterations on both sides; returns a report of the differences."""
  import jax
  import jax.numpy as jnp
  import torch
  from l4f_jax.method import step as S
  from l4f_jax.reference import torch_labels4free as tl

  dtype = "float64"
  assert jax.config.jax_enable_x64, "run_case needs JAX_ENABLE_X64=1"
  t0 = time.time()
  m = _build(case, dtype)
  tg, td, ta, models = m["tg"], m["td"], m["ta"], m["models"]
  cfg = S.L4FConfig(**case["cfg"])
  to_j = lambda t: jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), t)
  g_params, w_avg = to_j(m["g_params"]), jnp.asarray(m["w_avg"].numpy())
  state = S.init_state(cfg, models, to_j(m["alpha_params"]), to_j(m["d_params"]))
  opt_a, opt_d = tl.make_optimizers(ta, td, cfg.lr, cfg.g_reg_every, cfg.d_reg_every)
  tcfg = dict(truncation=cfg.truncation, mean_latent=m["w_avg"], r1=cfg.r1,
              d_reg_every=cfg.d_reg_every, r1_quirk_weight=cfg.r1_quirk_weight,
              sat_weight=cfg.sat_weight, loss_multiplier=cfg.loss_multiplier,
              fg_coverage_value=cfg.fg_coverage_value, bg_coverage_wt=cfg.bg_coverage_wt,
              bg_coverage_value=cfg.bg_coverage_value, n_devices=case.get("n_devices", 1),
              background_mode=cfg.background_mode)
  n_shards = case.get("shard_devices", 1)
  if n_shards == 1:
    step_fn = jax.jit(S.train_step, static_argnames=("models", "cfg", "do_r1", "axis_name"))
    put = lambda x: x
  else:  # per-device train_step under shard_map (DDP semantics), state replicated, batch sharded
    import functools
    from jax.sharding import NamedSharding, PartitionSpec as P
    mesh = jax.make_mesh((n_shards,), ("data",))
    rep, shd = P(), P("data")

    def step_fn(state, g_params, w_avg, real, inputs, *, models, cfg, do_r1):
      fn = functools.partial(S.train_step, models=models, cfg=cfg, do_r1=do_r1, axis_name="data")
      return jax.shard_map(fn, mesh=mesh, in_specs=(rep, rep, rep, shd, shd),
                           out_specs=(rep, rep))(state, g_params, w_avg, real, inputs)
    step_fn = jax.jit(step_fn, static_argnames=("models", "cfg", "do_r1"))
    put = lambda x: jax.device_put(x, NamedSharding(mesh, shd))
  comp_fn = jax.jit(S.composite, static_argnames=("models", "cfg"))
  rng = np.random.default_rng(case.get("seed", 0) + 100)
  nchw = lambda x: torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
  report = {"losses": {}, "alpha_max_abs": 0.0, "alpha_checks": 0, "r1_steps": [], "t_jax": 0.0,
            "t_torch": 0.0}
  for i in range(case["iters"]):
    raw = _draw_inputs(rng, case, tg.num_layers)
    tin = {k: ([nchw(n) for n in v] if isinstance(v, list) else torch.from_numpy(v))
           for k, v in raw.items() if k != "real"}
    t1 = time.time()
    out = tl.official_iteration(i, tg, ta, td, opt_a, opt_d, nchw(raw["real"]), tin, tcfg)
    report["t_torch"] += time.time() - t1

    inputs = S.Inputs(**{k: jax.tree.map(jnp.asarray, v) for k, v in raw.items() if k != "real"})
    t1 = time.time()
    alphas = [comp_fn(g_params, state.alpha_params, w_avg, getattr(inputs, f"z_{p}"),
                      getattr(inputs, f"noise_fg_{p}"), getattr(inputs, f"noise_bg_{p}"),
                      models=models, cfg=cfg)[1] for p in ("d", "a")]
    do_r1 = i % cfg.d_reg_every == 0
    state, metrics = step_fn(state, g_params, w_avg, put(jnp.asarray(raw["real"])),
                             jax.tree.map(put, inputs), models=models, cfg=cfg, do_r1=do_r1)
    metrics = jax.device_get(metrics)
    report["t_jax"] += time.time() - t1
    if do_r1:
      report["r1_steps"].append(i)
    for name, a in zip(("alpha_d", "alpha_a"), alphas):
      want = out[name].numpy().transpose(0, 2, 3, 1)
      report["alpha_max_abs"] = max(report["alpha_max_abs"], float(np.abs(np.asarray(a) - want).max()))
      report["alpha_checks"] += 1
    for k in LOSS_KEYS:
      if out.get(k) is None:
        assert k not in metrics, k
        continue
      r = _rel(metrics[k], out[k].item())
      report["losses"][k] = max(report["losses"].get(k, 0.0), r)
    report.setdefault("loss_values", []).append({k: float(metrics[k]) for k in metrics})

  conv_g, conv_d, conv_a, source = converters()
  report["converter"] = source
  want_d, want_a = conv_d(_sd(td), case["size"]), conv_a(_sd(ta), m["arch"])
  diff = lambda got, want: max(jax.tree.leaves(jax.tree.map(
      lambda x, y: float(np.abs(np.asarray(x) - y).max()), got, want)))
  moved = lambda got, init: max(jax.tree.leaves(jax.tree.map(
      lambda x, y: float(np.abs(np.asarray(x) - y).max()), got, init)))
  report["d_param_max_abs"] = diff(state.d_params, want_d)
  report["alpha_param_max_abs"] = diff(state.alpha_params, want_a)
  report["d_param_moved"] = moved(state.d_params, m["d_params"])
  report["alpha_param_moved"] = moved(state.alpha_params, m["alpha_params"])
  report["step"] = int(state.step)
  report["t_total"] = time.time() - t0
  return report


def _run_worker(case, timeout=900):
  from tests.tiny_world import FAST_XLA  # cheap compiles, as every test's (conftest.py)
  env = dict(os.environ, JAX_ENABLE_X64="1", JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={case.get('shard_devices', 1)} "
                       f"{FAST_XLA}")
  proc = subprocess.run([sys.executable, os.path.abspath(__file__), json.dumps(case)], cwd=ROOT,
                        env=env, capture_output=True, text=True, timeout=timeout)
  if proc.returncode:
    raise AssertionError(f"worker failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
  return json.loads(proc.stdout.strip().splitlines()[-1])


def _check(report, case):
  """Asserts the float64 report of `run_case(case)`: every loss, mask and final parameter agrees."""
  print(json.dumps({k: v for k, v in report.items() if k != "loss_values"}, indent=1))
  iters, lr = case["iters"], case["cfg"]["lr"]
  d_reg_every = case["cfg"].get("d_reg_every", 16)
  assert report["step"] == iters
  assert report["r1_steps"] == [i for i in range(iters) if i % d_reg_every == 0]
  assert set(report["losses"]) == set(LOSS_KEYS), report["losses"]
  for k, r in report["losses"].items():
    assert r <= RTOL_LOSS, (k, r)
  assert report["alpha_checks"] == 2 * iters  # D-step and A-step masks of every iteration
  assert report["alpha_max_abs"] <= ATOL_ALPHA
  # the test is only meaningful if the parameters actually moved
  assert report["d_param_moved"] > lr and report["alpha_param_moved"] > lr
  assert report["d_param_max_abs"] <= ATOL_PARAM
  assert report["alpha_param_max_abs"] <= ATOL_PARAM


# Active fg and bg coverage terms (alpha ~ 0.5 at init), truncation, large lr so parameters move.
BASE_CFG = dict(lr=2e-3, truncation=0.7, fg_coverage_value=0.6, bg_coverage_wt=2.0,
                bg_coverage_value=0.75, loss_multiplier=1.5, sat_weight=0.8)


@pytest.mark.slow
@pytest.mark.parametrize("name,case", [
    # one device: truncation, background_mode auto (= conv1), a non-default R1 quirk weight
    ("small", dict(SMALL, cfg=dict(BASE_CFG, r1_quirk_weight=0.5), iters=3)),
    # 4 emulated DDP devices (reference n_devices=4, local batch 2 each) = jax.shard_map over 2
    # devices x stddev_chunks=2; no truncation, background_mode "input" (the official 512 px G_bg)
    ("small_4dev", dict(SMALL, batch=8, cfg=dict(BASE_CFG, truncation=1.0, stddev_chunks=2,
                                                 background_mode="input"),
                        n_devices=4, shard_devices=2, iters=3, seed=3)),
    # 256 px, the official 6-level A (levels 8..256 px), narrow channels (8; 4 at 256 px) so that
    # it stays cheap; d_reg_every=1 puts R1 in both iterations (one compiled step, not two) and
    # checks a non-default lazy-regularisation Adam scaling (lr / 2, beta2 = 0.99 ** (1/2)).
    # r1=100 keeps the R1 term (weight r1/2 * d_reg_every) well above the quirk term, so that
    # r1_loss is not a near-cancellation whose relative error would be rounding noise.
    ("256px_narrow", dict(size=256, batch=2, style_dim=32, n_mlp=2, channel_multiplier=1,
                          channel_base=1024, channel_max=8, iters=2, seed=5,
                          cfg=dict(BASE_CFG, d_reg_every=1, r1=100.0, fg_coverage_value=0.7))),
])
def test_iterations_match_reference_float64(name, case):
  _check(_run_worker(case), case)


CASE_256 = dict(size=256, batch=2, style_dim=512, n_mlp=8, channel_multiplier=1, channel_base=None,
                channel_max=512, cfg=dict(BASE_CFG, lr=2e-4, fg_coverage_value=0.7), iters=3)


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("L4F_SLOW_TESTS") != "1",
                    reason="set L4F_SLOW_TESTS=1 (about 10 minutes on 2 cores)")
def test_iterations_match_reference_float64_256px():
  _check(_run_worker(CASE_256, timeout=7200), CASE_256)


def test_alpha_forward_matches_reference_float32():
  """End-to-end float32 forward: G features -> A masks (and composites) equal the reference's."""
  import jax
  import jax.numpy as jnp
  import torch
  from l4f_jax.method import step as S
  from l4f_jax.reference import torch_labels4free as tl

  case = dict(SMALL, batch=2)
  m = _build(case, "float32")
  tg, ta, models = m["tg"], m["ta"], m["models"]
  raw = _draw_inputs(np.random.default_rng(7), case, tg.num_layers)
  nchw = lambda x: torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).float()
  cfg = S.L4FConfig(truncation=0.7)
  with torch.no_grad():
    x_c, alpha, fg, bg = tl._composite(
        tg, ta, torch.from_numpy(raw["z_d"]).float(), [nchw(n) for n in raw["noise_fg_d"]],
        [nchw(n) for n in raw["noise_bg_d"]],
        dict(truncation=0.7, mean_latent=m["w_avg"], background_mode="auto"), with_grad=False)
  f32 = lambda t: jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), t)
  got = S.composite(f32(m["g_params"]), f32(m["alpha_params"]), jnp.asarray(m["w_avg"].numpy()),
                    f32(raw["z_d"]), f32(raw["noise_fg_d"]), f32(raw["noise_bg_d"]),
                    models=models, cfg=cfg)
  assert got[1].dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(got[1]), alpha.numpy().transpose(0, 2, 3, 1), rtol=0, atol=1e-5)
  np.testing.assert_allclose(np.asarray(got[0]), x_c.numpy().transpose(0, 2, 3, 1), rtol=0, atol=1e-4)


def test_stddev_chunks_equal_separate_calls():
  """discriminate(stddev_chunks=n) == D on each contiguous chunk; != one D call on the batch; several
  batches in one call are separate calls."""
  import jax
  import jax.numpy as jnp
  from l4f_jax.method import step as S
  from l4f_jax.models.stylegan2 import Discriminator

  d = Discriminator(16, channel_base=256, channel_max=16)
  x = jax.random.normal(jax.random.PRNGKey(0), (8, 16, 16, 3))
  p = jax.jit(d.init)(jax.random.PRNGKey(1), x)["params"]
  models = S.Models(None, None, d)

  @jax.jit
  def outputs(p, x):
    apply = lambda c: d.apply({"params": p}, c)
    two = S.L4FConfig(stddev_chunks=2)
    return dict(chunked=S.discriminate(p, x, models=models, cfg=two),
                pair=S.discriminate(p, x, x[::-1], models=models, cfg=two),
                one=S.discriminate(p, x, models=models, cfg=S.L4FConfig()),
                want=jnp.concatenate([apply(x[:4]), apply(x[4:])]),
                want_rev=jnp.concatenate([apply(x[::-1][:4]), apply(x[::-1][4:])]))

  o = jax.tree.map(np.asarray, outputs(p, x))
  np.testing.assert_allclose(o["chunked"], o["want"], atol=1e-6)
  np.testing.assert_allclose(o["pair"][0], o["want"], atol=1e-6)
  np.testing.assert_allclose(o["pair"][1], o["want_rev"], atol=1e-6)
  assert np.abs(o["one"] - o["want"]).max() > 1e-6


def test_make_optimizers_hyperparameters():
  import jax.numpy as jnp
  from l4f_jax.method import step as S
  tx_a, tx_d = S.make_optimizers(S.L4FConfig(lr=2e-4))
  # first Adam step with beta1 = 0 moves each element by lr * g / (|g| + eps) = lr * sign(g)
  for tx, lr in ((tx_a, 2e-4 * 4 / 5), (tx_d, 2e-4 * 16 / 17)):
    p = {"w": jnp.zeros(3)}
    g = {"w": jnp.array([1.0, -2.0, 0.5])}
    u, _ = tx.update(g, tx.init(p), p)
    np.testing.assert_allclose(np.asarray(u["w"]), -lr * np.sign([1.0, -2.0, 0.5]), rtol=1e-5)


def test_sample_inputs_independent_draws():
  import jax
  from l4f_jax.method import step as S
  from l4f_jax.models.stylegan2 import Generator
  g = Generator(32, style_dim=8, n_mlp=1, channel_base=256, channel_max=16)
  inp = jax.jit(S.sample_inputs, static_argnums=(1, 2))(jax.random.PRNGKey(0), 4, g)
  assert inp.z_d.shape == (4, 8) and len(inp.noise_fg_d) == 7
  assert inp.noise_fg_d[1].shape == (4, 8, 8, 1)
  assert not np.allclose(inp.z_d, inp.z_a)
  assert not np.allclose(inp.noise_fg_d[1], inp.noise_bg_d[1])
  assert not np.allclose(inp.noise_fg_d[1], inp.noise_fg_d[2])  # same resolution, own key
  assert not np.allclose(inp.noise_fg_d[0], inp.noise_fg_a[0])


if __name__ == "__main__":
  import jax
  jax.config.update("jax_enable_x64", True)
  jax.config.update("jax_default_matmul_precision", "highest")
  print(json.dumps(run_case(json.loads(sys.argv[1]))))
