"""AP7: data assimilation by a denoising diffusion model with inpainting of sparse observations.

Mirrors the seed's AP7 (DiffDA, ETH, in JAX): a diffusion model conditioned on the forecast
("background") state learns the distribution of the atmosphere; at inference it starts from
white noise and denoises in many iterations while sparse observations are mixed in at every
step, RePaint-style (replacement, without RePaint's resampling jumps), through a soft mask with
interpolated observations around each observed point, as DiffDA does to exploit the continuity
of atmospheric fields.

Data: a smooth periodic 2-D field of ``scale`` x ``scale`` points built from a few Fourier modes
stands for one variable of the gridded state (DiffDA: ERA5 at 0.25 degrees, 13 levels). Its
background is the same field displaced by a random shift of up to ``scale / 16`` points and
damped at small scales, plus a small independent error: a forecast with position and amplitude
errors. The model
learns the increment (truth - background) given the background, the residual form of the
conditioning; its input channels are the noisy increment and the background. Observations are
the truth plus a little noise at a random 5 % of the points.

Model: a small periodic-padding U-Net (two levels, one skip connection) with the noise level fed
in by FiLM biases, under EDM preconditioning (Karras et al. 2022), trained with the
denoising score-matching loss and a hand-written Adam; parameters are plain pytrees (no flax,
no optax).

Regions, per epoch::

    epoch
      io          one per batch: shuffled slice of the in-memory dataset, put on the device
      batch       one per batch (gpu), containing
        forward     jax.vjp of the loss: loss value and the residuals of the backward pass
        backward    the pullback applied to 1.0: the gradients
        optimizer   the Adam update
      assimilate  (gpu) the reverse-diffusion sampler on 4 held-out cases x 4 ensemble
                  members (the analysis is the members' mean), containing
        denoise     one per denoising iteration: denoiser, ancestral step, inpainting mix

``forward``, ``backward`` and ``optimizer`` are three jitted functions. A fused
``jax.value_and_grad`` step cannot be timed in parts, so the app splits it where autodiff
does: ``forward`` returns the loss with its ``jax.vjp`` pullback (a pytree holding the saved
residuals) and ``backward`` applies it. The values are those of value_and_grad; the time
differs only by the fusion XLA can no longer do across the seam and the residuals going
through memory. Every compute region blocks on its outputs with ``region.block`` (JAX
dispatches asynchronously, on the CPU too), so its time includes the work. On the CPU the
first batch and the first ``denoise`` include JIT compilation (the steady-state table skips
them). With ``--device cuda`` the arrays live on ``jax.devices("gpu")[0]`` (a RuntimeError
where JAX has no GPU) and the regions get GPU rows, with the first calls that compiled
reported apart.

Sizes: ``scale`` is the grid side (16, 32, 64 points); the sampler takes
``denoise_steps(scale) = scale // 2`` iterations (8, 16, 32), so a run records
epochs x ``scale // 2`` ``denoise`` regions.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from _harness import App, AppConfig, Progress, Size
from jax.flatten_util import ravel_pytree

from maeltrace import Timer, TimeType

APP = App(
    name="ap7-diffusion-assimilation",
    title="Diffusion-model data assimilation: inpainting sparse observations (JAX)",
    framework="jax",
    seed_app="AP7",
    sizes={
        "tiny": Size(epochs=2, batches=3, batch_size=8, scale=16),
        "small": Size(epochs=3, batches=16, batch_size=16, scale=32),
        "medium": Size(epochs=3, batches=24, batch_size=16, scale=64),
    },
    regions=[
        TimeType.EPOCH,
        TimeType.IO,
        TimeType.BATCH,
        TimeType.FORWARD,
        TimeType.BACKWARD,
        "optimizer",
        "assimilate",
        "denoise",
    ],
)

Params = dict[str, Any]

WIDTH = 16  # channels of the U-Net's first level; the second has twice as many
OBS_FRACTION = 0.05
OBS_NOISE = 0.02
CASES = 4  # held-out cases assimilated each epoch
MEMBERS = 4  # samples drawn per case; the analysis is their mean
SIGMA_MIN = 0.002
SIGMA_MAX = 10.0
RHO = 7.0  # Karras schedule's curvature
LEARNING_RATE = 2e-3


def denoise_steps(scale: int) -> int:
    """Iterations of the reverse-diffusion sampler on a ``scale`` x ``scale`` grid."""
    return scale // 2


# -- synthetic data --------------------------------------------------------------------------


def make_fields(rng: np.random.Generator, count: int, side: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` truth fields and their backgrounds, float32 of shape (count, side, side).

    The truth has unit variance and wavenumbers up to ``side // 8`` (features of 8 points and
    more); the background is it shifted by up to ``side / 16`` points along each axis, damped
    at the higher modes, plus 10 % of an independent field.
    """
    modes = max(2, side // 8)
    ky = np.fft.fftfreq(side, 1.0 / side)[:, None]
    kx = np.fft.rfftfreq(side, 1.0 / side)[None, :]
    k2 = kx**2 + ky**2
    low = (np.abs(kx) <= modes) & (np.abs(ky) <= modes) & (k2 > 0)
    amplitude = np.where(low, (1.0 + k2) ** -1.0, 0.0)

    def spectrum() -> np.ndarray:
        shape = (count, side, side // 2 + 1)
        return amplitude * (rng.standard_normal(shape) + 1j * rng.standard_normal(shape))

    truth_hat = spectrum()
    shift = rng.uniform(-side / 16, side / 16, size=(count, 2, 1, 1))
    phase = np.exp(-2j * np.pi * (ky * shift[:, 0] + kx * shift[:, 1]) / side)
    damping = np.exp(-k2 / (2 * modes**2))
    truth = np.fft.irfft2(truth_hat, s=(side, side))
    background = np.fft.irfft2(truth_hat * phase * damping + 0.1 * spectrum(), s=(side, side))
    std = truth.std(axis=(1, 2), keepdims=True)
    return (truth / std).astype(np.float32), (background / std).astype(np.float32)


def batches(
    truth: np.ndarray,
    background: np.ndarray,
    batch_size: int,
    count: int,
    rng: np.random.Generator,
    device: jax.Device,
) -> Iterator[tuple[jax.Array, jax.Array]]:
    """``count`` shuffled batches of (increment, background), each waited for on ``device``."""
    order = rng.permutation(len(truth))
    for i in range(count):
        idx = np.take(order, range(i * batch_size, (i + 1) * batch_size), mode="wrap")
        pair = (truth[idx] - background[idx], background[idx])
        yield jax.block_until_ready(jax.device_put(pair, device))


# -- the denoiser ----------------------------------------------------------------------------


def _conv_init(key: jax.Array, c_in: int, c_out: int) -> Params:
    scale = math.sqrt(2.0 / (9 * c_in))
    return {
        "w": scale * jax.random.normal(key, (3, 3, c_in, c_out)),
        "b": jnp.zeros(c_out),
    }


def init_params(key: jax.Array) -> Params:
    """The U-Net's parameters: 2 input channels (noisy increment, background), 1 output."""
    keys = jax.random.split(key, 8)
    c1, c2 = WIDTH, 2 * WIDTH
    return {
        "enc": _conv_init(keys[0], 2, c1),
        "enc2": _conv_init(keys[1], c1, c1),
        "down": _conv_init(keys[2], c1, c2),
        "mid": _conv_init(keys[3], c2, c2),
        "up": _conv_init(keys[4], c2 + c1, c1),
        "out": {"w": jnp.zeros((3, 3, c1, 1)), "b": jnp.zeros(1)},
        # FiLM: the noise embedding (8 features) gives each level a per-channel bias.
        "film1": 0.1 * jax.random.normal(keys[5], (8, c1)),
        "film2": 0.1 * jax.random.normal(keys[6], (8, c2)),
    }


def _conv(layer: Params, x: jax.Array) -> jax.Array:
    # Periodic padding: the fields wrap around, like a global grid in longitude.
    x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="wrap")
    y = jax.lax.conv_general_dilated(
        x, layer["w"], (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    return y + layer["b"]


def unet(params: Params, x: jax.Array, c_noise: jax.Array) -> jax.Array:
    """F of EDM: (B, H, W, 2) inputs and (B,) log-noise levels to (B, H, W) outputs."""
    freqs = jnp.arange(1, 5, dtype=x.dtype)
    emb = jnp.concatenate([jnp.sin(c_noise[:, None] * freqs), jnp.cos(c_noise[:, None] * freqs)], 1)
    film1 = (emb @ params["film1"])[:, None, None, :]
    film2 = (emb @ params["film2"])[:, None, None, :]
    h1 = jax.nn.silu(_conv(params["enc"], x) + film1)
    h1 = jax.nn.silu(_conv(params["enc2"], h1))
    b, h, w, c = h1.shape
    pooled = h1.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))
    h2 = jax.nn.silu(_conv(params["down"], pooled) + film2)
    h2 = jax.nn.silu(_conv(params["mid"], h2))
    up = jnp.repeat(jnp.repeat(h2, 2, axis=1), 2, axis=2)
    h3 = jax.nn.silu(_conv(params["up"], jnp.concatenate([up, h1], axis=-1)))
    return _conv(params["out"], h3)[..., 0]


def denoise(
    params: Params, noisy: jax.Array, background: jax.Array, sigma: jax.Array, sigma_data: float
) -> jax.Array:
    """D(x; sigma): the EDM-preconditioned estimate of the clean increment; sigma is (B,)."""
    s = sigma[:, None, None]
    total = s**2 + sigma_data**2
    c_skip = sigma_data**2 / total
    c_out = s * sigma_data / jnp.sqrt(total)
    c_in = 1.0 / jnp.sqrt(total)
    inputs = jnp.stack([c_in * noisy, background], axis=-1)
    return c_skip * noisy + c_out * unet(params, inputs, jnp.log(sigma) / 4)


def loss_fn(
    params: Params, batch: tuple[jax.Array, jax.Array], key: jax.Array, sigma_data: float
) -> jax.Array:
    """The denoising score-matching loss with EDM's noise distribution and weighting."""
    increment, background = batch
    k_sigma, k_noise = jax.random.split(key)
    sigma = jnp.exp(-1.2 + 1.2 * jax.random.normal(k_sigma, (increment.shape[0],)))
    noisy = increment + sigma[:, None, None] * jax.random.normal(k_noise, increment.shape)
    weight = (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2
    error = (denoise(params, noisy, background, sigma, sigma_data) - increment) ** 2
    return jnp.mean(weight[:, None, None] * error)


# -- assimilation ----------------------------------------------------------------------------


def karras_sigmas(steps: int) -> np.ndarray:
    """The sampler's noise levels, ``steps`` from SIGMA_MAX down to SIGMA_MIN, then 0."""
    ramp = np.linspace(0.0, 1.0, steps)
    lo, hi = SIGMA_MIN ** (1 / RHO), SIGMA_MAX ** (1 / RHO)
    return np.append((hi + ramp * (lo - hi)) ** RHO, 0.0).astype(np.float32)


def _periodic_blur(field: jax.Array, width: float) -> jax.Array:
    """Circular convolution of (B, H, W) fields with a Gaussian of peak 1 (not unit sum)."""
    side = field.shape[-1]
    d = jnp.minimum(jnp.arange(side), side - jnp.arange(side)).astype(field.dtype)
    kernel = jnp.exp(-(d[:, None] ** 2 + d[None, :] ** 2) / (2 * width**2))
    return jnp.fft.irfft2(jnp.fft.rfft2(field) * jnp.fft.rfft2(kernel), s=field.shape[-2:])


def observation_guide(
    mask: jax.Array, observed_increment: jax.Array, width: float = 1.0
) -> tuple[jax.Array, jax.Array]:
    """DiffDA's soft mask and interpolated observations.

    Returns:
        The soft mask (1 at observed points, falling off within about ``width`` points) and
        the observed increments spread to their neighbourhood by normalised Gaussian
        weighting, exact at the observed points.
    """
    weight = _periodic_blur(mask, width)
    spread = _periodic_blur(mask * observed_increment, width) / jnp.maximum(weight, 1e-6)
    guide = jnp.where(mask > 0, observed_increment, spread)
    return jnp.clip(weight, 0.0, 1.0), guide


def denoise_step(
    params: Params,
    x: jax.Array,
    background: jax.Array,
    soft_mask: jax.Array,
    guide: jax.Array,
    sigmas: jax.Array,
    index: jax.Array,
    key: jax.Array,
    sigma_data: float,
) -> jax.Array:
    """One ancestral step from ``sigmas[index]`` to the next level, then the observations
    mixed in.

    The step samples q(x_next | x, x0 = D(x)) of the variance-exploding process; the known
    part (the interpolated observations, noised to the new level) replaces the sample where
    the soft mask is 1 and blends with it around the observations.
    """
    # The index is traced, so one compiled step serves every iteration.
    sigma, sigma_next = sigmas[index], sigmas[index + 1]
    k_step, k_obs = jax.random.split(jax.random.fold_in(key, index))
    x0 = denoise(params, x, background, jnp.full(x.shape[:1], sigma), sigma_data)
    ratio = (sigma_next / sigma) ** 2
    std = sigma_next * jnp.sqrt(1.0 - ratio)
    unknown = ratio * x + (1.0 - ratio) * x0 + std * jax.random.normal(k_step, x.shape)
    known = guide + sigma_next * jax.random.normal(k_obs, x.shape)
    return soft_mask * known + (1.0 - soft_mask) * unknown


# -- training --------------------------------------------------------------------------------


def adam(
    params: Params, state: dict[str, jax.Array], grads: Params, lr: float = LEARNING_RATE
) -> tuple[Params, dict[str, jax.Array]]:
    """One Adam step (b1 0.9, b2 0.999).

    The moments are kept as flat vectors and the update runs on the flattened parameters:
    one fused update instead of one per leaf, which also compiles several times faster.
    """
    b1, b2, eps = 0.9, 0.999, 1e-8
    flat, unravel = ravel_pytree(params)
    grad, _ = ravel_pytree(grads)
    step = state["step"] + 1
    m = b1 * state["m"] + (1 - b1) * grad
    v = b2 * state["v"] + (1 - b2) * grad * grad
    scale = lr * jnp.sqrt(1 - b2**step) / (1 - b1**step)
    return unravel(flat - scale * m / (jnp.sqrt(v) + eps)), {"step": step, "m": m, "v": v}


def _device(config: AppConfig) -> jax.Device:
    """The device the arrays go to.

    Raises:
        RuntimeError: ``--device cuda`` and JAX has no GPU backend.
    """
    if not config.gpu:
        return jax.devices("cpu")[0]
    try:
        return jax.devices("gpu")[0]
    except RuntimeError as exc:
        raise RuntimeError(
            f"--device cuda: JAX finds no GPU (backends: {jax.default_backend()}); install "
            "a CUDA build of jax (jax[cuda12]) or run with --device cpu"
        ) from exc


def _rmse(a: np.ndarray, b: np.ndarray, where: np.ndarray) -> float:
    return float(np.sqrt(np.sum(where * (a - b) ** 2) / np.sum(where)))


def _init_state(key: jax.Array) -> tuple[Params, dict[str, jax.Array]]:
    """The model's parameters and Adam's state."""
    params = init_params(key)
    zeros = jnp.zeros_like(ravel_pytree(params)[0])
    return params, {"step": jnp.zeros((), jnp.int32), "m": zeros, "v": zeros}


def train(tmr: Timer, config: AppConfig, progress: Progress) -> dict[str, float]:
    """Trains the diffusion model and assimilates held-out cases after each epoch.

    Returns:
        ``loss``, the last batch's loss; the last epoch's RMSEs against the truth of the
        ``analysis`` and the ``background`` over the whole grid, of the analysis at the
        ``observed`` and ``unobserved`` points and of the background at the unobserved
        points; and ``denoise_steps``.

    Raises:
        RuntimeError: ``--device cuda`` without a GPU that JAX can use.
    """
    device = _device(config)
    side = config.scale
    steps = denoise_steps(side)
    rng = np.random.default_rng(config.seed)
    truth, background = make_fields(rng, config.batches * config.batch_size, side)
    sigma_data = float(np.std(truth - background))
    case_truth, case_background = make_fields(rng, CASES, side)
    mask = (rng.random((CASES, side, side)) < OBS_FRACTION).astype(np.float32)
    observed = case_truth + OBS_NOISE * rng.standard_normal(case_truth.shape).astype(np.float32)

    # Every eager op compiles a program of its own, so the set-up runs in jitted functions
    # too. The rbg generator compiles several times faster than threefry on the CPU.
    forward = jax.jit(
        lambda p, batch, key, step: jax.vjp(
            lambda q: loss_fn(q, batch, jax.random.fold_in(key, step), sigma_data), p
        )
    )
    backward = jax.jit(lambda pullback: pullback(jnp.ones((), jnp.float32))[0])
    optimizer = jax.jit(adam)
    # The sampler runs MEMBERS samples of each case side by side, as one batch.
    members = (CASES * MEMBERS, side, side)
    prior = jax.jit(
        lambda key, epoch: SIGMA_MAX * jax.random.normal(jax.random.fold_in(key, epoch), members)
    )
    step_fn = jax.jit(denoise_step, static_argnames="sigma_data")

    keys = jax.device_put(jax.random.split(jax.random.key(config.seed, impl="rbg"), 3), device)
    params, state = jax.jit(_init_state)(keys[0])
    ensemble = np.repeat(np.stack([case_background, mask, observed - case_background]), MEMBERS, 1)
    case_bg, sigmas = jax.device_put((ensemble[0], karras_sigmas(steps)), device)
    soft_mask, guide = jax.jit(observation_guide)(*jax.device_put(tuple(ensemble[1:]), device))
    loss = analysis = None
    step = 0
    for epoch in range(config.epochs):
        with tmr.region(TimeType.EPOCH):
            loader = batches(truth, background, config.batch_size, config.batches, rng, device)
            for batch in tmr.iterate(loader, TimeType.IO):
                with tmr.region(
                    TimeType.BATCH, gpu=config.gpu, items=config.batch_size
                ) as in_batch:
                    with tmr.region(TimeType.FORWARD, gpu=config.gpu) as r:
                        loss, pullback = r.block(forward(params, batch, keys[1], step))
                    with tmr.region(TimeType.BACKWARD, gpu=config.gpu) as r:
                        grads = r.block(backward(pullback))
                    with tmr.region("optimizer", gpu=config.gpu) as r:
                        params, state = r.block(optimizer(params, state, grads))
                    in_batch.block(params)
                step += 1
                progress()
            with tmr.region("assimilate", gpu=config.gpu) as in_assimilate:
                x = prior(keys[2], epoch)
                for i in range(steps):
                    with tmr.region("denoise", gpu=config.gpu) as r:
                        x = r.block(
                            step_fn(
                                params,
                                x,
                                case_bg,
                                soft_mask,
                                guide,
                                sigmas,
                                i,
                                keys[2],
                                sigma_data=sigma_data,
                            )
                        )
                samples = np.asarray(in_assimilate.block(x)).reshape(CASES, MEMBERS, side, side)
                analysis = case_background + samples.mean(axis=1)

    assert loss is not None and analysis is not None  # config.epochs is at least 1
    everywhere = np.ones_like(mask)
    unobserved = 1.0 - mask
    return {
        "loss": float(loss),
        "rmse_analysis": _rmse(analysis, case_truth, everywhere),
        "rmse_background": _rmse(case_background, case_truth, everywhere),
        "rmse_observed": _rmse(analysis, case_truth, mask),
        "rmse_unobserved": _rmse(analysis, case_truth, unobserved),
        "rmse_background_unobserved": _rmse(case_background, case_truth, unobserved),
        "denoise_steps": float(steps),
    }


if __name__ == "__main__":
    raise SystemExit(APP.main(train))
