import os

import torch

# Float sums (matrix products, convolutions) depend on the thread count, so the suite pins it:
# OMP_NUM_THREADS when set (`make unit-matrix` runs 1 and 2), else 1. Tests that compare runs
# bit for bit run them on the same count; see tests/_tolerances.py for the others.
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
