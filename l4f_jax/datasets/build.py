"""The one way this project builds a tfds dataset: `build(builder, manual_dir=...)`.

Every builder here generates its examples locally (nothing is downloaded), so the download step
gets a throw-away folder. tfds prints "Downloading and preparing dataset ..." and "... downloaded
and prepared ..." to stdout and draws tqdm bars on stderr, which would interleave with the
programs' own progress lines; both are silenced here (the callers log one line of their own).
"""
from __future__ import annotations

import contextlib
import io
import tempfile
from typing import Optional


def build(builder, manual_dir: Optional[str] = None, tmp_parent: Optional[str] = None) -> None:
  """`builder.download_and_prepare` with no downloads, quietly; `manual_dir` is handed to the
  builder's `_split_generators` (a source folder), `tmp_parent` holds the throw-away folder."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel  # slow import
  tfds.display_progress_bar(False)
  with tempfile.TemporaryDirectory(dir=tmp_parent) as dl, \
      contextlib.redirect_stdout(io.StringIO()):
    builder.download_and_prepare(download_dir=dl, download_config=tfds.download.DownloadConfig(
        manual_dir=manual_dir, try_download_gcs=False))
