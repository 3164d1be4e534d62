"""Peak memory of ``vaeood detect`` (or ``fit``, ``train``: ``--command``) on a folder of N and of
10×N 64×64 RGB PNG files: does it grow with the folder? ``detect`` streams a folder in chunks
of 2,048 images (:class:`vaeood.data.inputs.FolderStream`), so its peak resident set should not
grow with the number of images beyond the per-image results (names, scores). ``fit`` decodes
the folder chunk by chunk into a memory-mapped file of the run (:mod:`vaeood.data.folder_cache`)
and trains from it a batch at a time, giving the pages read back every 8 batches.

A model is made once by ``vaeood fit`` (one epoch on ``--train`` generated photos: the
memory does not depend on how well it is trained); then ``vaeood detect MODEL FOLDER``
runs in a new process on each folder (with ``--command fit``: ``vaeood fit FOLDER``, one
epoch, on each folder, no model made first; ``--command train``: ``vaeood train`` of fit's model,
without the held-out split and the detector), and reports its resident-set high-water mark
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``). The photos are smooth random images
(a random 8×8 RGB image resized to 64×64), so that PNG decoding costs what a photo's does.

Goal (issue 33): peak RSS on 10×N images ≤ 1.5× that on N (there: 10,000 and 100,000).

    python benchmarks/detect_memory.py --images 2000
    python benchmarks/detect_memory.py --command fit --images 1000
    python benchmarks/detect_memory.py --command train --images 1000
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from common import finish, machine_info, parser

#: what vaeood fit trains on a folder of 64×64 photos, without the held-out split and the detector
_FIT_MODEL = ["--data.conform=resize", "--model.arch=conv", "--model.likelihood=dlogistic", "--train.epochs=1"]
_REPORT = ("import resource, sys; from vaeood.cli import main; rc = main(sys.argv[1:]); "
           "print('maxrss_kb', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr); sys.exit(rc)")


def _photos(folder: Path, n: int, seed: int) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        small = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
        small.resize((64, 64), Image.Resampling.BILINEAR).save(folder / f"{i:06d}.png")


def _vaeood(*args: str) -> tuple[float, int]:
    """Run ``vaeood ARGS`` in a new process: its wall time in seconds and peak RSS in kB."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", _REPORT, *args], capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"vaeood {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    line = [w for w in done.stderr.splitlines() if w.startswith("maxrss_kb")][-1]
    return wall, int(line.split()[1])


def main() -> None:
    args = parser(__doc__, images=(2000, "PNG files of the smaller folder (the larger has 10×)"),
                  train=(400, "generated photos the model is fitted on (detect)"),
                  command=("detect", "the command measured: detect, fit or train (one epoch)")).parse_args()
    if args.command not in ("detect", "fit", "train"):
        raise SystemExit(f"--command {args.command}: expected detect, fit or train")
    rows, lines = {}, []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if args.command == "detect":
            _photos(root / "train", args.train, 0)
            _vaeood("-q", "fit", str(root / "train"), "--out", str(root / "model"), "--train.epochs=1")
        for n in (args.images, 10 * args.images):
            _photos(root / f"n{n}", n, n)
            command = {"detect": ["detect", str(root / "model"), str(root / f"n{n}"), "--out", str(root / f"n{n}.csv")],
                       "fit": ["fit", str(root / f"n{n}"), "--out", str(root / f"m{n}"), "--train.epochs=1"],
                       "train": ["train", str(root / f"m{n}"), f"--data.name={root / f'n{n}'}/", *_FIT_MODEL]
                       }[args.command]
            wall, kb = _vaeood("-q", *command)
            rows[n] = {"peak_rss_mb": round(kb / 1024, 1), "seconds": round(wall, 1)}
            lines.append(f"{args.command} on {n} 64×64 PNGs: peak RSS {kb / 1024:.0f} MB ({wall:.0f} s)")
    small, large = rows[args.images]["peak_rss_mb"], rows[10 * args.images]["peak_rss_mb"]
    ratio = large / small
    lines.append(f"ratio 10×N / N: {ratio:.2f} (goal ≤ 1.5: {'met' if ratio <= 1.5 else 'NOT met'})")
    finish(f"{args.command}_memory", {"machine": machine_info("cpu"), "detector": "recommended (fused_content)",
                             "cases": rows, "ratio": round(ratio, 3), "met": ratio <= 1.5}, args.out, *lines)


if __name__ == "__main__":
    main()
