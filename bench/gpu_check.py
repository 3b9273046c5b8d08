"""GPU check: the package's GPU path, measured in one run of a few minutes on one GPU.

Prints, in order:
1. the CUDA-marked unit tests (``pytest -m cuda``: AMP training, and the losses, k-means,
   OT matching and metrics on cuda against the CPU);
2. 2 epochs of the ``office-home`` preset (ResNet-50, AMP, batch 64 per domain) on a
   generated 224-px tree in the Office-Home layout (``Real World`` and ``Clipart``, random
   textured images: the figure is throughput, not accuracy): images/s of the warm-up epoch
   (L_IW) and of the epoch with every loss (its fresh-feature k-means included), against
   the roofline of the step, a bare torchvision ResNet-50 forward+backward of the query
   batch plus a forward of the key batch at the same batch size and precision;
3. the peak GPU memory of that training;
4. notebook 2 under nbmake (``UCDIR_SMOKE=1``), on the GPU (``device="auto"``).

``--dry-run`` runs the same code paths on the CPU at toy sizes (64-px images, 3 classes,
batch 4; the CUDA tests are skipped): CI runs it so that the script keeps working.

    python bench/gpu_check.py             # on a GPU machine: about 3-5 minutes
    python bench/gpu_check.py --dry-run   # anywhere
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from _common import machine_info, print_table  # noqa: E402

from ucdir_lite.config import get_preset  # noqa: E402
from ucdir_lite.train import train  # noqa: E402

DOMAINS = ("Real World", "Clipart")


def make_tree(root: Path, classes: int, per_class: int, size: int) -> Path:
    """An Office-Home-layout tree ``root/<domain>/<class>/<i>.jpg`` of random textures."""
    rng = np.random.default_rng(0)
    for domain in DOMAINS:
        for c in range(classes):
            folder = root / domain / f"class_{c:02d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i:03d}.jpg", quality=90)
    return root


def step(title: str) -> None:
    print(f"\n## {title}\n", flush=True)


def run(cmd: list[str], env: dict[str, str] | None = None) -> int:
    print("$", " ".join(cmd), flush=True)
    return subprocess.call(cmd, cwd=ROOT, env={**os.environ, **(env or {})})


def roofline(batch: int, size: int, device: torch.device, amp: bool, repeats: int) -> float:
    """Median seconds of the step's bare network work: ResNet-50 forward+backward of ``2 *
    batch`` query images and forward of ``2 * batch`` key images."""
    import torchvision

    net = torchvision.models.resnet50(weights=None).to(device, memory_format=torch.channels_last)
    x = torch.randn(2 * batch, 3, size, size, device=device).contiguous(
        memory_format=torch.channels_last)
    times = []
    for i in range(repeats + 2):  # two warm-up calls
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            net(x).float().sum().backward()
            with torch.no_grad():
                net(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= 2:
            times.append(time.perf_counter() - start)
    return float(np.median(times))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true",
                        help="the same code paths on the CPU at toy sizes (for CI)")
    args = parser.parse_args()
    cuda = torch.cuda.is_available() and not args.dry_run
    if not cuda and not args.dry_run:
        print("no CUDA GPU here: run with --dry-run, or on a GPU machine", file=sys.stderr)
        return 2
    device = torch.device("cuda" if cuda else "cpu")
    size, classes, per_class, batch = (224, 10, 64, 64) if cuda else (64, 3, 8, 4)
    print(f"# GPU check{' (dry run on the CPU)' if not cuda else ''}; "
          f"{machine_info(torch.get_num_threads())}")
    if cuda:
        print(f"# {torch.cuda.get_device_name(0)}, CUDA {torch.version.cuda}")
    failures = 0

    step("1. CUDA-marked unit tests")
    failures += run([sys.executable, "-m", "pytest", "-q", "-m", "cuda", "tests"]) != 0

    step(f"2. office-home preset, 2 epochs, ResNet-50, {size}-px images, batch {batch} per "
         "domain")
    with tempfile.TemporaryDirectory() as tmp:
        root = make_tree(Path(tmp) / "office_home", classes, per_class, size)
        cfg = get_preset(
            "office-home", data_root=str(root), image_size=size, batch_size=batch,
            epochs=2, warmup_epochs=1, se_start=1, dd_start=1, cw_ramp_epochs=0,
            num_clusters=classes, kmeans_restarts=1, ks=(1, 5), device=device.type,
            **({} if cuda else {"num_workers": 0}),
        )
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        result = train(cfg, None, progress=False)
        wall = time.perf_counter() - start
        peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
    bare = roofline(batch, size, device, amp=cuda, repeats=5 if cuda else 2)
    rows = []
    for entry in result.history:
        images = 2 * batch * entry["steps"]
        rows.append([f"epoch {entry['epoch']} ({entry['phase']})", entry["steps"],
                     images / entry["time_s"], entry["time_s"] / entry["steps"] * 1000])
    rows.append(["roofline: bare ResNet-50 fwd+bwd + key fwd", 1, 2 * batch / bare,
                 bare * 1000])
    print_table(["what", "steps", "images/s", "ms/step"], rows)
    print(f"\ntraining wall time {wall:.1f} s (data loading, model build and evaluation "
          f"included); step time / roofline: "
          f"{rows[0][3] / (bare * 1000):.2f} (warm-up), {rows[1][3] / (bare * 1000):.2f} "
          "(every loss, its k-means included)")

    step("3. peak GPU memory")
    print(f"{peak:.2f} GiB allocated at peak (torch.cuda.max_memory_allocated)" if cuda
          else "not measured (dry run on the CPU)")

    step("4. notebook 2 under nbmake" + (" on the GPU" if cuda else " (on the CPU)"))
    failures += run([sys.executable, "-m", "pytest", "-q", "--nbmake",
                     "notebooks/02_instance_wise.ipynb"], env={"UCDIR_SMOKE": "1"}) != 0

    print(f"\n# {'all passed' if not failures else f'{failures} step(s) FAILED'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
