"""Independent reference implementations, written from the upstream code (not from this package's code).

  torch_stylegan2     rosinality's StyleGAN2 in plain PyTorch (fused and non-fused modulated conv)
  torch_labels4free   the official Labels4Free alpha network, losses and one training iteration
  numpy_upfirdn2d     a NumPy transcription of upfirdn2d

They ship with the package because both the tests (parity) and `experiments.benchmark` (the PyTorch
side of the side-by-side timing) use them; nothing else in l4f_jax imports them. torch is optional:
it is imported only by the torch_* modules (install requirements-test.txt, the pinned CPU wheel).
"""
