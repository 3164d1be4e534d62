"""Near-OOD tries on the models of an ood-suite run (docs/findings.md, "Near-OOD"): three
detectors that are not shipped, and why ``latent_knn`` trails ``latent_gmm``.
Everything they fit is fitted on held-out training images; the images are the suite's own
sets (its rotated, noise and constant sets).

* ``grad``: the score statistic of Bergamin et al. (AISTATS 2022), "Model-agnostic
  out-of-distribution detection using combined statistical tests": per image, the log-norm of
  the gradient of the ELBO at z = μ, −log p(x | μ(x)) + KL(q(z|x) ‖ p(z)), with respect to each
  parameter tensor of the VAE; standardised and scored by the Mahalanobis distance of a
  Ledoit–Wolf Gaussian fitted on training images 10,000–11,999 (the suite's fitting slice).
* ``inpaint``: the inpainting error of LMD (Liu et al., ICML 2023), "Unsupervised
  out-of-distribution detection with diffusion inpainting", with the VAE as the inpainter: the
  hidden half of the image (two complementary checkerboards of blocks a quarter of the side)
  starts grey and is refilled by ten rounds of encoding and decoding the image at the posterior
  mean (Rezende et al. 2014's pseudo-Gibbs filling); the score is the squared error on the hidden
  pixels, summed over both masks. Nothing is fitted. It is also combined with the suite's
  ``fused`` by Fisher's rule, −2 (log p_fused + log p_inpaint), each conformal p-value taken
  against the scores of the suite's calibration slice (training images 12,000–13,999).

* ``knn``: ``latent_knn``'s distance to the k-th nearest fit image (k = n/1000, at least 1)
  in the latent parameters (μ, log σ²), standardised per coordinate as the detector does, or
  whitened by the Ledoit–Wolf covariance of the fit images; on the suite's 2,000 fit images and
  on every training image after the calibration slice (from 14,000 on).

* ``encoder``: a density of the encoder's last hidden layer h(x) (the 3,136 numbers, for a
  28×28 image, that μ and log σ² are one linear map of) instead of the latent parameters:
  h standardised on the fit images (units dead on every fit image dropped), projected on its
  first d principal components and modelled by a c-component full-covariance mixture, score
  −log density. (d, c) is chosen on in-distribution images only, by the held-out
  log-likelihood (training images 14,000–15,999) of the whole model in h's space: the mixture
  in the subspace plus an isotropic Gaussian, probabilistic PCA's, on the residual (Tipping &
  Bishop 1999). d = 32 and 64 with their best c are printed beside it for reference: those
  are *not* chosen on in-distribution data; the shipped ``latent_gmm`` fitted on the same
  images is printed as the baseline. Also scores the test images flipped upside down, a
  near-OOD set no choice of the project has seen.

* ``mixture``: issue 20's plain check (scikit-learn's 10-component full-covariance mixture on
  the raw (μ, log σ²) of the run's first 2,000 held-out training images, or all of them when
  fewer, as in ``make demo``) beside the shipped ``latent_gmm`` on the same images.

Usage: ``python scripts/near_ood_tries.py {grad,inpaint,knn,mixture,encoder} SUITE_OUT FAMILY SEED`` with
``VAEOOD_DATA`` set as for the suite run; prints the AUROC of the family's test images against
each OOD set the suite scored.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from sklearn.covariance import LedoitWolf
from sklearn.decomposition import PCA
from sklearn.mixture import GaussianMixture
from sklearn.neighbors import NearestNeighbors
from torch import nn
from torch.func import functional_call, grad, vmap

from vaeood.data import load_dataset
from vaeood.data.conform import conform_images
from vaeood.decisions import conformal
from vaeood.detectors import DETECTORS
from vaeood.detectors.latent import latent_rows
from vaeood.evaluation.intervals import auroc
from vaeood.evaluation.fitdata import heldout_slice
from vaeood.features import needs_features
from vaeood.training.run import load_model, to_tensor

FIT = (10000, 12000)  # the quick suite's fitting slice of the training split
CALIBRATION = (12000, 14000)  # and its calibration slice
SELECT = (14000, 16000)  # held-out training images after both, for choosing (d, c) of ``encoder``


class NegElboAtMean(nn.Module):
    """−ELBO at z = μ(x) of one image: −log p(x | μ) + KL(q(z|x) ‖ N(0, I))."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, x):
        mu, logvar = self.vae.posterior(x[None])
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum()
        return kl - self.vae.log_likelihood(x[None], mu[None]).sum()


def gradient_log_norms(model, images: np.ndarray, chunk: int = 50) -> np.ndarray:
    """``[N, T]``: log ‖∂(−ELBO)/∂θ_t‖₂ for each of the model's T parameter tensors."""
    loss = NegElboAtMean(model)
    params = {k: v.detach() for k, v in loss.named_parameters()}
    per_image = vmap(grad(lambda p, x: functional_call(loss, p, (x,))), in_dims=(None, 0))
    x = to_tensor(images)
    rows = []
    for i in range(0, len(x), chunk):
        g = per_image(params, x[i:i + chunk])
        rows.append(torch.stack([g[k].flatten(1).norm(dim=1) for k in params], 1))
    return torch.log(torch.cat(rows) + 1e-30).double().numpy()


def inpainting_error(model, images: np.ndarray, rounds: int = 10) -> np.ndarray:
    """Squared error of the refilled hidden pixels, summed over two complementary checkerboards."""
    x = to_tensor(images).float() / 255.0
    side = x.shape[-1]
    yy, xx = np.meshgrid(np.arange(side), np.arange(side), indexing="ij")
    board = torch.from_numpy(((yy // (side // 4) + xx // (side // 4)) % 2).astype(bool))
    error = torch.zeros(len(x))
    with torch.no_grad():
        for hidden in (board, ~board):
            filled = torch.where(hidden, torch.full_like(x, 0.5), x)
            for _ in range(rounds):
                u8 = (filled * 255).round().clamp(0, 255).to(torch.uint8)
                filled = torch.where(hidden, model.reconstruct(u8).reshape(x.shape).float(), x)
            error += (filled - x).pow(2)[:, :, hidden].flatten(1).sum(1)
    return error.double().numpy()


def suite_sets(out: Path, family: str, shape: tuple, limit: int) -> dict[str, np.ndarray]:
    """The family's test images and its OOD sets as the quick suite scored them (padded to the model)."""
    synthetic = out / "runs" / "data" / "x".join(map(str, shape))
    other = {"fashion_mnist": ["mnist"], "mnist": ["fashion_mnist"], "cifar10": ["mnist", "tinyimagenet"]}[family]
    sets = {family: load_dataset(family, "test").images}
    sets.update({name: load_dataset(name, "test").images for name in other})
    sets.update({name: load_dataset(name, "test", data_dir=synthetic).images
                 for name in ("uniform_noise", "constant", f"{family}_rot90")})
    return {name: conform_images(x, shape, "pad")[:limit] for name, x in sets.items()}


def latent_features(model, images: np.ndarray) -> dict[str, np.ndarray]:
    """The ``latent`` feature (μ and log σ² of q(z|x)) of ``images``, as the detectors get it."""
    return needs_features(model, images, "latent", progress=False)


def knn_scores(fit: np.ndarray, sets: dict[str, np.ndarray], whiten: bool) -> dict[str, np.ndarray]:
    """Distance to the k-th nearest fit row, k = n/1000, after standardising or whitening on ``fit``."""
    mean = fit.mean(0)
    if whiten:
        eigenvalues, vectors = np.linalg.eigh(LedoitWolf().fit(fit - mean).covariance_)
        transform = vectors / np.sqrt(eigenvalues)
    else:
        transform = np.diag(1 / (fit.std(0) + 1e-12))
    neighbours = NearestNeighbors(n_neighbors=max(1, len(fit) // 1000)).fit((fit - mean) @ transform)
    return {name: neighbours.kneighbors((u - mean) @ transform)[0][:, -1] for name, u in sets.items()}


def encoder_hidden(model, images: np.ndarray, chunk: int = 500) -> np.ndarray:
    """``[N, H]``: the input of the encoder's last (linear) layer, of which μ and log σ² are one linear map."""
    rows = []
    hook = model.encoder[-1].register_forward_hook(lambda module, inputs, output: rows.append(inputs[0].detach()))
    try:
        with torch.no_grad():
            for i in range(0, len(images), chunk):
                model.posterior(to_tensor(images[i:i + chunk]))
    finally:
        hook.remove()
    return torch.cat(rows).double().numpy()


def encoder_density_scores(fit: np.ndarray, select: np.ndarray, hidden: dict[str, np.ndarray]) -> dict:
    """−log density of a PCA-d mixture of c components on standardised h(x), for the (d, c)
    that the held-out likelihood of the mixture + isotropic residual chooses, and for d = 32, 64."""
    keep = fit.std(0) > 0
    mean, sd = fit[:, keep].mean(0), fit[:, keep].std(0)
    z = {name: (h[:, keep] - mean) / sd for name, h in {"fit": fit, "select": select, **hidden}.items()}
    width, held = z["fit"].shape[1], {}
    for d in (16, 32, 64, 128):
        pca = PCA(d, random_state=0).fit(z["fit"])
        residual_var = (z["fit"].var(0).sum() - pca.explained_variance_.sum()) / (width - d)
        residual = z["select"] - pca.inverse_transform(pca.transform(z["select"]))
        residual_ll = -0.5 * ((residual ** 2).sum(1) / residual_var + (width - d) * np.log(2 * np.pi * residual_var))
        for c in (1, 2, 5, 10, 20):
            mixture = GaussianMixture(c, random_state=0, reg_covar=1e-4).fit(pca.transform(z["fit"]))
            held[d, c] = (mixture.score(pca.transform(z["select"])) + residual_ll.mean(), pca, mixture)
    best = max(held, key=lambda k: held[k][0])
    picks = {f"encoder h, (d, c) = {best} chosen by held-out likelihood": best}
    for d in (32, 64):
        c = max((k for k in held if k[0] == d), key=lambda k: held[k][0])[1]  # the residual is the same for every c
        picks[f"encoder h, d = {d}, c = {c} (not chosen on in-distribution data)"] = (d, c)
    return {label: {name: -held[key][2].score_samples(held[key][1].transform(z[name])) for name in hidden}
            for label, key in picks.items()}


def with_fused(run: Path, family: str, model, scores: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Fisher's combination of the inpainting error's p-values with the suite's ``fused`` ones."""
    fused = np.load(run / "eval-main" / "detector_scores" / "fused.npz")
    fused_cal = np.load(run / "main" / "calibration" / "fused.npz")["scores"]
    cal = inpainting_error(model, load_dataset(family, "train").images[slice(*CALIBRATION)])
    return {name: -2 * np.log(conformal.p_values(fused_cal, fused[name][:len(s)]) * conformal.p_values(cal, s))
            for name, s in scores.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("method", choices=("grad", "inpaint", "knn", "mixture", "encoder"))
    parser.add_argument("suite_out", type=Path)
    parser.add_argument("family", choices=("fashion_mnist", "mnist", "cifar10"))
    parser.add_argument("seed", type=int)
    args = parser.parse_args()
    run = args.suite_out / "runs" / f"{args.family}-seed{args.seed}"
    model, _, meta = load_model(run / "main")
    model = model.to(memory_format=torch.contiguous_format)
    shape = tuple(meta["image_shape"])
    sets = suite_sets(args.suite_out, args.family, shape, 1000 if args.family == "cifar10" else 2000)
    if args.method == "grad":
        fit = gradient_log_norms(model, load_dataset(args.family, "train").images[slice(*FIT)])
        mean, sd = fit.mean(0), fit.std(0) + 1e-12
        gaussian = LedoitWolf().fit((fit - mean) / sd)
        scores = {name: gaussian.mahalanobis((gradient_log_norms(model, x) - mean) / sd) for name, x in sets.items()}
        results = {args.method: scores}
    elif args.method == "knn":
        train = load_dataset(args.family, "train").images
        latents = {name: latent_rows(latent_features(model, x)) for name, x in sets.items()}
        results = {}
        for fit_slice in (slice(*FIT), slice(CALIBRATION[1], None)):
            fit = latent_rows(latent_features(model, train[fit_slice]))
            for whiten in (False, True):
                label = f"knn {'whitened' if whiten else 'standardised'}, {len(fit)} fit images"
                results[label] = knn_scores(fit, latents, whiten)
    elif args.method == "encoder":
        train = load_dataset(args.family, "train").images
        sets[f"{args.family}_vflip"] = np.ascontiguousarray(sets[args.family][:, ::-1])
        results = encoder_density_scores(encoder_hidden(model, train[slice(*FIT)]),
                                         encoder_hidden(model, train[slice(*SELECT)]),
                                         {name: encoder_hidden(model, x) for name, x in sets.items()})
        shipped = DETECTORS.get("latent_gmm")().fit(latent_features(model, train[slice(*FIT)]))
        results["latent_gmm on the same fit images"] = {n: shipped.score(latent_features(model, x))
                                                        for n, x in sets.items()}
    elif args.method == "mixture":
        held = heldout_slice(run / "main", n=2000)
        fit = latent_features(model, load_dataset(args.family, "train").images[held["start"]:held["stop"]])
        latents = {name: latent_features(model, x) for name, x in sets.items()}
        plain = GaussianMixture(10, covariance_type="full", random_state=0).fit(latent_rows(fit))
        shipped = DETECTORS.get("latent_gmm")().fit(fit)
        print(f"fitted on {held['n']} images [{held['start']}, {held['stop']}); latent_gmm chose "
              f"{shipped.n_components_} components")
        results = {"plain 10-component mixture": {n: -plain.score_samples(latent_rows(f)) for n, f in latents.items()},
                   "latent_gmm": {n: shipped.score(f) for n, f in latents.items()}}
    else:
        scores = {name: inpainting_error(model, x) for name, x in sets.items()}
        results = {"inpaint": scores, "fused+inpaint (Fisher)": with_fused(run, args.family, model, scores)}
    for method, scores in results.items():
        s_in = scores[args.family]
        for name, s in scores.items():
            if name != args.family:
                print(f"{method} {args.family} seed {args.seed}: {args.family} → {name} AUROC {auroc(s_in, s):.3f}")


if __name__ == "__main__":
    main()
