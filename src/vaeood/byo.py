"""Bring your own VAE: the small protocol every estimator, feature and detector uses,
an adapter that builds it from an encoder and a decoder, and one for pythae models.

The protocol (duck-typed; :class:`VAEProtocol` spells it out), for uint8 images
``x [B, C, H, W]`` and latents ``z [S, B, Z]``:

* ``posterior(x) -> (mu, logvar)``, each ``[B, Z]``: q(z|x) = N(mu, diag e^logvar);
* ``log_likelihood(x, z) -> [S, B]``: log p(x|z) in nats;
* ``log_prior(z) -> [S, B]``: log p(z) in nats;
* ``image_shape`` = (C, H, W); optionally ``reconstruct(x) -> [B, C, H, W]`` (the mean of
  p(x | z = mu) on [0, 1], for the reconstruction features) and ``normalised`` (True when
  log p(x|z) is a normalised pmf over the 256 pixel values, so bits/dim are defined).

:class:`VAEAdapter` makes one from your functions; :func:`from_pythae` wraps a pythae
``VAE`` (or any pythae model with a Gaussian encoder). Then::

    result = vaeood.evaluate_model(model, in_images, {"ood": ood_images}, fit_images=heldout,
                                   detectors=["nll", "typicality", "dose", "lpath"])
"""

from __future__ import annotations

import math
from typing import Callable, Protocol, runtime_checkable

from torch import Tensor, nn

from .inference.gaussian import LOG_2PI


@runtime_checkable
class VAEProtocol(Protocol):
    """What vaeood needs of a VAE (see the module docstring)."""

    image_shape: tuple[int, int, int]

    def posterior(self, x: Tensor) -> tuple[Tensor, Tensor]: ...

    def log_likelihood(self, x: Tensor, z: Tensor) -> Tensor: ...

    def log_prior(self, z: Tensor) -> Tensor: ...


def standard_normal_log_prob(z: Tensor) -> Tensor:
    """log N(z; 0, I) summed over the last axis."""
    return -0.5 * (z.pow(2) + LOG_2PI).sum(-1)


class VAEAdapter(nn.Module):
    """A VAE from your own parts.

    Args:
        encode: ``f(x_float [B, C, H, W]) -> (mu, logvar)`` with x as ``preprocess`` makes it
            (default ``x / 255``, i.e. [0, 1]).
        decode: ``g(z [N, Z]) -> params`` (whatever your likelihood takes).
        log_prob: ``h(params, x_float [N, C, H, W]) -> [N]``: log p(x|z) in nats, with x
            as ``preprocess`` makes it (each image repeated once per latent sample).
        image_shape: (C, H, W).
        mean: ``m(params) -> [N, C, H, W]`` on [0, 1], the mean of p(x|z) (reconstructions);
            default: ``params`` itself.
        normalised: True only if ``log_prob`` is a normalised pmf over 8-bit values.
        modules: your ``nn.Module`` parts, registered so ``.to(device)`` and ``.eval()`` reach them.
    """

    def __init__(self, encode: Callable, decode: Callable, log_prob: Callable, image_shape, *,
                 mean: Callable | None = None, normalised: bool = False, preprocess: Callable | None = None,
                 modules: dict[str, nn.Module] | None = None):
        super().__init__()
        self.parts = nn.ModuleDict(modules or {})
        self._encode, self._decode, self._log_prob = encode, decode, log_prob
        self._mean = mean or (lambda params: params)
        self._preprocess = preprocess or (lambda x: x.float() / 255.0)
        self.image_shape = tuple(image_shape)
        self.normalised = bool(normalised)

    @property
    def num_dims(self) -> int:
        return math.prod(self.image_shape)

    def posterior(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mu, logvar = self._encode(self._preprocess(x))
        return mu.flatten(1).float(), logvar.flatten(1).float()

    def log_prior(self, z: Tensor) -> Tensor:
        return standard_normal_log_prob(z)

    def log_likelihood(self, x: Tensor, z: Tensor) -> Tensor:
        samples, batch = z.shape[:2]
        params = self._decode(z.reshape(samples * batch, -1))
        xs = self._preprocess(x).unsqueeze(0).expand(samples, *x.shape).reshape(samples * batch, *x.shape[1:])
        log_p = self._log_prob(params, xs)
        if not isinstance(log_p, Tensor) or tuple(log_p.shape) != (samples * batch,):
            shape = list(log_p.shape) if isinstance(log_p, Tensor) else type(log_p).__name__
            raise ValueError(f"VAEAdapter: log_prob returned shape {shape} for {samples * batch} images (each image "
                             f"once per latent sample); expected [N] = [{samples * batch}], one log p(x|z) an image: "
                             "sum over the pixel axes only, e.g. .flatten(1).sum(-1), not over the batch")
        return log_p.reshape(samples, batch)

    def decode(self, z: Tensor):
        return self._decode(z)

    def reconstruct(self, x: Tensor) -> Tensor:
        mu, _ = self.posterior(x)
        return self._mean(self._decode(mu)).reshape(x.shape[0], *self.image_shape).float()


def from_pythae(model, *, preprocess: Callable | None = None) -> VAEAdapter:
    """Wrap a pythae model (``pythae.models.VAE`` and its Gaussian-encoder kin) as a vaeood VAE.

    Written against pythae's documented interface (0.1.x): ``model.encoder(x)`` returns a
    ``ModelOutput`` with ``embedding`` (mu) and ``log_covariance`` (log σ²);
    ``model.decoder(z)["reconstruction"]`` is the decoder's output;
    ``model.model_config.reconstruction_loss`` is ``"bce"`` (Bernoulli on [0, 1] targets,
    not a normalised pmf of 8-bit pixels) or ``"mse"`` (a unit-variance Gaussian, a
    density on the preprocessed scale), with the same log p(x|z) as pythae's ``get_nll``;
    ``model.model_config.input_dim`` is the image shape. Inputs are uint8 images scaled by
    ``preprocess`` (default ``x / 255``, what pythae's pipelines feed).
    """
    config = model.model_config
    loss = getattr(config, "reconstruction_loss", "mse")
    if loss not in ("bce", "mse"):
        raise ValueError(f"pythae reconstruction_loss {loss!r}: only 'bce' and 'mse' are supported")
    shape = tuple(getattr(config, "input_dim", None) or model.input_dim)

    def encode(x):
        out = model.encoder(x)
        return out.embedding, out.log_covariance

    def decode(z):
        return model.decoder(z)["reconstruction"]

    def log_prob(recon, x):
        n = x.shape[0]
        recon, x = recon.reshape(n, -1), x.reshape(n, -1)
        if loss == "bce":
            return -nn.functional.binary_cross_entropy(recon.clamp(1e-7, 1 - 1e-7), x, reduction="none").sum(-1)
        return -0.5 * (recon - x).pow(2).sum(-1) - 0.5 * x.shape[1] * LOG_2PI

    modules = {"pythae": model} if isinstance(model, nn.Module) else None
    return VAEAdapter(encode, decode, log_prob, shape, mean=lambda r: r.clamp(0, 1), normalised=False,
                      preprocess=preprocess, modules=modules)
