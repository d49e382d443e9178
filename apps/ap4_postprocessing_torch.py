"""AP4 analogue, PyTorch: a U-Net turns a raw forecast ensemble into a calibrated forecast.

The seed's Application 4 post-processes the ensemble forecasts of the ENS-10 dataset (10
members of a numerical weather prediction ensemble on a latitude-longitude grid, stored as
NetCDF) with a U-Net trained with Adam, in PyTorch and TensorFlow; this is the PyTorch one.
The network predicts, at every grid point, the mean and spread of a Gaussian forecast of the
verifying analysis, and trains on the closed-form CRPS of that Gaussian, as ENS-10's baselines
do.

The synthetic data stands for one surface variable (2 m temperature, say) on a ``scale`` x
``scale`` grid. The truth is a smooth random field; each of the 10 members is the truth plus a
forecast error all members share, plus its own perturbation, plus a bias that follows a static
"orography" field. The raw ensemble is therefore biased and under-dispersive (its spread is
well below its error), which is what post-processing corrects. The input has 12 channels: the
members, their spread, and the orography, a static field as in ENS-10's baselines. Fields are
kept as NetCDF keeps packed data, 16-bit integers with a scale factor and an offset, and the
``Dataset`` unpacks and standardises each sample, so the IO region holds that decoding and the
collation, in the main process (``--workers`` is not used: the data is in memory).

Regions, and how they nest::

    epoch
    ├── io          one per batch: unpacking, standardising and collating the samples
    └── batch       one per batch: the training step
        ├── forward     copying the batch to the device, the U-Net, the CRPS loss
        ├── backward    loss.backward()
        └── optimizer   Adam step and zeroing the gradients

The U-Net (two levels, 16-32-64 channels, no normalisation layers), the Adam learning rate, the
input's channel count and the sizes match the TensorFlow variant, ``ap4_postprocessing_tf``,
so that the two frameworks' tables compare, as the seed's tables 4 and 5 do.

``scale`` is the grid side (divisible by 4: the U-Net halves it twice). With
``--device cuda`` the model and batches go to the GPU (pinned host memory, non-blocking
copies).
"""

from __future__ import annotations

import math

import torch
from _harness import App, AppConfig, Progress, Size
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset

from maeltrace import Timer, TimeType

APP = App(
    name="ap4-postprocessing-torch",
    title="AP4: U-Net calibrating a 10-member ensemble forecast with a CRPS loss (PyTorch)",
    framework="torch",
    seed_app="AP4",
    sizes={
        "tiny": Size(epochs=2, batches=4, batch_size=8, scale=16),
        "small": Size(epochs=3, batches=24, batch_size=16, scale=32),
        "medium": Size(epochs=3, batches=40, batch_size=16, scale=64),
    },
    regions=[
        TimeType.EPOCH,
        TimeType.IO,
        TimeType.BATCH,
        TimeType.FORWARD,
        TimeType.BACKWARD,
        "optimizer",
    ],
)

MEMBERS = 10
PACK_SCALE_K = 0.002
"""Kelvin per unit of the packed 16-bit values, NetCDF's ``scale_factor``."""
PACK_OFFSET_K = 280.0
"""Kelvin at packed value 0, NetCDF's ``add_offset``."""


def smooth_fields(count: int, side: int, coarse: int, gen: torch.Generator) -> torch.Tensor:
    """Random fields of unit-order amplitude varying on about ``side / coarse`` grid points:
    white noise on a ``coarse`` grid, interpolated bicubically."""
    noise = torch.randn(count, 1, coarse, coarse, generator=gen)
    return F.interpolate(noise, size=(side, side), mode="bicubic", align_corners=True)[:, 0]


def pack(kelvin: torch.Tensor) -> torch.Tensor:
    """Temperatures as NetCDF packs them: int16 with `PACK_SCALE_K` and `PACK_OFFSET_K`."""
    return torch.round((kelvin - PACK_OFFSET_K) / PACK_SCALE_K).clamp(-32767, 32767).short()


class EnsembleDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Synthetic forecast ensembles and their verifying analyses, packed.

    A sample is the network's input (the standardised members, their spread and the
    orography, as channels) and the verifying analysis in kelvin.

    Args:
        count: samples.
        side: grid side.
        seed: seed of the fields.
    """

    def __init__(self, count: int, side: int, seed: int) -> None:
        gen = torch.Generator().manual_seed(seed)
        coarse = max(4, side // 4)
        self.orography = smooth_fields(1, side, coarse, gen).abs()  # (1, side, side), >= 0
        truth = PACK_OFFSET_K + 5.0 * smooth_fields(count, side, coarse, gen)
        shared_error = 1.5 * smooth_fields(count, side, coarse, gen)
        members = torch.stack(
            [0.7 * smooth_fields(count, side, coarse, gen) for _ in range(MEMBERS)], dim=1
        )
        # Too warm over mountains, as raw 2 m temperature forecasts often are.
        bias = 2.0 * self.orography - 0.5
        forecast = truth[:, None] + shared_error[:, None] + members + bias
        self.members = pack(forecast)  # (count, MEMBERS, side, side)
        self.truth = pack(truth)  # (count, side, side)
        self.climate_mean_k = float(truth.mean())
        self.climate_std_k = float(truth.std())

    def __len__(self) -> int:
        return self.members.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        members = self.members[index].float() * PACK_SCALE_K + PACK_OFFSET_K
        truth = self.truth[index].float() * PACK_SCALE_K + PACK_OFFSET_K
        standardised = (members - self.climate_mean_k) / self.climate_std_k
        spread = standardised.std(dim=0, keepdim=True)
        inputs = torch.cat([standardised, spread, self.orography], dim=0)
        return inputs, truth[None]


def double_conv(channels_in: int, channels_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(channels_in, channels_out, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(channels_out, channels_out, 3, padding=1),
        nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    """Two-level U-Net with skip connections; two output channels per grid point.

    Args:
        channels_in: input channels.
        width: channels of the first level (doubled at each level down).
    """

    def __init__(self, channels_in: int, width: int) -> None:
        super().__init__()
        self.down1 = double_conv(channels_in, width)
        self.down2 = double_conv(width, 2 * width)
        self.bottom = double_conv(2 * width, 4 * width)
        self.up2 = nn.ConvTranspose2d(4 * width, 2 * width, 2, stride=2)
        self.dec2 = double_conv(4 * width, 2 * width)
        self.up1 = nn.ConvTranspose2d(2 * width, width, 2, stride=2)
        self.dec1 = double_conv(2 * width, width)
        self.out = nn.Conv2d(width, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip1 = self.down1(x)
        skip2 = self.down2(F.max_pool2d(skip1, 2))
        h = self.bottom(F.max_pool2d(skip2, 2))
        h = self.dec2(torch.cat([self.up2(h), skip2], dim=1))
        h = self.dec1(torch.cat([self.up1(h), skip1], dim=1))
        return self.out(h)


class EnsembleCalibrator(nn.Module):
    """Gaussian forecast from an ensemble: the U-Net corrects the ensemble's mean and scales
    its spread.

    Args:
        climate_std_k: the standard deviation the members were standardised by.
        width: U-Net width.
    """

    def __init__(self, climate_std_k: float, width: int) -> None:
        super().__init__()
        self.climate_std_k = climate_std_k
        self.unet = UNet(MEMBERS + 2, width)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and standard deviation (batch, 1, side, side), standardised units."""
        members = x[:, :MEMBERS]
        correction = self.unet(x)
        mean = members.mean(dim=1, keepdim=True) + correction[:, :1]
        spread = x[:, MEMBERS : MEMBERS + 1]
        # Starts at the raw spread; the floor keeps the CRPS finite.
        std = spread * torch.exp(correction[:, 1:]) + 1e-3
        return mean, std


def gaussian_crps(mean: torch.Tensor, std: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
    """Mean continuous ranked probability score of Gaussian forecasts (Gneiting et al. 2005)."""
    z = (observed - mean) / std
    pdf = torch.exp(-0.5 * z**2) / math.sqrt(2 * math.pi)
    cdf = 0.5 * (1 + torch.erf(z / math.sqrt(2)))
    return (std * (z * (2 * cdf - 1) + 2 * pdf - 1 / math.sqrt(math.pi))).mean()


def train(tmr: Timer, config: AppConfig, progress: Progress) -> dict[str, float]:
    """Trains the calibrator; returns the last epoch's mean loss (the CRPS in standardised
    units) and mean CRPS in kelvin of the calibrated forecast and of the raw ensemble read as a
    Gaussian."""
    if config.scale % 4:
        raise ValueError(f"the grid side must be divisible by 4, not {config.scale}")
    device = torch.device(config.device)
    data = EnsembleDataset(config.batches * config.batch_size, config.scale, config.seed)
    loader = DataLoader(
        data,
        batch_size=config.batch_size,
        shuffle=True,
        drop_last=True,
        generator=torch.Generator().manual_seed(config.seed),
        pin_memory=config.gpu,
    )
    torch.manual_seed(config.seed)
    model = EnsembleCalibrator(data.climate_std_k, width=16).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    gpu = config.gpu
    climate_mean_k, climate_std_k = data.climate_mean_k, data.climate_std_k
    crps_sum = torch.zeros((), device=device)
    raw_crps_sum = torch.zeros((), device=device)
    for _ in range(config.epochs):
        # Summed on the device; read once per epoch, so no step waits for the GPU.
        crps_sum.zero_()
        raw_crps_sum.zero_()
        with tmr.region(TimeType.EPOCH):
            model.train()
            for inputs, truth_k in tmr.iterate(loader, TimeType.IO):
                with tmr.region(TimeType.BATCH, gpu=gpu, items=len(inputs)):
                    with tmr.region(TimeType.FORWARD, gpu=gpu):
                        inputs = inputs.to(device, non_blocking=True)
                        truth_k = truth_k.to(device, non_blocking=True)
                        truth = (truth_k - climate_mean_k) / climate_std_k
                        mean, std = model(inputs)
                        loss = gaussian_crps(mean, std, truth)
                    with tmr.region(TimeType.BACKWARD, gpu=gpu):
                        loss.backward()
                    with tmr.region("optimizer", gpu=gpu):
                        optimizer.step()
                        optimizer.zero_grad(set_to_none=True)
                crps_sum += loss.detach()
                with torch.no_grad():
                    members = inputs[:, :MEMBERS]
                    spread = inputs[:, MEMBERS : MEMBERS + 1]
                    raw_crps_sum += gaussian_crps(members.mean(dim=1, keepdim=True), spread, truth)
                progress()
    crps = crps_sum.item() / config.batches
    return {
        "loss": crps,
        "crps_k": crps * climate_std_k,
        "raw_ensemble_crps_k": raw_crps_sum.item() * climate_std_k / config.batches,
    }


if __name__ == "__main__":
    raise SystemExit(APP.main(train))
