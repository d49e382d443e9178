"""AP4 analogue on Lightning: the PyTorch AP4's calibrating U-Net, trained by ``Trainer.fit``.

The model, the synthetic packed ensembles and the CRPS loss are those of
``ap4_postprocessing_torch``; only the loop changes hands. The app writes no timing code of its
own: `maeltrace.lightning.TimerCallback` records the same regions the PyTorch app times by
hand, from Lightning's hooks, so the two tables compare::

    epoch
    ├── io          one per batch: the wait for the loader (unpacking, standardising, collating)
    └── batch       one per batch: the training step
        ├── forward     the U-Net and the CRPS loss (``training_step``)
        ├── backward    loss.backward()
        └── optimizer   Adam's step

``--device cuda`` trains on the GPU (``accelerator="gpu"``) and times the step's regions on
the GPU's clock as well.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import ap4_postprocessing_torch as torch_ap4
import lightning.pytorch as pl
import torch
from _harness import AppConfig, Progress
from ap4_postprocessing_torch import (
    MEMBERS,
    EnsembleCalibrator,
    EnsembleDataset,
    gaussian_crps,
)
from torch.utils.data import DataLoader

import maeltrace.lightning
from maeltrace import Timer

APP = dataclasses.replace(
    torch_ap4.APP,
    name="ap4-postprocessing-lightning",
    title="AP4: U-Net calibrating a 10-member ensemble forecast with a CRPS loss (Lightning)",
    framework="lightning",
)
"""The PyTorch AP4's sizes and regions: the callback records the same keys the loop times."""


class Calibration(pl.LightningModule):
    """The calibrator, its CRPS loss and Adam, as a LightningModule; sums each epoch's CRPS of
    the calibrated forecast and of the raw ensemble on the device.

    Args:
        data: the training set (for its climatology).
        progress: called after every batch.
    """

    def __init__(self, data: EnsembleDataset, progress: Progress) -> None:
        super().__init__()
        self.model = EnsembleCalibrator(data.climate_std_k, width=16)
        self.climate_mean_k, self.climate_std_k = data.climate_mean_k, data.climate_std_k
        self.progress = progress
        self.crps_sum = torch.zeros(())
        self.raw_crps_sum = torch.zeros(())

    def on_train_epoch_start(self) -> None:
        # Summed on the device; read once at the end, so no step waits for the GPU.
        self.crps_sum = torch.zeros((), device=self.device)
        self.raw_crps_sum = torch.zeros((), device=self.device)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], index: int) -> torch.Tensor:
        inputs, truth_k = batch
        truth = (truth_k - self.climate_mean_k) / self.climate_std_k
        mean, std = self.model(inputs)
        loss = gaussian_crps(mean, std, truth)
        with torch.no_grad():
            self.crps_sum += loss.detach()
            members = inputs[:, :MEMBERS]
            spread = inputs[:, MEMBERS : MEMBERS + 1]
            self.raw_crps_sum += gaussian_crps(members.mean(dim=1, keepdim=True), spread, truth)
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, index: int) -> None:
        self.progress()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-3)


def train(tmr: Timer, config: AppConfig, progress: Progress) -> dict[str, float]:
    """Trains the calibrator with ``Trainer.fit``; returns what the PyTorch app returns: the last
    epoch's mean loss, and mean CRPS in kelvin of the calibrated and of the raw forecast."""
    if config.scale % 4:
        raise ValueError(f"the grid side must be divisible by 4, not {config.scale}")
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
    module = Calibration(data, progress)
    trainer = pl.Trainer(
        accelerator="gpu" if config.gpu else "cpu",
        devices=1,
        max_epochs=config.epochs,
        callbacks=[maeltrace.lightning.TimerCallback(tmr, gpu=config.gpu)],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, loader)
    crps = module.crps_sum.item() / config.batches
    return {
        "loss": crps,
        "crps_k": crps * data.climate_std_k,
        "raw_ensemble_crps_k": module.raw_crps_sum.item() * data.climate_std_k / config.batches,
    }


if __name__ == "__main__":
    raise SystemExit(APP.main(train))
