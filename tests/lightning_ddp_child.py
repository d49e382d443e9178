"""A Lightning ``fit`` under DDP (2 gloo processes on the CPU) with the TimerCallback's own timer.

Run as ``python tests/lightning_ddp_child.py ROOT_DIR``: Lightning starts rank 1 by running this
script again. Each rank writes ``ROOT_DIR/rank<r>.json`` (a file, not standard output, where the
ranks' lines could mix): its rank, the run id and its traces file. The timer takes
``MAELTRACE_OUTPUT_DIR`` and ``MAELTRACE_EXPORT`` from the environment.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from maeltrace.lightning import TimerCallback

SAMPLES, BATCH_SIZE, EPOCHS, WORLD = 64, 8, 2, 2
BATCHES_PER_RANK = SAMPLES // BATCH_SIZE // WORLD
"""Each rank's batches per epoch: Lightning's distributed sampler splits the samples."""


class Regression(pl.LightningModule):
    """A tiny linear regression."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        x, y = batch
        return torch.nn.functional.mse_loss(self.layer(x), y)

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def main(root: str) -> None:
    x = torch.randn(SAMPLES, 4, generator=torch.Generator().manual_seed(0))
    dataset = torch.utils.data.TensorDataset(x, x.sum(dim=1, keepdim=True))
    callback = TimerCallback()
    trainer = pl.Trainer(
        max_epochs=EPOCHS,
        accelerator="cpu",
        devices=WORLD,
        strategy="ddp",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
        callbacks=[callback],
    )
    trainer.fit(Regression(), torch.utils.data.DataLoader(dataset, batch_size=BATCH_SIZE))
    callback.timer.close()
    line = {
        "rank": trainer.global_rank,
        "run_id": callback.timer.run_id,
        "traces": str(callback.timer.traces_path),
    }
    Path(root, f"rank{trainer.global_rank}.json").write_text(json.dumps(line), encoding="utf-8")


if __name__ == "__main__":
    main(sys.argv[1])
