"""AP6 analogue: SwAV-style self-supervised clustering of weather fields, IO-bound by design.

The seed's Application 6 clusters large-scale weather patterns over Europe with a deep
clustering method from image recognition (SwAV-like, PyTorch), to condition wind and solar
power forecasts on the weather regime. Its IO row dominates the run: each sample is augmented
anew, into several random crops, every time it is read, so nothing can be cached.

The synthetic data stands for daily fields over Europe on a ``scale`` x ``scale`` grid with
three channels: mean sea-level pressure anomaly and the two wind components derived from it
geostrophically. Each field is one of four weather regimes (a fixed pattern of highs and lows),
shifted and scaled at random, plus smooth noise, so that there are clusters to find. The
``Dataset`` turns a field into SwAV's multi-crop views each time it is read: 2 global crops
(``2 * scale // 3`` pixels) and 6 local ones (``scale // 3``), each a random resized crop
(antialiased resampling), random flips (with the sign of one wind component changed, so that
the wind stays geostrophic with the flipped pressure), a per-channel intensity jitter,
a random Gaussian blur and Gaussian noise. That runs in ``--workers`` DataLoader worker
processes (in the main process with ``--workers 0``), and the IO region is the main loop
waiting for the next batch of views.

The workers are not persistent: each epoch's iterator starts them (so the first IO of an epoch
includes their start) and stops them when it is exhausted, before the epoch ends, which leaves
no process behind at exit. A view's randomness comes from the run's seed, the epoch and the
sample's index, so a run is reproducible whatever the number of workers. On the CPU the
training step keeps only the cores the workers leave it (one at least) for its intra-op
threads while the loop runs, as in the seed the GPU trains and the CPU cores augment: on two
cores, torch's default of a thread per core would have the step's threads and the workers
fight over the cores, and the run would time that contention rather than the data loading.

The model is a small CNN encoder (three convolutions, two strided; 8-16-32 channels), a projection
head and 32 prototypes (an unbiased linear layer whose rows are kept on the unit sphere); on
two CPU cores its step takes about a fifth of the CPU time of augmenting its batch, so the loop
waits for data, as the seed's GPU run did. The loss is SwAV's swapped prediction: the codes
of each global crop, computed from the prototype scores with the Sinkhorn-Knopp algorithm
(equal-partition soft assignments), are predicted from the scores of every other crop.

Regions, and how they nest::

    epoch
    ├── io          one per batch: waiting for the augmented multi-crop views
    └── batch       one per batch: the training step
        ├── forward     copying the views to the device, normalising the prototypes,
        │               encoder, projection head and prototype scores of every crop
        ├── sinkhorn    Sinkhorn-Knopp codes of the global crops and the swapped-prediction loss
        ├── backward    loss.backward()
        └── optimizer   SGD step and zeroing the gradients

``scale`` is the grid side of the fields (at least 12). With ``--device cuda`` the model and
views go to the GPU (pinned host memory, non-blocking copies); augmentation stays on the CPU,
as in the seed.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator

import torch
from _harness import App, AppConfig, Progress, Size
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset

from maeltrace import Timer, TimeType

APP = App(
    name="ap6-swav-clustering",
    title="AP6: SwAV clustering of weather regimes, multi-crop augmentation in workers (PyTorch)",
    framework="torch",
    seed_app="AP6",
    sizes={
        "tiny": Size(epochs=2, batches=4, batch_size=8, scale=24),
        "small": Size(epochs=3, batches=16, batch_size=32, scale=48),
        "medium": Size(epochs=4, batches=24, batch_size=48, scale=64),
    },
    regions=[
        TimeType.EPOCH,
        TimeType.IO,
        TimeType.BATCH,
        TimeType.FORWARD,
        "sinkhorn",
        TimeType.BACKWARD,
        "optimizer",
    ],
)

REGIMES = (
    # (row, column, amplitude) of the highs (+) and lows (-) of each regime; rows and columns
    # as fractions of the grid, rows from south to north.
    ((0.25, 0.45, 1.0), (0.7, 0.4, -1.0)),  # zonal flow: Azores high, Icelandic low
    ((0.3, 0.5, -0.8), (0.75, 0.45, 0.8)),  # its negative phase
    ((0.72, 0.62, 1.2), (0.35, 0.3, -0.6), (0.35, 0.85, -0.6)),  # blocking high over Scandinavia
    ((0.5, 0.3, -1.1), (0.45, 0.8, 0.7)),  # Atlantic trough
)
GLOBAL_CROPS, LOCAL_CROPS = 2, 6
PROTOTYPES = 32
TEMPERATURE = 0.1
SINKHORN_EPSILON = 0.05
SINKHORN_ITERATIONS = 3


def weather_fields(count: int, side: int, seed: int) -> torch.Tensor:
    """Standardised fields (count, 3, side, side): pressure anomaly, u and v wind; rows run
    from south to north, columns from west to east."""
    gen = torch.Generator().manual_seed(seed)
    axis = torch.linspace(0.0, 1.0, side)
    rows, columns = axis[:, None], axis[None, :]
    regime = torch.randint(len(REGIMES), (count,), generator=gen).tolist()
    shifts = 0.08 * torch.randn(count, 2, generator=gen)
    amplitudes = 1.0 + 0.25 * torch.randn(count, generator=gen)
    pressure = torch.empty(count, side, side)
    for i, (k, shift, amplitude) in enumerate(zip(regime, shifts, amplitudes, strict=True)):
        field = torch.zeros(side, side)
        for row, column, sign in REGIMES[k]:
            distance2 = (rows - row - shift[0]) ** 2 + (columns - column - shift[1]) ** 2
            field += sign * torch.exp(-distance2 / 0.04)
        pressure[i] = amplitude * field
    coarse = torch.randn(count, 1, 6, 6, generator=gen)
    noise = F.interpolate(coarse, size=(side, side), mode="bicubic", align_corners=True)[:, 0]
    pressure += 0.2 * noise
    # Geostrophic wind: along the isobars, stronger where they are closer.
    dp_drow, dp_dcolumn = torch.gradient(pressure, dim=(1, 2))
    fields = torch.stack([pressure, -dp_drow, dp_dcolumn], dim=1)
    mean = fields.mean(dim=(0, 2, 3), keepdim=True)
    std = fields.std(dim=(0, 2, 3), keepdim=True)
    return (fields - mean) / std


def gaussian_blur(view: torch.Tensor, sigma: float, size: int) -> torch.Tensor:
    """Separable Gaussian blur of a (channels, h, w) view, reflecting at the edges."""
    offsets = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    kernel /= kernel.sum()
    channels = view.shape[0]
    padded = F.pad(view[None], (size // 2,) * 4, mode="reflect")
    horizontal = kernel.expand(channels, 1, 1, size)
    blurred = F.conv2d(padded, horizontal, groups=channels)
    blurred = F.conv2d(
        blurred, kernel.view(1, 1, size, 1).expand(channels, 1, size, 1), groups=channels
    )
    return blurred[0]


class MultiCropDataset(Dataset[tuple[torch.Tensor, ...]]):
    """Weather fields read as SwAV's multi-crop views, augmented anew at every read.

    Args:
        fields: the fields (count, 3, side, side).
        seed: seed of the augmentations.
    """

    def __init__(self, fields: torch.Tensor, seed: int) -> None:
        self.fields = fields
        self.seed = seed
        self.epoch = 0
        side = fields.shape[-1]
        self.global_side = 2 * side // 3
        self.local_side = side // 3

    def set_epoch(self, epoch: int) -> None:
        """Draws the next reads' augmentations for ``epoch``; worker processes see it because
        they are started after it, by each epoch's iterator."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.fields.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        gen = torch.Generator().manual_seed(hash((self.seed, self.epoch, index)) % 2**63)
        field = self.fields[index]
        views = [self._view(field, self.global_side, (0.35, 1.0), 9, gen)]
        views += [self._view(field, self.global_side, (0.35, 1.0), 9, gen)]
        views += [
            self._view(field, self.local_side, (0.05, 0.3), 5, gen) for _ in range(LOCAL_CROPS)
        ]
        return tuple(views)

    @staticmethod
    def _view(
        field: torch.Tensor,
        out_side: int,
        area: tuple[float, float],
        blur_size: int,
        gen: torch.Generator,
    ) -> torch.Tensor:
        side = field.shape[-1]
        u = torch.rand(8, generator=gen).tolist()
        fraction = area[0] + (area[1] - area[0]) * u[0]
        aspect = math.exp(math.log(3 / 4) + math.log(16 / 9) * u[1])
        height = min(side, max(2, round(side * math.sqrt(fraction / aspect))))
        width = min(side, max(2, round(side * math.sqrt(fraction * aspect))))
        top = int(u[2] * (side - height + 1))
        left = int(u[3] * (side - width + 1))
        crop = field[None, :, top : top + height, left : left + width]
        view = F.interpolate(
            crop, size=(out_side, out_side), mode="bilinear", antialias=True, align_corners=False
        )[0]
        # A mirrored pressure field stays geostrophic with its wind if one component changes
        # sign: v for an east-west flip, u for a north-south one.
        if u[4] < 0.5:
            view = view.flip(-1) * torch.tensor([1.0, 1.0, -1.0])[:, None, None]
        if u[5] < 0.5:
            view = view.flip(-2) * torch.tensor([1.0, -1.0, 1.0])[:, None, None]
        jitter = torch.randn(2, 3, 1, 1, generator=gen)
        view = view * (1 + 0.2 * jitter[0]) + 0.1 * jitter[1]
        if u[6] < 0.5:
            view = gaussian_blur(view, sigma=0.1 + 1.9 * u[7], size=blur_size)
        return view + 0.05 * torch.randn(view.shape, generator=gen)


def conv_block(channels_in: int, channels_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(channels_in, channels_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(channels_out),
        nn.ReLU(inplace=True),
    )


class SwAV(nn.Module):
    """CNN encoder, projection head and prototypes.

    Args:
        channels: input channels.
        width: channels of the first convolution.
        features: dimension of the projected, normalised features.
        prototypes: number of prototypes (clusters).
    """

    def __init__(self, channels: int, width: int, features: int, prototypes: int) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            conv_block(channels, width, 2),
            conv_block(width, 2 * width, 2),
            conv_block(2 * width, 4 * width, 1),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.projection = nn.Sequential(
            nn.Linear(4 * width, 4 * width),
            nn.BatchNorm1d(4 * width),
            nn.ReLU(inplace=True),
            nn.Linear(4 * width, features),
        )
        self.prototypes = nn.Linear(features, prototypes, bias=False)

    @torch.no_grad()
    def normalize_prototypes(self) -> None:
        """Puts the prototypes back on the unit sphere, as SwAV does before every step."""
        weight = self.prototypes.weight
        weight.copy_(F.normalize(weight, dim=1))

    def forward(self, views: list[torch.Tensor]) -> torch.Tensor:
        """Prototype scores (views x batch, prototypes), views in order; views of one
        resolution go through the encoder together."""
        sides = [view.shape[-1] for view in views]
        embeddings = []
        start = 0
        while start < len(views):
            end = start
            while end < len(views) and sides[end] == sides[start]:
                end += 1
            embeddings.append(self.encoder(torch.cat(views[start:end])))
            start = end
        features = F.normalize(self.projection(torch.cat(embeddings)), dim=1)
        return self.prototypes(features)


@torch.no_grad()
def sinkhorn(scores: torch.Tensor) -> torch.Tensor:
    """Soft assignments (batch, prototypes) that split the batch equally among the
    prototypes, by Sinkhorn-Knopp's alternate normalisation of rows and columns."""
    # Shifted by the maximum: exp(score / epsilon) overflows float32 otherwise.
    q = torch.exp((scores - scores.max()) / SINKHORN_EPSILON).t()
    q /= q.sum()
    prototypes, batch = q.shape
    for _ in range(SINKHORN_ITERATIONS):
        q /= q.sum(dim=1, keepdim=True)
        q /= prototypes
        q /= q.sum(dim=0, keepdim=True)
        q /= batch
    return (q * batch).t()


def swapped_prediction_loss(scores: torch.Tensor, batch: int) -> torch.Tensor:
    """SwAV's loss: each global crop's codes predicted from every other crop's scores."""
    per_view = scores.split(batch)
    log_probabilities = [F.log_softmax(view / TEMPERATURE, dim=1) for view in per_view]
    loss = scores.new_zeros(())
    for i in range(GLOBAL_CROPS):
        codes = sinkhorn(per_view[i].detach())
        others = [lp for j, lp in enumerate(log_probabilities) if j != i]
        loss = loss - sum((codes * lp).sum(dim=1).mean() for lp in others) / len(others)
    return loss / GLOBAL_CROPS


@contextlib.contextmanager
def cores_left_to_workers(config: AppConfig) -> Iterator[None]:
    """On the CPU, gives the main process's intra-op threads only the cores the workers leave
    free (one at least), and restores their number after.

    With torch's default of a thread per core the step's threads share the cores with the
    workers, and their waiting for each other slowed the step ten times and more on two
    cores (see the module's docstring).
    """
    threads = torch.get_num_threads()
    if config.device == "cpu" and config.workers:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        torch.set_num_threads(max(1, (cores or 1) - config.workers))
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def train(tmr: Timer, config: AppConfig, progress: Progress) -> dict[str, float]:
    """Trains the clustering; returns the last epoch's mean loss and how many prototypes the
    global crops of its samples were assigned to."""
    if config.scale < 12:
        raise ValueError(f"the grid side must be at least 12, not {config.scale}")
    device = torch.device(config.device)
    count = config.batches * config.batch_size
    data = MultiCropDataset(weather_fields(count, config.scale, config.seed), config.seed)
    loader = DataLoader(
        data,
        batch_size=config.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=config.workers,
        generator=torch.Generator().manual_seed(config.seed),
        pin_memory=config.gpu,
    )
    torch.manual_seed(config.seed)
    model = SwAV(channels=3, width=8, features=32, prototypes=PROTOTYPES).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-6)
    gpu = config.gpu
    batch = config.batch_size
    loss_sum = torch.zeros((), device=device)
    assigned = torch.zeros(PROTOTYPES, dtype=torch.long, device=device)
    with cores_left_to_workers(config):
        for epoch in range(config.epochs):
            data.set_epoch(epoch)
            # Summed on the device; read once per epoch, so no step waits for the GPU.
            loss_sum.zero_()
            assigned.zero_()
            with tmr.region(TimeType.EPOCH):
                model.train()
                for views in tmr.iterate(loader, TimeType.IO):
                    with tmr.region(TimeType.BATCH, gpu=gpu, items=len(views[0])):
                        with tmr.region(TimeType.FORWARD, gpu=gpu):
                            views = [view.to(device, non_blocking=True) for view in views]
                            model.normalize_prototypes()
                            scores = model(views)
                        with tmr.region("sinkhorn", gpu=gpu):
                            loss = swapped_prediction_loss(scores, batch)
                        with tmr.region(TimeType.BACKWARD, gpu=gpu):
                            loss.backward()
                        with tmr.region("optimizer", gpu=gpu):
                            optimizer.step()
                            optimizer.zero_grad(set_to_none=True)
                    loss_sum += loss.detach()
                    assigned += torch.bincount(
                        scores[:batch].detach().argmax(dim=1), minlength=PROTOTYPES
                    )
                    progress()
    return {
        "loss": loss_sum.item() / config.batches,
        "prototypes_used": float((assigned > 0).sum().item()),
    }


if __name__ == "__main__":
    raise SystemExit(APP.main(train))
