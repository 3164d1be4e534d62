"""Run-to-run reproducible CPU arithmetic, set when vaeood is imported.

Intel MKL chooses its kernels by each buffer's memory alignment unless told not to, so one
training config took one of two floating-point trajectories from the first epoch on (the
Fashion-MNIST conv VAE at latent 32, two threads, an Intel Xeon: 6 of 10 runs one, 4 the
other). With MKL's conditional numerical reproducibility in STRICT mode 8 runs of 8 agreed
(docs/findings.md, "Near-OOD"). MKL reads ``MKL_CBWR`` at its first call, so this module is
imported before anything in vaeood imports torch; a value the user set wins. It does not make
results agree across CPU models or vendors: the report's stamp names the CPU for that.
"""

import os

os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")
