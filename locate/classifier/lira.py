"""The likelihood-ratio membership attack, LiRA (Carlini et al. 2022, "Membership
Inference Attacks From First Principles", IEEE S&P).

Per example, a model's confidence in the label is taken on the logit scale,
φ = z_y − logsumexp_{y'≠y} z_{y'} (= log(p / (1 − p)), computed without forming p),
where it is close to Gaussian across models. Shadow models that trained on the
example ("in") and did not ("out") give that Gaussian's two fits.

- online: log N(φ; μ_in, σ_in²) − log N(φ; μ_out, σ_out²);
- offline: the out fit only, one-sided: log Φ((φ − μ_out) / σ_out);
- fixed variance: one σ shared by all examples, for small ensembles.

Every score is oriented so that larger means "more likely a member".
"""

from __future__ import annotations

import numpy as np
from scipy.special import log_ndtr, logsumexp

_MIN_SIGMA = 1e-6  # a constant φ over the shadows (a saturated example) must not divide by zero


def logit_confidence(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """φ for logits (..., C) and integer labels (...); float64, stable for confident models."""
    z = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels)
    true = np.take_along_axis(z, labels[..., None], axis=-1)[..., 0]
    others = z.copy()
    np.put_along_axis(others, labels[..., None], -np.inf, axis=-1)
    return true - logsumexp(others, axis=-1)


def gaussian_log_density(phi: np.ndarray, mu: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    sigma = np.maximum(sigma, _MIN_SIGMA)
    return -0.5 * ((phi - mu) / sigma) ** 2 - np.log(sigma) - 0.5 * np.log(2 * np.pi)


def online_score(
    phi: np.ndarray, mu_in: np.ndarray, sigma_in: np.ndarray, mu_out: np.ndarray, sigma_out: np.ndarray
) -> np.ndarray:
    """The log likelihood ratio of the in fit against the out fit at φ."""
    return gaussian_log_density(phi, mu_in, sigma_in) - gaussian_log_density(phi, mu_out, sigma_out)


def offline_score(phi: np.ndarray, mu_out: np.ndarray, sigma_out: np.ndarray) -> np.ndarray:
    """log Φ((φ − μ_out) / σ_out): how far above the out models the target's confidence lies."""
    return log_ndtr((phi - mu_out) / np.maximum(sigma_out, _MIN_SIGMA))


def out_statistics(phi: np.ndarray, membership: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of φ (K, N) over the models that did not train on each example.

    For a target outside the ensemble (a fine-tuned model, a model of another run):
    every one of the K models is a shadow.
    """
    out = ~np.asarray(membership, dtype=bool)
    count = np.maximum(out.sum(0), 1)
    mu = np.where(out, phi, 0.0).sum(0) / count
    var = np.where(out, (phi - mu) ** 2, 0.0).sum(0) / np.maximum(count - 1, 1)
    return mu, np.sqrt(var)
