"""Run every benchmark (each in its own process, ``benchmarks/NAME.py ARGS``; the exact
command is stored in its JSON and shown under its table), write ``benchmarks/results/
*.json`` and rewrite the generated blocks of ``BENCHMARKS.md``. Data: ``$VAEOOD_DATA``,
else the small bundled sample, which the tables flag.

    python benchmarks/run_all.py                    # default preset, ~10 min on 2 idle CPU cores
    python benchmarks/run_all.py --preset quick     # ~3 min, fewer images and rounds
    python benchmarks/run_all.py --preset cuda      # on a GPU machine
    python benchmarks/run_all.py --only iwae_speed,flops
    python benchmarks/run_all.py --tables-only      # rewrite BENCHMARKS.md from the JSON files

The benchmarks run with ``OMP_WAIT_POLICY=PASSIVE`` unless the variable is set or
``--omp-wait-policy default`` is given: with the OpenMP default, threads spin at barriers
and a 2-thread process on 2 cores slows by up to ~20x, unevenly, once another process
takes a core.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"
MARKDOWN = REPO / "BENCHMARKS.md"
# BENCHMARKS.md holds two generated blocks: the goals (first thing in the file), then the tables
BLOCKS = ("goals", "tables")


def markers(block: str) -> tuple[str, str]:
    return f"<!-- BEGIN GENERATED {block} by benchmarks/run_all.py -->", f"<!-- END GENERATED {block} -->"

PRESETS = {
    "quick": {
        "flops": ["--reps", "3"],
        "train_speed": ["--images", "5000", "--epochs", "1", "--rounds", "3", "--bf16"],
        "train_speed_fresh": ["--images", "5000", "--epochs", "1", "--rounds", "3", "--bf16", "--fresh-processes"],
        "hvae_train_speed": ["--arch", "hvae", "--no-pythae", "--images", "2000", "--epochs", "1", "--rounds", "3"],
        "train_overhead": ["--steps", "20", "--rounds", "3"],
        "iwae_speed": ["--images", "6", "--rounds", "3", "--train-images", "5000", "--train-epochs", "1"],
        "elbo_speed": ["--images", "5000", "--rounds", "3"],
        "memory": ["--train-images", "3000"],
        "layer_speed": ["--reps", "3"],
        "objective_cost": ["--images", "2000", "--epochs", "1", "--repeats", "1"],
    },
    "default": {
        "flops": [],
        "train_speed": ["--images", "20000", "--epochs", "2", "--rounds", "3", "--bf16"],
        "train_speed_fresh": ["--images", "20000", "--epochs", "2", "--rounds", "5", "--bf16", "--fresh-processes"],
        "hvae_train_speed": ["--arch", "hvae", "--no-pythae", "--images", "5000", "--epochs", "1", "--rounds", "7"],
        "train_overhead": ["--steps", "40", "--rounds", "7"],
        "iwae_speed": ["--images", "20", "--rounds", "5"],
        "elbo_speed": ["--rounds", "7"],
        "memory": [],
        "layer_speed": ["--reps", "7"],
        "objective_cost": [],
    },
    # one GPU: its own set (results in results/cuda/), sized for minutes on an H100; the
    # 100-epoch paper_train_time alone takes ~7 min there
    "cuda": {
        "gpu_agreement": [],
        "iwae_speed": ["--images", "200", "--rounds", "3"],
        "iwae_settings": [],
        "train_speed": ["--images", "30000", "--epochs", "2", "--rounds", "3"],
        "train_overhead": ["--steps", "200", "--rounds", "5"],
        "paper_train_time": ["--tile-to", "50000", "--variants", "", "compile=true"],
    },
}
# the sides the scripts measure (results of 2026-11-25 also hold the sides of prototypes since
# deleted or made the library's behaviour: `git show 73f2c07:benchmarks/prototypes.py`)
SIDES = ("bare", "vaeood", "vaeood_bf16", "vaeood_score", "pythae", "pythae_onebatch", "pythae_bs100")
SCRIPTS = {"train_speed_fresh": "train_speed", "hvae_train_speed": "train_speed"}  # another script's mode


def run_benchmarks(names: list[str], preset: str, device: str, env: dict) -> list[str]:
    """Run each benchmark in its own process; return the names of those that failed."""
    failed = []
    for name in names:
        script, args = SCRIPTS.get(name, name), list(PRESETS[preset][name])
        if device != "cpu":  # GPU results go to results/cuda/ (every script takes --device and --out)
            args += ["--device", device, "--out", f"benchmarks/results/cuda/{name}.json"]
        print(f"\n=== {name}: {' '.join(['python', f'benchmarks/{script}.py', *args])}", flush=True)
        start = time.perf_counter()
        code = subprocess.run([sys.executable, str(HERE / f"{script}.py"), *args], cwd=REPO, env=env).returncode
        failed += [name] if code else []
        print(f"=== {name}: {f'FAILED ({code})' if code else 'ok'} in {time.perf_counter() - start:.0f} s", flush=True)
    return failed


# -- tables -----------------------------------------------------------------------------
def _load(name: str, folder: Path = RESULTS) -> dict | None:
    try:
        return json.loads((folder / f"{name}.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _machine(r: dict) -> str:
    m = r.get("machine")
    if isinstance(m, dict):
        env = ", ".join(f"{k}={v}" for k, v in (m.get("env") or {}).items())
        load = m.get("load_average_at_start")
        gpu = f", {m['gpu']}" if m.get("gpu") else ""
        details = f" [{m['cpu_details']}]" if m.get("cpu_details") else ""
        return (f"{m.get('cpu')}{details} ({m.get('physical_cores')} cores / {m.get('logical_cpus')} threads, "
                f"torch threads {m.get('torch_threads')}{', ' + env if env else ''}{gpu}); "
                f"load avg {load[0] if load else '?'} at start · torch {m.get('torch')} · {m.get('date')}")
    return f"{m} ({r.get('threads')} torch threads) · torch {r.get('torch')} · {r.get('date')}"


def _cmd(r: dict) -> str:
    return f"`{r['command']}`" if r.get("command") else "see the benchmark's docstring"


def _source(r: dict) -> list[str]:
    """The line under a table: the command that made it, and where."""
    return [f"Measured by {_cmd(r)} on {_machine(r)}.", ""]


def _f(v, digits=0, pct=False) -> str:
    if v is None:
        return "–"
    return f"{100 * v:.{digits}f}%" if pct else f"{v:,.{digits}f}"


def _table(header, rows) -> list[str]:
    return ["| " + " | ".join(str(c) for c in cells) + " |" for cells in (header, ["---"] * len(header), *rows)]


def _data_note(r: dict) -> str:
    return " **(bundled sample: smoke numbers only)**" if "sample" in str(r.get("data", "")) else ""


def _ratio(r: dict, a: str, b: str):
    return 1.0 if a == b else r.get(f"{a}/{b}")


def _x(v, digits=2) -> str:
    return "–" if v is None else f"{v:.{digits}f}×"


def _met(value: float, goal: float) -> str:
    return "yes" if value >= goal else "**no**"


PEAK_HDR = ["GFLOP/s", "% of torch.mm peak", "% of oneDNN GEMM peak"]


def _peak_cells(fr: dict | None) -> list[str]:
    if not fr:
        return ["–", "–", "–"]
    return [f"{fr['achieved_gflops']:.1f}", _f(fr.get("mm"), 0, pct=True), _f(fr.get("onednn"), 0, pct=True)]


def _rss(memory: dict | None):
    cases = {c["case"]: c for c in (memory or {}).get("cases", []) if "peak_rss_mib" in c}

    def cell(case: str) -> str:
        c = cases.get(case)
        return f"{c['peak_rss_mib']:,.0f} (+{c['peak_growth_mib']:,.0f})" if c else "–"
    return cell


def iwae_table(iw: dict, rss, level: str) -> tuple[list, list[str]]:
    ips, k, best = iw["images_per_s"], iw["k"], iw.get("pythae_best", "pythae_onebatch")
    label = {"vaeood": f"vaeood `iwae(model, x, k={k})`, batches of {iw['vaeood_batch_size']} (as `score`)",
             "pythae_onebatch": f"pythae 0.1.2 `get_nll(x, n_samples={k}, batch_size={k})`",
             "pythae_bs100": f"pythae 0.1.2 `get_nll(x, n_samples={k}, batch_size=100)` (its default)"}
    rows = [[label[n], _f(v, 2), _x(_ratio(iw["ratios"], n, "pythae_onebatch")),
             _x(_ratio(iw["ratios"], n, "pythae_bs100")), *_peak_cells(iw.get("fraction_of_peak", {}).get(n)),
             rss(f"iwae_{n}")] for n, v in ips.items() if n in SIDES]
    out = [f"{level} IWAE-{k} scoring (Fashion-MNIST test, conv VAE base 32 / latent 16, Bernoulli decoder; "
           f"median of {iw['rounds']} alternated rounds){_data_note(iw)}", "",
           *_table(["side", "images/s", "÷ pythae_onebatch", "÷ pythae_bs100", *PEAK_HDR, "peak RSS MiB (+growth)"],
                   rows), "", *_source(iw)]
    agr = {key: g for key, g in iw.get("agreement", {}).items() if key.split("-")[0] in SIDES}
    if agr:
        out += ["Agreement on the same images (independent noise; mean of per-image differences ± its "
                "standard error):", "",
                *_table(["pair", "images", "mean diff (nats)", "mean abs diff (nats)", "mean log p(x) (nats)"],
                        [[key, g["images"], f"{g['mean_diff_nats']:+.3f} ± {g['standard_error_nats'] or math.nan:.3f}",
                          f"{g['mean_abs_diff_nats']:.3f}",
                          ", ".join(f"{n} {m:.2f}" for n, m in g["mean_log_px_nats"].items())]
                         for key, g in agr.items()]), ""]
    r = iw["ratios"]
    if iw["machine"]["device"].startswith("cuda"):
        goal = [f"IWAE-{k} scoring ≥ 20× pythae on a GPU",
                f"{_x(r['vaeood/pythae_bs100'], 1)} pythae's default `get_nll(batch_size=100)`; "
                f"{_x(r['vaeood/pythae_onebatch'], 1)} pythae with `batch_size={k}` (its fastest)",
                f"{_met(r['vaeood/pythae_bs100'], 20)} against pythae's default; "
                f"{_met(r['vaeood/pythae_onebatch'], 20)} against its fastest"]
    else:
        gr = r[f"vaeood/{best}"]
        goal = [f"IWAE-{k} scoring: vaeood ≥ 1.5× pythae (its faster batch size, {best}) on 2 CPU cores",
                _x(gr), _met(gr, 1.5)]
    return [[*goal, _cmd(iw), _machine(iw)]], out


def train_table(tr: dict, where: str, rss, level: str) -> tuple[list, list[str]]:
    loop, e2e = tr["loop"], tr["end_to_end"]
    names = {"bare": "bare PyTorch loop", "vaeood": "`vaeood.training.train`",
             "vaeood_bf16": "`vaeood.training.train` with `train.precision=bf16`",
             "pythae": "pythae 0.1.2 `TrainingPipeline` / `BaseTrainer`"}
    has_pythae = "pythae" in loop["images_per_s"]
    cpu = tr.get("end_to_end_cpu")  # images per CPU second of the process, end to end
    rows = []
    for n, v in ((n, v) for n, v in loop["images_per_s"].items() if n in SIDES):
        cells = [names[n], _f(v), _f(e2e["images_per_s"][n]), _x(_ratio(loop["ratios"], n, "bare"), 3),
                 _x(_ratio(e2e["ratios"], n, "bare"), 3)]
        if has_pythae:
            cells += [_x(_ratio(loop["ratios"], n, "pythae"), 3), _x(_ratio(e2e["ratios"], n, "pythae"), 3)]
        if cpu:
            cells += [_f(cpu["images_per_cpu_s"][n]), _x(_ratio(cpu["ratios"], n, "bare"), 3)]
        rows.append([*cells, *_peak_cells(loop.get("fraction_of_peak", {}).get(n)), rss(f"train_{n}")])
    hdr = ["side", "loop images/s", "end-to-end images/s", "÷ bare (loop)", "÷ bare (end-to-end)"]
    hdr += ["÷ pythae (loop)", "÷ pythae (end-to-end)"] if has_pythae else []
    hdr += ["end-to-end images per CPU s", "÷ bare (CPU)"] if cpu else []
    model = tr.get("model", {})
    net = (f"hierarchical VAE (`model.arch=hvae`, {json.dumps(model['arch_options'])})" if model.get("arch") == "hvae"
           else "conv base 32 / latent 16")
    same = tr.get("same_loss_max_abs_diff_nats")
    out = [f"{level} Training ({tr['images']:,} Fashion-MNIST images × {tr['epochs']} epochs, batch "
           f"{tr['batch_size']}, {net}, median of {tr['rounds']} alternated rounds; {where}){_data_note(tr)}", "",
           *_table([*hdr, *PEAK_HDR, "peak RSS MiB (+growth)"], rows), "",
           *([] if same is None else [f"The bare loop's loss and vaeood's ELBO differ by at most {same:.1e} nats on "
                                      "64 images with the same weights and noise.", ""]), *_source(tr)]
    lr, er = loop["ratios"], e2e["ratios"]
    if model.get("arch") == "hvae":
        return [["Hierarchical VAE training: vaeood vs the bare loop (loop / end-to-end / CPU; no numeric goal)",
                 f"{_x(lr['vaeood/bare'], 3)} / {_x(er['vaeood/bare'], 3)} / {_x(cpu['ratios']['vaeood/bare'], 3)}",
                 "–", _cmd(tr), _machine(tr)]], out
    if tr["machine"]["device"].startswith("cuda"):
        return [["Training vs the bare loop on a GPU (no numeric goal; eager, the default)",
                 f"{_x(lr['vaeood/bare'], 3)} bare, {_x(lr.get('vaeood/pythae'), 3)} pythae", "–",
                 _cmd(tr), _machine(tr)]], out
    goals = [[f"Training: vaeood ≥ 1.0× the bare loop (loop / end-to-end; {where})",
              f"{_x(lr['vaeood/bare'], 3)} / {_x(er['vaeood/bare'], 3)}", _met(lr["vaeood/bare"], 1.0),
              _cmd(tr), _machine(tr)]]
    if has_pythae:
        bf16 = lr.get("vaeood_bf16/pythae")
        goals.append([f"Training: vaeood ≥ 1.2× pythae (loop / end-to-end; {where})",
                      f"fp32 (default) {_x(lr['vaeood/pythae'], 3)} / {_x(er['vaeood/pythae'], 3)}; "
                      f"`train.precision=bf16` {_x(bf16, 3)} / {_x(er.get('vaeood_bf16/pythae'), 3)}",
                      f"{_met(lr['vaeood/pythae'], 1.2)} in fp32"
                      + ("" if bf16 is None else f"; {_met(bf16, 1.2)} with bf16"), _cmd(tr), _machine(tr)])
    return goals, out


def overhead_table(to: dict, level: str) -> list[str]:
    rows = [[n, f"{ms:.3f}", _f(to["increment_ms_per_step"].get(n), 3), _x(ms / to["ms_per_step"]["bare"], 3)]
            for n, ms in to["ms_per_step"].items()]
    micro = "; ".join(f"{k}: {v:.0f} µs" for k, v in to["micro_us"].items())
    runs = "; ".join(f"{k}: {v if isinstance(v, str) else f'{1e3 * v:.0f} ms'}"
                     for k, v in to["per_run_seconds"].items())
    return [f"{level} Training step breakdown (batch {to['batch_size']}, {to['steps_per_round']} steps × "
            f"{to['rounds']} alternated rounds, median){_data_note(to)}", "",
            *_table(["variant (cumulative)", "ms/step", "Δ vs previous row (paired median)", "time ÷ bare"], rows), "",
            f"Measured alone: {micro}. Per run / per epoch: {runs}.", "", *_source(to)]


def cpu_tables() -> tuple[list, list[str]]:
    """(goal rows, tables) of ``results/*.json``."""
    goals, out = [], []
    mr = _load("memory")
    rss = _rss(mr)
    if iw := _load("iwae_speed"):
        g, o = iwae_table(iw, rss, "###")
        goals, out = goals + g, out + o
    for bench, where in (("train_speed", "all sides in one warmed-up process"),
                         ("train_speed_fresh", "each side in a new process per round, as users run them"),
                         ("hvae_train_speed", "both sides in one warmed-up process")):
        if tr := _load(bench):
            g, o = train_table(tr, where, rss if bench == "train_speed" else _rss(None), "###")
            goals, out = goals + g, out + o
    if pq := _load("precision_quality"):
        rows = []
        for key, r in pq["rows"].items():
            d = r.get("fashion_mnist_diff_vs_fp32_nats")
            rows.append([key, _f(r["train_images_per_s_median_epoch"]),
                         f"{r['test_fashion_mnist_mean_log_px_nats']:.1f}",
                         f"{r['test_mnist_mean_log_px_nats']:.1f}", _f(r.get("test_fashion_mnist_mean_bpd"), 3),
                         "–" if d is None else f"{d['mean']:+.2f} ± {d['standard_error']:.2f}",
                         f"{r['auroc_mnist_vs_fashion_mnist']:.3f}"])
        out += [f"### bf16 training: speed and the model it trains ({pq['images']:,} Fashion-MNIST images × "
                f"{pq['epochs']} epochs, fp32 scoring of the 10,000 + 10,000 test images; seed 1 gives the "
                f"run-to-run spread)", "",
                *_table(["decoder/run", "train images/s (median epoch)", "FM test log p(x) (nats)",
                         "MNIST test log p(x) (nats)", "FM bits/dim", "per-image FM diff vs fp32 seed 0 (nats)",
                         "AUROC MNIST vs FM"], rows), "", *_source(pq)]
    if to := _load("train_overhead"):
        out += overhead_table(to, "###")
    if el := _load("elbo_speed"):
        names = {"bare": "bare loop (encode, reparameterise, decode, BCE + KL)", "vaeood": "vaeood `elbo(model, x)`",
                 "vaeood_score": "`vaeood.evaluation.log_px.log_px(..., estimator='elbo')` end to end"}
        rows = [[names[n], _f(v), _x(_ratio(el["ratios"], n, "bare"), 3),
                 *_peak_cells(el.get("fraction_of_peak", {}).get(n)), rss(f"elbo_{n}")]
                for n, v in el["images_per_s"].items() if n in SIDES]
        out += [f"### ELBO scoring ({el['images']:,} Fashion-MNIST test images, batches of {el['batch_size']}, "
                f"median of {el['rounds']} alternated rounds){_data_note(el)}", "",
                *_table(["side", "images/s", "÷ bare", *PEAK_HDR, "peak RSS MiB (+growth)"], rows), "", *_source(el)]
        goals.append(["ELBO scoring: vaeood vs the bare loop (no numeric goal)", _x(el["ratios"]["vaeood/bare"], 3),
                      "–", _cmd(el), _machine(el)])
    if mr:
        rows = [[c["case"], f"{c['peak_rss_mib']:,.0f}", f"{c['rss_after_setup_mib']:,.0f}",
                 f"{c['peak_growth_mib']:,.0f}",
                 _f(c.get("cuda_max_allocated_mib"))] if "peak_rss_mib" in c else [c["case"], "failed", "", "", ""]
                for c in mr["cases"]]
        out += [f"### Peak memory (a fresh process per case; IWAE K={mr['k']} on {mr['iwae_images']} images, vaeood in "
                f"its default cache-sized chunks as `score` runs it; training {mr['train_images']:,} images × 1 epoch)",
                "", *_table(["case", "peak RSS MiB", "RSS after setup MiB", "growth MiB", "CUDA max allocated MiB"],
                            rows), "", *_source(mr)]
    if fl := _load("flops"):
        pk, one, mm = fl["matmul_peak_gflops"], fl.get("onednn_gemm_peak_gflops") or {}, fl["matmul"]
        rows = [[n, f"{v / 1e6:,.1f}"] for n, v in fl["flops_per_image"].items()]
        rows.append([f"fp32 `torch.mm` {mm['size']}² (MKL), best / median of {mm['reps']}",
                     f"{pk['max']:.0f} / {pk['median']:.0f} GFLOP/s"])
        if "max" in one:
            rows.append([f"fp32 oneDNN GEMM {mm['size']}², best / median of {mm['reps']}",
                         f"{one['max']:.0f} / {one['median']:.0f} GFLOP/s"])
        out += [f"### FLOPs per image (`FlopCounterMode`: matmul/conv only; IWAE K={fl['k']}) and GEMM peaks", "",
                *_table(["workload", "MFLOP / image"], rows), "", *_source(fl)]
    if ls := _load("layer_speed"):
        per = ls["us_per_sample"]
        sizes = list(per)
        out += ["### Decoder layers, µs per decoded sample (what IWAE scoring spends its time on)", "",
                *_table(["layer / layout / kernel", *(f"{int(r):,} samples per call" for r in sizes)],
                        [[layer, *(f"{per[r][layer]:.1f}" for r in sizes)] for layer in per[sizes[0]]]), "",
                *_source(ls)]
    if oc := _load("objective_cost"):
        rows = [[r["objective"], f"{r['median_epoch_cpu_seconds']:.2f}", f"{r['cpu_relative_to_elbo']:.2f}",
                 f"{r['median_epoch_wall_seconds']:.2f}", f"{r['wall_relative_to_elbo']:.2f}"] for r in oc["rows"]]
        out += [f"### Training cost per objective ({oc.get('model')}; {oc.get('images')} images, "
                f"{oc.get('threads')} thread(s)){_data_note(oc)}", "",
                *_table(["objective", "CPU s/epoch", "× elbo (CPU)", "wall s/epoch", "× elbo (wall)"], rows), "",
                *_source(oc)]
    return goals, out


def gpu_tables() -> tuple[list, list[str]]:
    """(goal rows, tables) of ``results/cuda/*.json`` (``run_all.py --preset cuda`` on a GPU machine)."""
    folder = RESULTS / "cuda"
    goals, out = [], []
    if pt := _load("paper_train_time", folder):
        tiled = pt["data"].get("tiled")
        note = (f" ({pt['data']['available_images']:,} real CIFAR-10 training images repeated to "
                f"{pt['data']['tiled_to']:,}: timing only)" if tiled else "")
        rows = [[key, len(r["epoch_seconds"]), f"{r['wall_s']:.0f}", _f(r.get("projected_100_epochs_s")),
                 f"{statistics.median(r['epoch_seconds']):.2f}", _f(r["images_per_s_median_epoch"]),
                 f"{r['fixed_cost_s']:.1f}", f"{r['final_train_loss_nats']:.1f}"] for key, r in pt["runs"].items()]
        out += [f"#### Training the Fig. 2b paper preset (CIFAR-10 50,000 images, conv base 64 / latent 64, "
                f"batch 128){note}", "",
                *_table(["model[train settings]", "epochs", "wall s (all in)", "projected 100 epochs s",
                         "median epoch s", "images/s", "fixed cost s", "final train loss (nats)"], rows), "",
                *_source(pt)]
        full = {k: r["wall_s"] for k, r in pt["runs"].items() if len(r["epoch_seconds"]) >= 100}
        if full:
            goals.append(["CIFAR-10 VAE, 100 epochs ≤ 5 min (300 s) on one GPU",
                          "; ".join(f"{k} {v:.0f} s" for k, v in full.items()),
                          "yes" if all(v <= 300 for v in full.values()) else "**no**", _cmd(pt), _machine(pt)])
    none = _rss(None)
    if iw := _load("iwae_speed", folder):
        g, o = iwae_table(iw, none, "####")
        goals, out = goals + g, out + o
    if tr := _load("train_speed", folder):
        g, o = train_table(tr, "one process", none, "####")
        goals, out = goals + g, out + o
    if to := _load("train_overhead", folder):
        out += overhead_table(to, "####")
    if st := _load("iwae_settings", folder):
        rows = [[r["setting"], r["batch"], _f(r["images_per_s"], 0), f"{r['mean_abs_diff_vs_fp32_nats']:.4f}",
                 f"{r['max_abs_diff_vs_fp32_nats']:.4f}"] for r in st["rows"].values() if "setting" in r]
        out += [f"#### IWAE-{st['k']} scoring under device settings (same noise; differences are numerics)", "",
                *_table(["setting", "images per call", "images/s", "mean abs diff vs fp32 (nats)",
                         "max abs diff vs fp32 (nats)"], rows), "", *_source(st)]
    if ga := _load("gpu_agreement", folder):
        rows = []
        for case, c in ga["cases"].items():
            d, i, t = c["same_weights"]["tf32_default"], c["iwae_same_weights"], c["training"]
            off = c["same_weights"]["tf32_off"]
            rows.append([case, f"{d['log_lik_rel']:.1e} / {off['log_lik_rel']:.1e}",
                         f"{d['elbo_at_mean_max_abs_nats']:.4f} / {off['elbo_at_mean_max_abs_nats']:.4f}",
                         f"{i['mean_diff_nats']:+.3f} ± {i['standard_error_nats']:.3f} ({i['images']} images)",
                         f"{max(t['train_loss_rel_diff_per_epoch']):.2%}", f"{t['test_elbo_rel_diff']:.2%}"])
        out += ["#### GPU against CPU on the same small runs", "",
                *_table(["case", "log p(x \\| z) rel. diff, TF32 on / off",
                         "ELBO at z = μ, max abs diff (nats), TF32 on / off", f"IWAE-{ga['k']} GPU − CPU, same weights",
                         "train loss, max rel. diff per epoch", "test ELBO of the two trained models, rel. diff"],
                        rows),
                "", *_source(ga)]
    if out:
        out = ["### On one GPU (`python benchmarks/run_all.py --preset cuda`, results in `benchmarks/results/cuda/`)",
               "", *out]
    return goals, out


def tables() -> dict[str, str]:
    """The two generated blocks of BENCHMARKS.md, {"goals": ..., "tables": ...}, from the results."""
    hdr = ["goal", "measured", "met", "command", "machine · torch · date"]
    (cpu_goals, cpu_out), (gpu_goals, gpu_out) = cpu_tables(), gpu_tables()
    head = ["### On 2 CPU cores", "", *_table(hdr, cpu_goals), ""]
    if gpu_goals:
        head += ["### On one GPU", "", *_table(hdr, gpu_goals), ""]
    return {block: "\n".join([markers(block)[0], "", *lines, markers(block)[1]])
            for block, lines in (("goals", head), ("tables", [*cpu_out, *gpu_out]))}


def write_markdown() -> None:
    """Replace the generated blocks of BENCHMARKS.md, which must hold both markers of each."""
    text = MARKDOWN.read_text()
    for block, generated in tables().items():
        begin, end = markers(block)
        if begin not in text or end not in text:
            raise SystemExit(f"{MARKDOWN.name}: no {begin} … {end} block to write the {block} into")
        before, rest = text.split(begin, 1)
        text = before + generated + rest.split(end, 1)[1]
    MARKDOWN.write_text(text)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default="default")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--only", default=None, help=f"comma-separated subset of: {', '.join(PRESETS['default'])}")
    p.add_argument("--skip", default="", help="comma-separated benchmarks to leave out")
    p.add_argument("--omp-wait-policy", choices=["passive", "default"], default="passive")
    p.add_argument("--tables-only", action="store_true", help="only rewrite BENCHMARKS.md from results/*.json")
    a = p.parse_args(argv)
    if a.preset == "cuda" and a.device == "cpu":
        a.device = "cuda"
    failed = []
    if not a.tables_only:
        names = a.only.split(",") if a.only else list(PRESETS[a.preset])
        names = [n for n in names if n not in a.skip.split(",")]
        unknown = [n for n in names if n not in PRESETS[a.preset]]
        if unknown:
            raise SystemExit(f"unknown benchmark(s) {unknown}; known: {', '.join(PRESETS[a.preset])}")
        env = os.environ.copy()
        if a.omp_wait_policy == "passive":
            env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        if not env.get("VAEOOD_DATA"):
            print("note: VAEOOD_DATA is not set; benchmarks fall back to the bundled sample (smoke numbers only)")
        start = time.perf_counter()
        failed = run_benchmarks(names, a.preset, a.device, env)
        print(f"\nall benchmarks: {time.perf_counter() - start:.0f} s")
    write_markdown()
    print(f"tables written to {MARKDOWN}")
    if failed:
        raise SystemExit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
