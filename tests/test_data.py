"""Data preparation, the deterministic loader, picture helpers and the l4f_shapes dataset."""
import os
import sys

import numpy as np
import pytest
from PIL import Image

from l4f_jax.datasets import image_folder, shapes
from l4f_jax.io import images
from l4f_jax.system import data
from tests import cli_runner

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------------------- image folders


def _write_folder(root, size=16, n=10):
  """Known RGB PNGs at the target size (some nested), one corrupt file and one non-image."""
  rng = np.random.default_rng(0)
  arrays = {}
  for i in range(n):
    rel = f"sub/img{i}.png" if i % 3 == 0 else f"img{i}.png"
    a = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    os.makedirs(os.path.dirname(os.path.join(root, rel)), exist_ok=True)
    Image.fromarray(a).save(os.path.join(root, rel))
    arrays[rel] = a
  with open(os.path.join(root, "broken.jpg"), "wb") as f:
    f.write(b"not a jpeg")
  with open(os.path.join(root, "notes.txt"), "w") as f:
    f.write("ignored")
  return arrays


@pytest.fixture(scope="module")
def folder_dataset(tmp_path_factory):
  root = tmp_path_factory.mktemp("folder")
  arrays = _write_folder(str(root / "src"))
  result = image_folder.prepare_image_folder(root / "src", root / "datasets", "toy", 16)
  return arrays, result, root


def test_prepare_round_trip_pixel_exact(folder_dataset):
  arrays, result, _ = folder_dataset
  assert result["written"] == len(arrays) and result["skipped"] == 1 and not result["reused"]
  src, size = data.open_dataset(result["path"])
  assert size == 16 and len(src) == len(arrays)
  order = sorted(arrays, key=image_folder.natural_key)
  seen = set()
  for i in range(len(src)):
    rec = src[i]
    name = rec["filename"].decode() if isinstance(rec["filename"], bytes) else rec["filename"]
    assert order[int(rec["id"])] == name
    np.testing.assert_array_equal(rec["image"], arrays[name])
    seen.add(int(rec["id"]))
  assert seen == set(range(len(arrays)))


def test_prepare_is_idempotent_and_parent_dir_opens(folder_dataset):
  _, result, root = folder_dataset
  again = image_folder.prepare_image_folder(root / "src", root / "datasets", "toy", 16)
  assert again["reused"] and again["path"] == result["path"] and again["skipped"] == 1
  assert data.find_dataset_dir(root / "datasets" / "toy") == result["path"]


def test_resize_and_crop_semantics():
  a = np.arange(30 * 20 * 3, dtype=np.uint8).reshape(30, 20, 3)  # H=30, W=20
  out = image_folder.resize_and_crop(Image.fromarray(a), 10)
  want = Image.fromarray(a).resize((10, 15), Image.LANCZOS).crop((0, 2, 10, 12))
  assert out.size == (10, 10)
  np.testing.assert_array_equal(np.asarray(out), np.asarray(want))


def test_prepare_errors(tmp_path):
  os.makedirs(tmp_path / "empty")
  with pytest.raises(ValueError, match="--src=.*no image files"):
    image_folder.prepare_image_folder(tmp_path / "empty", tmp_path / "out", "x", 16)
  with pytest.raises(FileNotFoundError, match="--src=.*not a directory"):
    image_folder.prepare_image_folder(tmp_path / "missing", tmp_path / "out", "x", 16)
  with pytest.raises(ValueError, match="--name"):
    image_folder.prepare_image_folder(tmp_path / "empty", tmp_path / "out", "Bad-Name", 16)


def test_cli_empty_folder_one_line(tmp_path):
  os.makedirs(tmp_path / "empty")
  proc = cli_runner.run(
      [sys.executable, "-m", "experiments.prepare_data", f"--src={tmp_path / 'empty'}",
       "--name=x", "--size=16", f"--data_dir={tmp_path / 'out'}"],
      cwd=_REPO, timeout=120)
  assert proc.returncode == 2
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and "--src" in lines[0] and "Traceback" not in proc.stderr


def test_open_dataset_missing(tmp_path):
  with pytest.raises(FileNotFoundError, match="--dataset=.*prepare_data"):
    data.open_dataset(tmp_path / "nothing")
  os.makedirs(tmp_path / "empty")
  with pytest.raises(FileNotFoundError, match="--dataset=.*prepare_data"):
    data.open_dataset(tmp_path / "empty")


# ----------------------------------------------------------------------------- loader


class _FakeSource:
  """Random-access source: record i is an 8x8 image whose pixels encode i, with a ramp mask."""

  def __init__(self, n):
    self.n = n

  def __len__(self):
    return self.n

  def _rec(self, i):
    img = np.zeros((8, 8, 3), np.uint8)
    img[..., 0] = i % 256
    img[..., 1] = np.arange(8, dtype=np.uint8)[None, :] * 30  # horizontal ramp shows flips
    img[..., 2] = i // 256
    mask = np.zeros((8, 8, 1), np.uint8)
    mask[:, :4] = 255
    return {"image": img, "mask": mask, "id": i}

  def __getitems__(self, idx):
    return [self._rec(i) for i in idx]


def test_loader_determinism_and_resume():
  src = _FakeSource(103)
  a = data.Loader(src, 8, seed=7)
  assert a.steps_per_epoch == 12
  ran = {step: b for step, b in a.iterate(0, num_steps=30)}
  fresh = data.Loader(src, 8, seed=7)
  for step in (0, 11, 12, 29):
    b = fresh.batch(step)
    for k in ("image", "id", "flip", "mask"):
      np.testing.assert_array_equal(b[k], ran[step][k])
  resumed = dict(fresh.iterate(17, num_steps=5))
  for step in range(17, 22):
    np.testing.assert_array_equal(resumed[step]["image"], ran[step]["image"])
  other = data.Loader(src, 8, seed=8).batch(0)
  assert not np.array_equal(other["id"], ran[0]["id"])


def test_loader_epochs_drop_last():
  src = _FakeSource(50)
  ld = data.Loader(src, 8, seed=1)
  epoch0 = np.concatenate([ld.indices(s)[0] for s in range(6)])
  assert len(set(epoch0.tolist())) == 48  # 6 full batches, 2 dropped, no repeats
  epoch1 = np.concatenate([ld.indices(s)[0] for s in range(6, 12)])
  assert not np.array_equal(epoch0, epoch1)


def test_loader_host_split():
  src = _FakeSource(64)
  full = data.Loader(src, 8, seed=3)
  for step in (0, 5, 9):
    want = full.batch(step)
    parts = [data.Loader(src, 8, seed=3, process_index=p, process_count=4).batch(step)
             for p in range(4)]
    ids = np.concatenate([p["id"] for p in parts])
    assert all(len(p["id"]) == 2 for p in parts)
    assert len(set(ids.tolist())) == 8
    np.testing.assert_array_equal(ids, want["id"])
    np.testing.assert_array_equal(np.concatenate([p["image"] for p in parts]), want["image"])
  with pytest.raises(ValueError, match="divisible"):
    data.Loader(src, 6, process_index=0, process_count=4)


def test_loader_flip_and_scaling():
  src = _FakeSource(64)
  ld = data.Loader(src, 16, seed=0)
  flips = np.concatenate([ld.batch(s)["flip"] for s in range(4)])
  assert 0 < flips.sum() < len(flips)
  b = ld.batch(0)
  assert b["image"].dtype == np.float32 and b["image"].shape == (16, 8, 8, 3)
  for j, i in enumerate(b["index"]):
    raw = src._rec(int(i))
    want = raw["image"][:, ::-1] if b["flip"][j] else raw["image"]
    np.testing.assert_array_equal(b["image"][j], want.astype(np.float32) / 127.5 - 1)
    wmask = raw["mask"][:, ::-1] if b["flip"][j] else raw["mask"]
    np.testing.assert_array_equal(b["mask"][j], wmask / 255.0)
  assert b["image"].min() >= -1 and b["image"].max() <= 1
  noflip = data.Loader(src, 16, seed=0, flip=False).batch(0)
  assert not noflip["flip"].any()
  np.testing.assert_array_equal(noflip["id"], b["id"])


def test_loader_on_prepared_dataset(folder_dataset):
  _, result, _ = folder_dataset
  src, _ = data.open_dataset(result["path"])
  ld = data.Loader(src, 4, seed=0)
  b = ld.batch(1)
  assert b["image"].shape == (4, 16, 16, 3) and len(set(b["id"].tolist())) == 4


def test_iterate_closes_thread():
  import threading  # pylint: disable=import-outside-toplevel
  before = threading.active_count()
  it = data.Loader(_FakeSource(32), 4).iterate(3)
  assert next(it)[0] == 3 and next(it)[0] == 4
  it.close()
  assert threading.active_count() == before


# ----------------------------------------------------------------------------- pictures


def test_to_uint8_and_grid(tmp_path):
  np.testing.assert_array_equal(images.to_uint8(np.array([-1.0, 0.0, 1.0, 3.0]), mask=False),
                                [0, 128, 255, 255])
  np.testing.assert_array_equal(images.to_uint8(np.array([0.0, 0.5, 1.0]), mask=True),
                                [0, 128, 255])
  img = np.zeros((3, 8, 8, 3), np.float32)
  alpha = np.ones((2, 8, 8, 1), np.float32)
  grid = images.make_grid([img, alpha], pad=2)
  assert grid.shape == (2 + 2 * 10, 2 + 3 * 10, 3)
  assert grid[2, 2].tolist() == [128, 128, 128] and grid[12, 2].tolist() == [255, 255, 255]
  out = images.save_grid(tmp_path / "g" / "grid.png",
                         {"background": img, "image": img, "alpha": alpha}, labels=True)
  assert np.array_equal(np.asarray(Image.open(tmp_path / "g" / "grid.png")), out)
  assert [k for k, _ in images.grid_rows({"background": 0, "image": 0, "alpha": 0})] == [
      "image", "alpha", "background"]
  images.save_png(tmp_path / "m.png", np.array([[True, False]]))
  np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "m.png")), [[255, 0]])
  assert [p.name for p in (tmp_path).iterdir() if p.name.startswith(".tmp")] == []


# ----------------------------------------------------------------------------- l4f_shapes


def test_shapes_render_deterministic():
  a, ma = shapes.render_example([0, 5], 64)
  b, mb = shapes.render_example([0, 5], 64)
  c, _ = shapes.render_example([0, 6], 64)
  assert a.dtype == np.uint8 and a.shape == (64, 64, 3) and ma.dtype == bool
  np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(ma, mb)
  assert not np.array_equal(a, c)


def test_shapes_oracle_agreement():
  agree, cover = [], []
  for i in range(200):
    img, mask = shapes.render_example([0, i], 64)
    agree.append(np.mean(shapes.oracle_mask(img) == mask))
    cover.append(mask.mean())
  assert np.mean(agree) >= 0.99 and np.min(agree) >= 0.98
  assert 0.14 <= np.min(cover) and np.max(cover) <= 0.51
  # Float [-1, 1] inputs (GAN samples) give the same answer.
  f = img.astype(np.float32) / 127.5 - 1
  np.testing.assert_array_equal(shapes.oracle_mask(f), shapes.oracle_mask(img))


def test_shapes_colour_rule_margins():
  rng = np.random.default_rng(123)
  for _ in range(100):
    bg = shapes._background(rng, 32)  # pylint: disable=protected-access
    assert not shapes.oracle_mask(np.floor(bg * 255 + 0.5).astype(np.uint8)).any()
    cov, u, v = shapes._shape_coverage(rng, 32)  # pylint: disable=protected-access
    fg = shapes._foreground(rng, u, v)  # pylint: disable=protected-access
    assert shapes.oracle_mask(np.floor(fg * 255 + 0.5).astype(np.uint8)).all()
    assert cov.min() >= 0 and cov.max() <= 1


def test_shapes_dataset(tmp_path):
  path = shapes.prepare_shapes(tmp_path, size=32, num_examples=24, seed=3)
  assert shapes.prepare_shapes(tmp_path, size=32, num_examples=24, seed=3) == path
  src, size = data.open_dataset(path)
  assert size == 32 and len(src) == 24
  ids = set()
  for i in range(len(src)):
    rec = src[i]
    img, mask = shapes.render_example([3, int(rec["id"])], 32)
    np.testing.assert_array_equal(rec["image"], img)
    np.testing.assert_array_equal(rec["mask"][..., 0], mask.astype(np.uint8) * 255)
    ids.add(int(rec["id"]))
  assert ids == set(range(24))


def test_prepare_shapes_names_an_existing_dataset_of_another_size(tmp_path, caplog):
  """--prepare_shapes builds only a missing dataset; asking for another size of an existing one
  says which one is used instead of silently training on it."""
  root = str(tmp_path / "l4f_shapes")
  shapes.ensure_shapes(root, 16, 4)
  assert [n for n in sorted(os.listdir(root)) if n[0] != "."] == [shapes.config_name(16, 4, 0)]
  with caplog.at_level("WARNING"):
    shapes.ensure_shapes(root, 16, 4)
  assert "ignored" not in caplog.text
  with caplog.at_level("WARNING"):
    shapes.ensure_shapes(root, 16, 8)
  assert "16px_n4_seed0, which is used" in caplog.text and "16px_n8_seed0" in caplog.text
  assert [n for n in sorted(os.listdir(root)) if n[0] != "."] == [shapes.config_name(16, 4, 0)]
