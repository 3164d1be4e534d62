"""Peak memory of each side: every case runs in a fresh Python process, which reports its
resident-set high-water mark (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) after the
workload, and the RSS it had after imports and setup (data, model), so that the growth
due to the workload itself can be read off. On CUDA also ``torch.cuda.max_memory_allocated``.

Cases (same network, Fashion-MNIST):

* ``iwae_vaeood``: ``iwae(model, x, k=K)`` on ``--iwae-images`` (20) images, one batch,
  default chunking: chunks of ``max_elements // (B * elements_per_sample)`` samples
  (``2**22`` elements of the decoder's allocations: ~410 decoded (image, sample) pairs
  whatever the batch), so this is the footprint of ``vaeood score`` on a CPU;
* ``iwae_pythae_onebatch`` / ``iwae_pythae_bs100``: ``get_nll(x, n_samples=K,
  batch_size=K or 100)`` on ``--pythae-images`` (3) images (it goes one image at a time,
  so its footprint does not depend on how many);
* ``train_bare`` / ``train_vaeood`` / ``train_pythae``: one epoch on ``--train-images``;
* ``elbo_bare`` / ``elbo_vaeood``: ELBO of the 10,000 test images in batches of 1000.

    python benchmarks/memory.py [--k 1000] [--train-images 10000] [--device cpu]
    python benchmarks/memory.py --case iwae_vaeood      # one case, prints one JSON line
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import common

CASES = ["iwae_vaeood", "iwae_pythae_onebatch", "iwae_pythae_bs100",
         "train_bare", "train_vaeood", "train_pythae", "elbo_bare", "elbo_vaeood"]


def _rss_now_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def run_case(case: str, a) -> dict:
    import torch

    device = torch.device(a.device)
    if case.startswith("iwae_pythae") or case == "train_pythae":
        common.quiet_pythae()
    split = "train" if case.startswith("train") else "test"
    limit = {"train": a.train_images, "elbo": 10000}.get(case.split("_")[0], a.iwae_images)
    if case.startswith("iwae_pythae"):
        limit = a.pythae_images
    x, _ = common.load_images("fashion_mnist", split, limit)
    x = x.to(device)
    model = common.vaeood_model(0).to(device)
    if case.startswith("iwae") or case.startswith("elbo"):
        model.eval()
        if case.endswith("vaeood"):  # as score() loads conv models
            model.to(memory_format=torch.channels_last)
    setup = _rss_now_mib()
    start = time.perf_counter()
    if case == "iwae_vaeood":
        from vaeood.inference.estimators import iwae

        with torch.no_grad():
            iwae(model, x, k=a.k)
    elif case.startswith("iwae_pythae"):
        twin = common.pythae_twin(model).eval()
        bs = a.k if case.endswith("onebatch") else min(100, a.k)
        with torch.no_grad():
            twin.get_nll(x.float() / 255.0, n_samples=a.k, batch_size=bs)
    elif case == "elbo_vaeood":
        from vaeood.inference.estimators import elbo

        with torch.no_grad():
            for i in range(0, len(x), 1000):
                elbo(model, x[i: i + 1000])
    elif case == "elbo_bare":
        with torch.no_grad():
            for i in range(0, len(x), 1000):
                common.bare_neg_elbo(model.encoder, model.decoder, x[i: i + 1000])
    elif case.startswith("train_"):
        import train_speed

        side = {"train_bare": train_speed.run_bare, "train_vaeood": train_speed.run_vaeood,
                "train_pythae": train_speed.run_pythae}[case]
        side(argparse.Namespace(images=a.train_images, epochs=1, batch_size=128, device=a.device, arch="conv",
                                dataset="fashion_mnist", split="train"), 0)
    else:
        raise SystemExit(f"unknown case {case!r}; cases: {', '.join(CASES)}")
    out = {"case": case, "seconds": time.perf_counter() - start, "rss_after_setup_mib": setup,
           "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}  # kB on Linux
    out["peak_growth_mib"] = out["peak_rss_mib"] - setup
    if device.type == "cuda":
        out["cuda_max_allocated_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


def main(argv=None) -> dict:
    a = common.parser(__doc__, case=(None, f"one case in this process: {', '.join(CASES)}"),
                      cases=(",".join(CASES), "comma-separated subset (driver mode)"),
                      k=1000, iwae_images=20, pythae_images=3, train_images=10000).parse_args(argv)
    if a.case:
        print(json.dumps(run_case(a.case, a)))
        return {}
    info = common.machine_info(a.device)
    rows = []
    for case in a.cases.split(","):
        try:
            row = common.in_fresh_process(__file__, argv, "--case", case)
        except RuntimeError as err:
            rows.append({"case": case, "error": str(err)})
            print(f"{case}: FAILED {err}")
            continue
        rows.append(row)
        print(f"{case:22s} peak RSS {row['peak_rss_mib']:7.0f} MiB  (after setup {row['rss_after_setup_mib']:5.0f},"
              f" growth {row['peak_growth_mib']:6.0f})")
    return common.finish("memory", {"machine": info, "k": a.k, "iwae_images": a.iwae_images,
                                    "pythae_images": a.pythae_images, "train_images": a.train_images,
                                    "cases": rows}, a.out)


if __name__ == "__main__":
    main()
