"""AP2 analogue: a transformer encoder, trained by the Hugging Face Trainer, reads short weather
texts and says whether it rains.

The seed's Application 2 fine-tunes DeBERTa-v3-small (PyTorch) with the Hugging Face
``transformers.Trainer`` on about 1.6 million Tweets to predict whether it rained at the Tweet's
place and time, timed by a Trainer callback written around Deep500's timer. Here the Tweets are
synthetic: short texts of whitespace-separated words drawn from a small vocabulary of weather
words ("rain", "drizzle", "sunny"...), everyday words and a long Zipf tail of rare words
(``w0``, ``w1``...), between a third of ``scale`` and ``scale`` words long. A signal is planted
so that the model has something to learn, and a transformer a reason to look at context: rainy
texts mention rain words more often, and dry texts, when they mention rain, often negate it
("no rain"). About a third of the texts are rainy, and one label in twenty is flipped, as real
labels from rain gauges are noisy. The model is a small encoder initialised at random (nothing
is downloaded), an ``nn.Module`` that returns its loss as a Hugging Face model does.

The ``transformers.Trainer`` runs the loop and ``maeltrace.transformers.TimerCallback`` times it:
the Trainer's data loader tokenises and pads each batch in its data collator (the IO region, in
the main process), and the gradients are all-reduced over a ``torch.distributed`` process group
before the optimizer steps. The group is a gloo group of world size 1 set up through a file in a
temporary folder (no network port); the Trainer, on one process, neither sees nor wraps it, so
the app all-reduces the gradients itself at the end of each step's backward pass, where DDP's
reducer does it, and times that in a ``comm`` region inside ``backward``. **At world size 1 the
all-reduce moves nothing between processes, so the COMM row measures the collective's fixed cost
only** (the call, flattening the gradients into one bucket and copying them back), not the
network time a multi-process run would add.

Regions, and how they nest (the callback's docstring says what each of its regions holds)::

    epoch
    ├── io          one per batch: waiting for the tokenised, padded batch
    └── batch       one per batch: the training step, the batch's copy to the device included
        ├── forward     embedding, encoder, loss (the model's forward)
        ├── backward    loss.backward(), then
        │   └── comm    all-reduce of the flattened gradients (one bucket)
        └── optimizer   AdamW step

``scale`` is the longest text in words (the padded sequence is one longer, for the ``[CLS]``
token the classifier reads). ``--workers`` is not used: the texts are in memory and
tokenising a batch takes well under a millisecond, so worker processes would only add their
start-up. With ``--device cuda`` the model and batches go to the GPU (pinned host memory) and the
gradients are all-reduced by gloo on the GPU tensors.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.distributed as dist
import transformers
from _harness import App, AppConfig, Progress, Size
from torch import nn
from torch.nn import functional as F

from maeltrace import Timer, TimeType
from maeltrace.transformers import TimerCallback

APP = App(
    name="ap2-rain-transformer",
    title=(
        "AP2: transformer encoder classifying rain from short weather texts "
        "(Hugging Face Trainer, gloo)"
    ),
    framework="torch",
    seed_app="AP2",
    sizes={
        "tiny": Size(epochs=2, batches=4, batch_size=16, scale=16),
        "small": Size(epochs=3, batches=50, batch_size=32, scale=32),
        "medium": Size(epochs=4, batches=80, batch_size=64, scale=48),
    },
    regions=[
        TimeType.EPOCH,
        TimeType.IO,
        TimeType.BATCH,
        TimeType.FORWARD,
        TimeType.BACKWARD,
        TimeType.COMM,
        "optimizer",
    ],
)

PAD, CLS, UNK = "[PAD]", "[CLS]", "[UNK]"
# One word per line would hide the vocabulary; ruff's formatter leaves these lines as written.
# fmt: off
RAIN_WORDS = [
    "rain", "raining", "rainy", "drizzle", "shower", "showers", "downpour", "pouring", "umbrella",
    "wet", "soaked", "puddles", "storm", "thunder",
]
DRY_WORDS = [
    "sun", "sunny", "sunshine", "dry", "clear", "bright", "blue", "warm", "hot", "heatwave",
]
COMMON_WORDS = [
    "the", "a", "in", "at", "on", "today", "tonight", "morning", "afternoon", "this", "weekend",
    "city", "park", "walk", "home", "work", "coffee", "sky", "clouds", "cloudy", "grey", "wind",
    "windy", "cold", "mild", "weather", "forecast", "again", "still", "so",
]
# fmt: on
NEGATION = "no"
RARE_WORDS = 400
"""Words in the Zipf tail (``w0`` the most frequent); all are in the vocabulary."""
RAIN_FRACTION = 0.35
CUE_PROBABILITY = 0.15
"""Chance that a word is a weather cue (rain or dry word) rather than an everyday word."""
LABEL_NOISE = 0.05


def make_texts(count: int, max_words: int, seed: int) -> tuple[list[str], torch.Tensor]:
    """Synthetic weather texts and their rain labels (1: rain)."""
    gen = torch.Generator().manual_seed(seed)
    rain = torch.rand(count, generator=gen) < RAIN_FRACTION
    lengths = torch.randint(max(2, max_words // 3), max_words + 1, (count,), generator=gen)
    rare_weights = 1.0 / torch.arange(1, RARE_WORDS + 1, dtype=torch.float64)
    texts = []
    for is_rain, length in zip(rain.tolist(), lengths.tolist(), strict=True):
        draws = torch.rand(length, 3, generator=gen).tolist()
        rare = torch.multinomial(rare_weights, length, replacement=True, generator=gen).tolist()
        picks = torch.randint(0, 1 << 30, (length,), generator=gen).tolist()
        words: list[str] = []
        for (cue, kind, other), rank, pick in zip(draws, rare, picks, strict=True):
            if cue < CUE_PROBABILITY:
                # Rainy texts talk about rain; dry ones mostly about sun, and negate rain.
                if kind < (0.8 if is_rain else 0.25):
                    if not is_rain and other < 0.7:
                        words.append(NEGATION)
                    words.append(RAIN_WORDS[pick % len(RAIN_WORDS)])
                else:
                    words.append(DRY_WORDS[pick % len(DRY_WORDS)])
            elif other < 0.6:
                words.append(COMMON_WORDS[pick % len(COMMON_WORDS)])
            else:
                words.append(f"w{rank}")
        texts.append(" ".join(words[:max_words]))
    flipped = torch.rand(count, generator=gen) < LABEL_NOISE
    return texts, (rain ^ flipped).long()


class Tokenizer:
    """Whitespace tokeniser that pads a batch to its longest text, as a data collator does.

    Args:
        words: the vocabulary, after the special tokens.
    """

    def __init__(self, words: Sequence[str]) -> None:
        self.vocab = {word: index for index, word in enumerate([PAD, CLS, UNK, *words])}
        self.pad_id, self.cls_id, self.unk_id = (self.vocab[t] for t in (PAD, CLS, UNK))

    def __len__(self) -> int:
        return len(self.vocab)

    def __call__(self, batch: Sequence[tuple[str, int]]) -> dict[str, torch.Tensor]:
        """The Trainer's data collator: token ids (batch, 1 + longest), the padding mask (True:
        padding) and the labels, under the names of the model's arguments."""
        encoded = [
            [self.cls_id, *(self.vocab.get(word, self.unk_id) for word in text.split())]
            for text, _ in batch
        ]
        width = max(len(ids) for ids in encoded)
        ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        for row, tokens in enumerate(encoded):
            ids[row, : len(tokens)] = torch.tensor(tokens)
        labels = torch.tensor([label for _, label in batch], dtype=torch.long)
        return {"input_ids": ids, "padding_mask": ids == self.pad_id, "labels": labels}


class RainClassifier(nn.Module):
    """Pre-norm transformer encoder over word and position embeddings; classifies ``[CLS]``.

    Args:
        vocab_size: tokens in the vocabulary.
        max_tokens: longest padded sequence.
        width: model width.
        heads: attention heads.
        layers: encoder layers.
        pad_id: the padding token, whose embedding stays zero.
    """

    def __init__(
        self, vocab_size: int, max_tokens: int, width: int, heads: int, layers: int, pad_id: int
    ) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, width, padding_idx=pad_id)
        self.position = nn.Embedding(max_tokens, width)
        layer = nn.TransformerEncoderLayer(
            width, heads, dim_feedforward=4 * width, dropout=0.1, batch_first=True, norm_first=True
        )
        # Nested tensors only serve inference with padding; off, so no fast-path warning.
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, 2)

    def forward(
        self, input_ids: torch.Tensor, padding_mask: torch.Tensor, labels: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """The loss and the logits, as a Hugging Face model returns them to the Trainer."""
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        hidden = self.encoder(
            self.embed(input_ids) + self.position(positions), src_key_padding_mask=padding_mask
        )
        logits = self.head(self.norm(hidden[:, 0]))
        return {"loss": F.cross_entropy(logits, labels), "logits": logits}


@contextlib.contextmanager
def process_group() -> Iterator[int]:
    """A gloo process group of this one process, rendezvousing through a temporary file; yields
    the world size. A multi-process launch would use ``init_method="env://"`` instead."""
    with tempfile.TemporaryDirectory(prefix="ap2-gloo-") as folder:
        store = os.path.join(folder, "rendezvous")
        dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
        try:
            yield dist.get_world_size()
        finally:
            dist.destroy_process_group()


def all_reduce_gradients(parameters: Sequence[nn.Parameter], world_size: int) -> None:
    """Averages the gradients over the group in one flat bucket, as DDP's reducer does."""
    grads = [p.grad for p in parameters if p.grad is not None]
    bucket = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(bucket)
    bucket /= world_size
    offset = 0
    for grad in grads:
        grad.copy_(bucket[offset : offset + grad.numel()].view_as(grad))
        offset += grad.numel()


class RainTrainer(transformers.Trainer):
    """The Trainer, all-reducing the gradients at the end of each step's backward pass and
    keeping each batch's loss, logits and labels for the results.

    Args:
        tmr: the timer the ``comm`` regions go to.
        gpu: time the all-reduce on the device clock as well.
        **kwargs: the `transformers.Trainer`'s.
    """

    def __init__(self, tmr: Timer, gpu: bool, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.tmr = tmr
        self.gpu = gpu
        self.batches: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def training_step(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor | Any],
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor:
        loss = super().training_step(model, inputs, num_items_in_batch)
        # The step's last micro-batch: its backward pass has just finished, and DDP's reducer
        # would be all-reducing the accumulated gradients now.
        if self.accelerator.sync_gradients:
            with self.tmr.region(TimeType.COMM, gpu=self.gpu):
                parameters = [p for p in model.parameters() if p.requires_grad]
                all_reduce_gradients(parameters, dist.get_world_size())
        return loss

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor | Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> Any:
        loss, outputs = super().compute_loss(
            model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch
        )
        if model.training:
            # Kept on the device and read after training, so no step waits for the GPU.
            self.batches.append((loss.detach(), outputs["logits"].detach(), inputs["labels"]))
        return (loss, outputs) if return_outputs else loss


class BatchProgress(transformers.TrainerCallback):
    """Reports each micro-batch done to the harness's progress.

    Args:
        progress: the harness's progress counter.
    """

    def __init__(self, progress: Progress) -> None:
        self.progress = progress

    def on_substep_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.progress()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.progress()


def train(tmr: Timer, config: AppConfig, progress: Progress) -> dict[str, float]:
    """Fine-tunes the classifier with the Trainer; returns the last epoch's mean loss and
    accuracy."""
    texts, labels = make_texts(config.batches * config.batch_size, config.scale, config.seed)
    tokenizer = Tokenizer(
        [*RAIN_WORDS, *DRY_WORDS, *COMMON_WORDS, NEGATION, *(f"w{i}" for i in range(RARE_WORDS))]
    )
    torch.manual_seed(config.seed)
    model = RainClassifier(
        len(tokenizer), config.scale + 1, width=64, heads=4, layers=2, pad_id=tokenizer.pad_id
    )
    with tempfile.TemporaryDirectory(prefix="ap2-trainer-") as scratch:
        args = transformers.TrainingArguments(
            output_dir=scratch,  # nothing is saved; the run's files are the timer's
            use_cpu=not config.gpu,
            seed=config.seed,
            num_train_epochs=config.epochs,
            per_device_train_batch_size=config.batch_size,
            # The hand-written loop's optimisation: AdamW at a constant rate, no clipping.
            optim="adamw_torch",
            learning_rate=1e-3,
            weight_decay=0.01,
            lr_scheduler_type="constant",
            max_grad_norm=0.0,
            dataloader_drop_last=True,
            dataloader_num_workers=0,
            dataloader_pin_memory=config.gpu,
            save_strategy="no",
            logging_strategy="no",
            report_to="none",
            disable_tqdm=True,
        )
        trainer = RainTrainer(
            tmr,
            config.gpu,
            model=model,
            args=args,
            train_dataset=list(zip(texts, labels.tolist(), strict=True)),
            data_collator=tokenizer,
            callbacks=[TimerCallback(tmr, gpu=config.gpu), BatchProgress(progress)],
        )
        # Without tqdm the Trainer prints its logs; the app prints only the timer's table.
        trainer.remove_callback(transformers.PrinterCallback)
        # The group starts after the Trainer has chosen its device: on one process the Trainer
        # neither uses it nor wraps the model, and says so when it finds one already there.
        with process_group():
            trainer.train()
    last_epoch = trainer.batches[-config.batches :]
    loss_sum = sum(loss.item() for loss, _, _ in last_epoch)
    correct = sum(int((logits.argmax(dim=1) == target).sum()) for _, logits, target in last_epoch)
    return {
        "loss": loss_sum / config.batches,
        "accuracy": correct / (config.batches * config.batch_size),
    }


if __name__ == "__main__":
    raise SystemExit(APP.main(train))
