"""The command-line programs (`python -m experiments.<name>`): thin CLIs over `l4f_jax`.

Importing this package installs the one interrupt path of every CLI (`l4f_jax.system.interrupts`)
before a program imports jax, so that Ctrl-C during the imports ends with one line too.
"""
from l4f_jax.system import interrupts as _interrupts

_interrupts.install()
