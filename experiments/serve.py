r"""A local page and HTTP API to try a trained student.

  python -m experiments.serve --segmenter=workspace/runs/shapes/segmenter [--port=8000]

Open the printed address: choose or drop images, see original / mask / cut-out side by side and
download them. The API: `curl --data-binary @photo.jpg -H 'Content-Type: image/jpeg'
http://127.0.0.1:8000/api/segment -o mask.png` (?output=mask|alpha|cutout, ?fit=pad|crop|stretch);
GET /api/info describes the model and the limits. Binds 127.0.0.1 unless --host says otherwise.
--segmenter takes a segmenter directory or an exported artifact. Ctrl-C stops it. The flags are
the fields of `l4f_jax.programs.serve.ServeConfig`.
"""
from __future__ import annotations

import functools

from l4f_jax.config import define_flags, from_flags
from l4f_jax.system import cli
from l4f_jax.programs.serve import ServeConfig, serve

define_flags(ServeConfig)


@cli.main("serve")
def main(argv):
  del argv
  serve(from_flags(ServeConfig), ready=functools.partial(print, flush=True))


if __name__ == "__main__":
  cli.run(main)
