"""vaeood detect on a folder of PNG files, end to end: images per second of wall time,
start-up included, with the recommended detector (``--detector NAME`` for another).

For each case a model is made by ``vaeood fit`` (a few epochs: the throughput does not
depend on how well it is trained), a folder of ``--images`` PNG files is written, and
``vaeood detect MODEL FOLDER --out X.csv`` runs ``--rounds`` times, each in a new process
as a user runs it; the first round is reported apart (it may read the files from disk).

* ``grey28``: Fashion-MNIST training → the Fashion-MNIST test images (28×28 grey);
* ``rgb32``: CIFAR-10 training → Tiny ImageNet at 32×32 (RGB);
* ``rgb64``: the 5,000 Tiny ImageNet photos of ``tinyimagenet64/train`` (64×64, grey ones
  among them, fitted with no flags) → its ``val`` photos written as RGB PNGs.

Goals: ≥ 500 images/s for grey28 and ≥ 200 for rgb32 (issue 21, for ``fused``), ≥ 100
for rgb64 with the recommended ``fused_content`` (issue 38; 300 for ``fused`` alone) on 2 CPU
cores.

    python benchmarks/detect_throughput.py --images 10000 --rounds 3
    python benchmarks/detect_throughput.py --cases rgb64 --images 2000 --detector fused
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from common import finish, machine_info, parser

CASES = {"grey28": ("fashion_mnist", "fashion_mnist", "test", 500),
         "rgb32": ("cifar10", "tinyimagenet", "test", 200),
         "rgb64": ("tinyimagenet64/train", "tinyimagenet64/val", None, 100)}


def _vaeood(*args: str, env: dict) -> float:
    """Run ``vaeood ARGS`` in a new process; its wall time in seconds."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "vaeood.cli", *args], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"vaeood {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return wall


def _write_folder(folder: Path, name: str, split: str | None, n: int) -> int:
    """``n`` images of a dataset split, or (``split`` None) of the photos under the data folder's
    ``name`` (class subfolders, converted to RGB), as PNG files in ``folder``."""
    from vaeood.data import load_dataset

    if split is None:
        files = sorted(Path(os.environ["VAEOOD_DATA"], name).rglob("*.JPEG"))[:n]
        images = [np.asarray(Image.open(f).convert("RGB")) for f in files]
    else:
        images = load_dataset(name, split).images[:n]
    folder.mkdir(parents=True)
    for i, img in enumerate(images):
        Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(folder / f"{i:06d}.png")
    return len(images)


def main() -> None:
    p = parser(__doc__, images=(10000, "PNG files to decide on per case"), rounds=3,
               epochs=(2, "training epochs of each model"), cases=(list(CASES), "which cases"),
               detector=("", "the detector `vaeood fit` calibrates (default: the recommended one)"),
               backbone=("", "`vaeood fit --backbone` (default: the detector's own)"))
    p.add_argument("--omp-wait-policy", choices=["passive", "default"], default="passive",  # as run_all.py's
                   help="passive (as every benchmark: robust when other jobs share the cores, slower on a quiet "
                        "machine) or default (OpenMP's own, as a user's shell has it)")
    args = p.parse_args()
    if not os.environ.get("VAEOOD_DATA"):
        raise SystemExit("set VAEOOD_DATA to a folder holding fashion_mnist, cifar10 and tinyimagenet (.npz) and "
                         "tinyimagenet64/")
    env = dict(os.environ)
    if args.omp_wait_policy == "passive":
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    else:
        env.pop("OMP_WAIT_POLICY", None)
    results, lines = {}, []
    with tempfile.TemporaryDirectory() as tmp:
        for case in args.cases:
            train_on, test_on, split, goal = CASES[case]
            goal = 300 if (case, args.detector) == ("rgb64", "fused") else goal  # issue 33's figure for fused alone
            model, folder = Path(tmp) / f"{case}-model", Path(tmp) / f"{case}-png"
            source = str(Path(os.environ["VAEOOD_DATA"], train_on)) if "/" in train_on else train_on
            chosen = ["--detector", args.detector] if args.detector else []
            chosen += ["--backbone", args.backbone] if args.backbone else []
            fit_s = _vaeood("-q", "fit", source, "--out", str(model), f"--train.epochs={args.epochs}", *chosen, env=env)
            n = _write_folder(folder, test_on, split, args.images)
            walls = [_vaeood("-q", "detect", str(model), str(folder), "--out", str(Path(tmp) / f"{case}-{r}.csv"),
                             env=env) for r in range(args.rounds)]
            warm = walls[1:] or walls
            rate = n / statistics.median(warm)
            startup = min(_vaeood("--help", env=env) for _ in range(3))
            results[case] = {"images": n, "train": train_on, "decide_on": f"{test_on}/{split or ''}",
                             "fit_seconds": round(fit_s, 1), "detect_seconds": [round(w, 2) for w in walls],
                             "images_per_s": round(rate, 1), "first_round_images_per_s": round(n / walls[0], 1),
                             "startup_seconds": round(startup, 2), "goal_images_per_s": goal, "met": rate >= goal}
            lines.append(f"{case}: {n} PNGs of {test_on}/{split or ''} under a model of {train_on}: "
                         f"{rate:.0f} images/s (median of rounds 2-{args.rounds}; first {n / walls[0]:.0f}; "
                         f"start-up {startup:.1f} s) — goal ≥ {goal}: {'met' if rate >= goal else 'NOT met'}")
    detector = args.detector or "recommended (fused_content)"
    finish("detect_throughput", {"machine": machine_info("cpu"), "detector": detector,
                                 "backbone": args.backbone or "the detector's default",
                                 "omp_wait_policy": env.get("OMP_WAIT_POLICY", "OpenMP default"), "cases": results},
           args.out, *lines)


if __name__ == "__main__":
    main()
