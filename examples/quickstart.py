"""Quick start: R3F in a plain PyTorch loop, on real data, in seconds on a CPU.

A small transformer reads each 8x8 scikit-learn digit as a sequence of 8 rows; its "token
embedding" is a Linear layer on the rows, so the noise goes there. The script fine-tunes the
same initialisation on a low-resource split with and without R3F and prints the effect.

    python examples/quickstart.py
"""

from __future__ import annotations

import time

import torch
from sklearn.datasets import load_digits
from torch import nn

import rxf


class RowTransformer(nn.Module):
    def __init__(self, dim: int = 64, classes: int = 10) -> None:
        super().__init__()
        self.embed_rows = nn.Linear(8, dim)  # the "token embedding": noise goes on its output
        self.positions = nn.Parameter(torch.zeros(8, dim))
        layer = nn.TransformerEncoderLayer(dim, 4, 128, dropout=0.1, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2)
        self.classifier = nn.Linear(dim, classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.encoder(self.embed_rows(images) + self.positions)
        return self.classifier(x.mean(1))


CONFIG = rxf.RXFConfig(eps=0.1, r3f_lambda=1.0, embedding="embed_rows")


def data() -> tuple[torch.Tensor, ...]:
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target)
    g = torch.Generator().manual_seed(0)
    order = torch.randperm(len(y), generator=g)
    train, test = order[:200], order[1000:]  # 20 examples per class: the low-resource regime
    return x[train], y[train], x[test], y[test]


def finetune(regularize: bool, seed: int = 0, epochs: int = 30) -> dict[str, float]:
    x, y, x_test, y_test = data()
    torch.manual_seed(seed)
    model: nn.Module = RowTransformer()
    if regularize:
        model = rxf.wrap(model, CONFIG)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    start, term = time.perf_counter(), 0.0
    for _ in range(epochs):
        model.train()
        for batch in torch.randperm(len(y)).split(32):
            logits = model(x[batch])
            loss = nn.functional.cross_entropy(logits, y[batch])
            if isinstance(model, rxf.RXFModel):
                loss = loss + model.consistency_loss
                term = model.last_stats["consistency_loss"]
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model(x_test).argmax(-1) == y_test).float().mean().item()
    return {"accuracy": accuracy, "last_term": term, "seconds": time.perf_counter() - start}


def main() -> None:
    print(rxf.explain(RowTransformer(), CONFIG), "\n")
    print(f"{'method':<10}{'seed':>5}{'test acc':>10}{'last λ·KL_S':>13}{'time (s)':>10}")
    for seed in (0, 1):
        for name, regularize in (("standard", False), ("R3F", True)):
            r = finetune(regularize, seed)
            print(
                f"{name:<10}{seed:>5}{r['accuracy']:>10.3f}{r['last_term']:>13.4f}"
                f"{r['seconds']:>10.1f}"
            )


if __name__ == "__main__":
    main()
