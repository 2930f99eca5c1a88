"""The programs: library loops that the CLIs in experiments/ (and the tests) call, each
over the runtime in l4f_jax.system. A program imports no other program, except the pipeline,
whose job is to run them.
"""
