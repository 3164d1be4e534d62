#!/usr/bin/env bash
# Two model-side tries on Fashion-MNIST rotated by 90° (docs/findings.md, "Near-OOD"), 3 seeds,
# on the quick suite's budget (10,000 training images x 5 epochs, the main model's config):
#  1. the latent size chosen on in-distribution data: the mean ELBO of training images
#     14,000-15,999 for latent 8, 16, 32 and 64, beside each model's dose_plus, latent_gmm and
#     fused (fitted on images 10,000-11,999, the first 2,000 images of each test set);
#  2. an ensemble: four more latent-16 VAEs per seed, their latent_gmm scores standardised on
#     the fit images and summed over 1, 3 and 5 models.
# Usage: VAEOOD_DATA=/path/to/data scripts/near_ood_models.sh SUITE_OUT OUT
# SUITE_OUT is an ood-suite run (its runs/data/1x28x28 holds the rotated, noise and constant sets).
set -euo pipefail
suite=$(cd "$1" && pwd); out=$2
here=$(cd "$(dirname "$0")/.." && pwd)
vaeood="$here/.venv/bin/vaeood"; python="$here/.venv/bin/python"
mkdir -p "$out/data"
for f in "$VAEOOD_DATA"/fashion_mnist_*.npz "$VAEOOD_DATA"/mnist_test.npz "$suite"/runs/data/1x28x28/*.npz; do
  ln -sf "$(cd "$(dirname "$f")" && pwd)/$(basename "$f")" "$out/data/"
done
export VAEOOD_DATA="$out/data"

model() {  # run dir, latent size, training seed
  [ -f "$1/checkpoint.pt" ] || "$vaeood" -q train "$1" --data.name=fashion_mnist --data.limit=10000 \
    --model.arch=conv --model.likelihood=dlogistic --model.latent_dim="$2" --train.epochs=5 --train.seed="$3"
  "$vaeood" -q evaluate "$1" --in fashion_mnist --ood mnist,uniform_noise,constant,fashion_mnist_rot90 \
    --detectors "$4" --n-fit 2000 --limit 2000 --out "$1/eval" > "$1/eval.txt" 2>&1
}

for seed in 0 1 2; do
  for size in 8 16 32 64; do
    model "$out/latent$size-seed$seed" "$size" "$seed" dose_plus,latent_gmm,fused
  done
  for member in 1 2 3 4; do
    model "$out/ensemble-seed$seed-$member" 16 $((seed * 100 + member)) latent_gmm
  done
done

"$python" - "$out" <<'PY'
import sys
import numpy as np
import vaeood
from vaeood.evaluation.intervals import auroc as pair_auroc

out = sys.argv[1]
sets = ("mnist", "uniform_noise", "constant", "fashion_mnist_rot90")


def auroc(scores, name):
    return pair_auroc(scores["fashion_mnist"], scores[name])


for size in (8, 16, 32, 64):
    for seed in (0, 1, 2):
        run = f"{out}/latent{size}-seed{seed}"
        elbo = vaeood.compute_features(run, "fashion_mnist", "train", "log_px", start=14000, stop=16000)["log_px_nats"]
        line = [f"latent {size} seed {seed}: held-out ELBO {np.mean(elbo):.1f} nats"]
        for det in ("dose_plus", "latent_gmm", "fused"):
            scores = np.load(f"{run}/eval/detector_scores/{det}.npz")
            line.append(f"{det} " + " ".join(f"{name} {auroc(scores, name):.3f}" for name in sets))
        print("; ".join(line))
for seed in (0, 1, 2):
    runs = [f"{out}/latent16-seed{seed}"] + [f"{out}/ensemble-seed{seed}-{m}" for m in (1, 2, 3, 4)]
    for n in (1, 3, 5):
        total = {}
        for run in runs[:n]:
            scores = np.load(f"{run}/eval/detector_scores/latent_gmm.npz")
            mean, sd = scores["_fit"].mean(), scores["_fit"].std()
            for name in ("fashion_mnist", *sets):
                total[name] = total.get(name, 0) + (scores[name] - mean) / sd
        print(f"ensemble of {n} seed {seed}: " + " ".join(f"{name} {auroc(total, name):.3f}" for name in sets))
PY
