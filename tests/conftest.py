import os

import pytest
import torch

# Float sums (matrix products, convolutions) depend on the thread count, so the suite pins it:
# OMP_NUM_THREADS when set (`make unit-matrix` runs 1 and 2), else 1. Tests that compare runs
# bit for bit run them on the same count; see tests/_tolerances.py for the others.
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))


@pytest.fixture(scope="module")
def env(tmp_path_factory, request):
    """Generated smoke data in a temporary folder of the test module, and no inherited run
    cache (``UCDIR_RUNS`` unset): the modules that train pass their own ``cache_dir``."""
    root = tmp_path_factory.mktemp(request.module.__name__.removeprefix("test_"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("UCDIR_DATA", str(root / "data"))
        mp.delenv("UCDIR_RUNS", raising=False)
        yield root
