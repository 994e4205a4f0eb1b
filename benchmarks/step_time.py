"""Per-step cost of rxf against a plain step, a hand-written R3F loop, SMART and NEFTune.

Rows: plain steps; R3F written out by hand; rxf's R3F (two-pass, concat), noise-only and
NEFTune; transformers' NEFTune hook; rxf's R-Drop and SMART (K = 1, 2 ascent steps) presets;
smart-pytorch's ``SMARTLoss`` at the same K.

Every variant trains the same BERT-style classifier (built from a config, no downloads) on
the same random batch. Steps of all variants are interleaved (a new seeded random order in
every repetition, so no variant always runs after the same one), so a slow moment of the
machine hits them alike; the table shows medians, and
ratios as the median over repetitions of the per-repetition ratio. Peak memory is measured
in a separate pass (see ``docs/performance.md``).

Run:
    python benchmarks/step_time.py            # tiny and base size, a few minutes on 2 cores
    python benchmarks/step_time.py --quick    # fewer repetitions, shorter base sequences
    python benchmarks/step_time.py --device cuda --sizes base --batch 32 --seq 128
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import platform
import random
import statistics
import subprocess
import sys
import time
import warnings
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import rxf

EPS, LAMBDA, NEFTUNE_ALPHA = 1e-5, 1.0, 5.0
SMART_STEP_SIZE, SMART_INIT_STD = 1e-3, 1e-5  # eta and sigma, rxf's preset = smart-pytorch's
SMART_STEPS = (1, 2)  # K, the ascent steps, for rxf SMART and smart-pytorch alike
SIZES = {
    "tiny": dict(
        hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=512
    ),
    "base": dict(
        hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072
    ),
}
Step = Callable[[], None]
#: (row, reference row, target ratio or None): paired ratios printed under each table
COMPARISONS = [
    ("rxf R3F two-pass", "hand-written R3F", 1.03),
    ("rxf R-Drop", "rxf R3F two-pass", 1.03),
    *(
        (f"rxf SMART K={k}", f"SMART (smart-pytorch) K={k}", 0.9 if k == 1 else None)
        for k in SMART_STEPS
    ),
    ("rxf SMART K=1", "SMART (smart-pytorch README) K=1", None),
]


@dataclass
class Setting:
    size: str
    batch: int
    seq: int
    reps: int


def build_model(size: str, device: torch.device) -> torch.nn.Module:
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, num_labels=2, **SIZES[size])
    return BertForSequenceClassification(config).to(device).train()


def make_batch(batch: int, seq: int, device: torch.device) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 30000, (batch, seq), generator=g)
    mask = torch.ones_like(ids)
    mask[: batch // 2, seq - seq // 4 :] = 0  # some padding, as in real batches
    labels = torch.randint(0, 2, (batch,), generator=g)
    return {
        k: v.to(device)
        for k, v in {"input_ids": ids, "attention_mask": mask, "labels": labels}.items()
    }


def sym_kl_reference(clean: torch.Tensor, noisy: torch.Tensor) -> torch.Tensor:
    """fairseq's sentence_prediction_r3f formula: float32 softmaxes, summed, / batch size."""
    return (
        F.kl_div(
            F.log_softmax(noisy, -1, dtype=torch.float32),
            F.softmax(clean, -1, dtype=torch.float32),
            reduction="sum",
        )
        + F.kl_div(
            F.log_softmax(clean, -1, dtype=torch.float32),
            F.softmax(noisy, -1, dtype=torch.float32),
            reduction="sum",
        )
    ) / noisy.size(0)


def variants(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, Step]:
    """name -> one training step (forward, backward, SGD update) on the shared ``model``."""
    opt = torch.optim.SGD(model.parameters(), lr=1e-6, foreach=False)  # no temporaries
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    embed = model.get_input_embeddings()

    def train(loss_fn: Callable[[], torch.Tensor]) -> Step:
        def step() -> None:
            opt.zero_grad(set_to_none=True)
            loss_fn().backward()
            opt.step()

        return step

    def hand_r3f() -> torch.Tensor:  # the reference method written out, no library
        out = model(**batch)
        tokens = embed(batch["input_ids"]).detach()
        noise = torch.empty_like(tokens, dtype=torch.float32).uniform_(-EPS, EPS)
        noisy = model(
            inputs_embeds=(tokens + noise).to(tokens.dtype), attention_mask=batch["attention_mask"]
        )
        return out.loss + LAMBDA * sym_kl_reference(out.logits, noisy.logits)

    steps = {
        "plain": train(lambda: model(**batch).loss),
        "plain again (noise floor)": train(lambda: model(**batch).loss),
        "hand-written R3F": train(hand_r3f),
    }
    for name, cfg in {
        "rxf R3F two-pass": dict(eps=EPS, r3f_lambda=LAMBDA),
        "rxf R3F concat": dict(eps=EPS, r3f_lambda=LAMBDA, mode="concat"),
        "rxf noise-only (λ=0)": dict(eps=EPS, r3f_lambda=0.0),
        "rxf NEFTune noise (λ=0)": dict(eps=NEFTUNE_ALPHA, r3f_lambda=0.0, noise_type="neftune"),
    }.items():
        wrapped = rxf.wrap(model, **cfg)
        steps[name] = train(lambda w=wrapped: w(**batch).loss)
    steps["transformers NEFTune"] = _neftune_step(model, batch, train)
    presets = {"rxf R-Drop": rxf.RXFConfig.preset("rdrop", r3f_lambda=LAMBDA)}
    for k in SMART_STEPS:
        presets[f"rxf SMART K={k}"] = rxf.RXFConfig.preset(
            "smart",
            eps=EPS,
            r3f_lambda=LAMBDA,
            smart_init_std=SMART_INIT_STD,
            smart_step_size=SMART_STEP_SIZE,
            smart_steps=k,
        )
    for name, config in presets.items():
        wrapped = rxf.wrap(model, config)
        steps[name] = train(lambda w=wrapped: w(**batch).loss)
    for k in SMART_STEPS:
        smart = _smart_step(model, batch, inputs, train, num_steps=k)
        if smart is not None:
            steps[f"SMART (smart-pytorch) K={k}"] = smart
    readme = _smart_readme_step(model, batch, train)
    if readme is not None:
        steps["SMART (smart-pytorch README) K=1"] = readme
    return steps


def _neftune_step(
    model: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    train: Callable[[Callable[[], torch.Tensor]], Step],
) -> Step:
    """transformers' own NEFTune: its forward hook, attached for the step only."""
    from transformers.integrations.neftune import activate_neftune, deactivate_neftune

    inner = train(lambda: model(**batch).loss)

    def step() -> None:
        handle = activate_neftune(model, NEFTUNE_ALPHA)
        try:
            inner()
        finally:
            deactivate_neftune(model, handle)

    return step


def _smart_step(
    model: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    inputs: dict[str, torch.Tensor],
    train: Callable[[Callable[[], torch.Tensor]], Step],
    num_steps: int = 1,
) -> Step | None:
    """smart-pytorch used lean (its cheapest correct use), ``num_steps`` ascent steps on the
    perturbation of the token-embedding output (where rxf perturbs): the lookup runs once,
    its output is the clean pass's ``inputs_embeds`` and ``SMARTLoss``'s ``embed``, so the
    embedding table gets one backward; ``eval_fn`` is the model on ``inputs_embeds``,
    ``kl_loss`` inside the ascent, ``sym_kl_loss`` last, weight ``LAMBDA``. Its ``step_size``
    and ``noise_var`` (the standard deviation of the initial noise) are rxf's eta and sigma;
    its ``epsilon`` is only a stabiliser of the normalisation (it has no projection radius),
    left at its default."""
    try:
        from smart_pytorch import SMARTLoss, kl_loss, sym_kl_loss
    except ImportError:
        return None
    embed = model.get_input_embeddings()
    mask = inputs["attention_mask"]
    smart = SMARTLoss(
        eval_fn=lambda e: model(inputs_embeds=e, attention_mask=mask).logits,
        loss_fn=kl_loss,
        loss_last_fn=sym_kl_loss,
        num_steps=num_steps,
        step_size=SMART_STEP_SIZE,
        noise_var=SMART_INIT_STD,
    )

    def loss() -> torch.Tensor:
        embeddings = embed(inputs["input_ids"])
        out = model(inputs_embeds=embeddings, attention_mask=mask, labels=batch["labels"])
        return out.loss + LAMBDA * smart(embeddings, out.logits)

    return train(loss)


def _smart_readme_step(
    model: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    train: Callable[[Callable[[], torch.Tensor]], Step],
) -> Step | None:
    """smart-pytorch's "BERT Classification Example" as its README writes it (K = 1): the
    clean output from ``model(**inputs)``, then ``embed = model.bert.embeddings(input_ids)``
    computed again (a second embedding forward and, in the backward, a second gradient of
    the embedding table), ``eval_fn`` = ``model.bert(inputs_embeds=embed)`` + the classifier
    + ``log_softmax``, ``kl_div(batchmean, log_target=True)`` for the ascent and the last
    term. Kept as written, also where it is wrong: ``inputs_embeds`` passes the finished
    embeddings through BERT's embedding layer again (position and type embeddings and the
    LayerNorm twice). The attention mask is added (the README's one text has no padding)."""
    try:
        from smart_pytorch import SMARTLoss
    except ImportError:
        return None
    bert, classifier = getattr(model, "bert", None), getattr(model, "classifier", None)
    if bert is None or classifier is None:  # the README example is for BERT classifiers
        return None
    mask = batch["attention_mask"]

    def eval_fn(embed: torch.Tensor) -> torch.Tensor:
        pooled = bert(inputs_embeds=embed, attention_mask=mask)[1]
        return F.log_softmax(classifier(pooled), dim=1)

    smart = SMARTLoss(
        eval_fn=eval_fn,
        loss_fn=lambda x, y: F.kl_div(x, y, reduction="batchmean", log_target=True),
        num_steps=1,
        step_size=SMART_STEP_SIZE,
        noise_var=SMART_INIT_STD,
    )

    def loss() -> torch.Tensor:
        out = model(**batch)
        embed = bert.embeddings(batch["input_ids"])
        return out.loss + LAMBDA * smart(embed, F.log_softmax(out.logits, dim=1))

    return train(loss)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(
    steps: dict[str, Step], reps: int, warmup: int, device: torch.device, clock: str = "wall"
) -> dict[str, list[float]]:
    now = time.perf_counter if clock == "wall" else time.process_time
    names = list(steps)
    for name in names:
        for _ in range(warmup):
            steps[name]()
    times: dict[str, list[float]] = {n: [] for n in names}
    shuffle = random.Random(0)
    for _ in range(reps):
        # a random order, not a rotation: in a rotation each variant nearly always follows
        # the same one, and on CPU a step runs faster after a step that freed buffers of
        # the sizes it needs (the "plain again" row after "plain" ran 4-9 % faster)
        order = shuffle.sample(names, len(names))
        for name in order:
            _sync(device)
            start = now()
            steps[name]()
            _sync(device)
            times[name].append(now() - start)
    return times


class PeakTracker(TorchDispatchMode):
    """Bytes of tensor storage allocated inside the mode and still alive; the peak of that.

    Every op's outputs are seen at dispatch (forward and backward); a storage counts from
    its first appearance until it is freed (a weakref finalizer on the storage). Memory that
    existed before (the parameters) is not counted.
    """

    def __init__(self) -> None:
        super().__init__()
        self.live, self.peak, self.sizes = 0, 0, {}

    def _free(self, key: int) -> None:
        self.live -= self.sizes.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        inputs = {
            t.untyped_storage().data_ptr()
            for t in tree_leaves((args, kwargs))
            if isinstance(t, torch.Tensor)
        }
        for tensor in tree_leaves(out):
            if not isinstance(tensor, torch.Tensor):
                continue
            storage = tensor.untyped_storage()
            key, size = storage.data_ptr(), storage.nbytes()
            if size == 0 or key in self.sizes or key in inputs:  # in-place: not new memory
                continue
            self.sizes[key] = size
            self.live += size
            self.peak = max(self.peak, self.live)
            weakref.finalize(storage, self._free, key)
        return out


def peak_memory(step: Step) -> float:
    """Peak MiB allocated during one step: activations, gradients and temporaries."""
    with _quiet(), PeakTracker() as tracker:
        step()
    return tracker.peak / 2**20


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def import_time(runs: int = 5) -> float:
    code = "import time; t = time.perf_counter(); import rxf; print(time.perf_counter() - t)"
    samples = [
        float(subprocess.check_output([sys.executable, "-c", code], text=True)) for _ in range(runs)
    ]
    return statistics.median(samples)


def wrap_time(model: torch.nn.Module, runs: int = 20) -> tuple[float, float]:
    """(first wrap, including plugin discovery; median of later wraps) in seconds."""
    from rxf.plugins import reset_plugin_manager

    reset_plugin_manager()
    start = time.perf_counter()
    rxf.wrap(model)
    first = time.perf_counter() - start
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        rxf.wrap(model)
        samples.append(time.perf_counter() - start)
    return first, statistics.median(samples)


def paired_ratio(times: list[float], reference: list[float]) -> float:
    """Median over repetitions of time / reference time of the same repetition: the two
    ran seconds apart, so slow phases of the machine cancel out."""
    return statistics.median(t / r for t, r in zip(times, reference, strict=True))


def report(setting: Setting, times: dict[str, list[float]], memory: dict[str, float | None]) -> str:
    med = {n: statistics.median(t) for n, t in times.items()}
    lines = [
        f"### {setting.size}: batch {setting.batch} × {setting.seq} tokens, "
        f"{setting.reps} interleaved repetitions",
        "",
        "| variant | median step (ms) | IQR (ms) | × plain | × hand-written R3F "
        "| peak memory (MiB) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, value in med.items():
        q = statistics.quantiles(times[name], n=4) if len(times[name]) > 1 else [value] * 3
        mem = memory.get(name)
        lines.append(
            f"| {name} | {value * 1e3:.1f} | {(q[2] - q[0]) * 1e3:.1f} | "
            f"{paired_ratio(times[name], times['plain']):.3f} | "
            f"{paired_ratio(times[name], times['hand-written R3F']):.3f} | "
            f"{'n/a' if mem is None else f'{mem:.1f}'} |"
        )
    pairs = [c for c in COMPARISONS if c[0] in times and c[1] in times]
    if pairs:
        lines += ["", "| paired ratio | median | target |", "|---|---:|---|"]
    for name, reference, target in pairs:
        ratio = paired_ratio(times[name], times[reference])
        verdict = "" if target is None else f"≤ {target} {'✓' if ratio <= target else '✗'}"
        lines.append(f"| {name} × {reference} | {ratio:.3f} | {verdict} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions, shorter base")
    parser.add_argument("--sizes", default="tiny,base", help="comma-separated: tiny, base")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, help="batch size (default per size)")
    parser.add_argument("--seq", type=int, help="sequence length (default per size)")
    parser.add_argument("--reps", type=int, help="interleaved repetitions (default per size)")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory pass")
    parser.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="wall: elapsed time; cpu: CPU time of this process (robust on a shared machine)",
    )
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=FutureWarning)
    defaults = {
        "tiny": Setting("tiny", 16, 64, 15 if args.quick else 40),
        "base": Setting("base", 4, 32 if args.quick else 64, 4 if args.quick else 10),
    }
    print(
        f"# rxf step-time benchmark\n\nmachine: {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} torch threads, device {device}, {args.clock} clock"
        f"{' (' + torch.cuda.get_device_name(device) + ')' if device.type == 'cuda' else ''}; "
        f"torch {torch.__version__}, python {platform.python_version()}\n"
        f"command: python {' '.join(sys.argv)}\n"
    )
    for size in args.sizes.split(","):
        base = defaults[size]
        setting = Setting(
            size, args.batch or base.batch, args.seq or base.seq, args.reps or base.reps
        )
        model = build_model(size, device)
        batch = make_batch(setting.batch, setting.seq, device)
        steps = variants(model, batch)
        times = time_steps(steps, setting.reps, warmup=2, device=device, clock=args.clock)
        memory = {} if args.no_memory else {n: peak_memory(s) for n, s in steps.items()}
        print(report(setting, times, memory), "\n", flush=True)
        if size == "base":
            first, later = wrap_time(copy.deepcopy(model).cpu())
            print(
                f"wrap() on the base model: first {first * 1e3:.1f} ms (plugin discovery "
                f"included), then {later * 1e3:.2f} ms\n"
            )
    print(f"import rxf: {import_time() * 1e3:.1f} ms (median of 5 fresh interpreters)")


if __name__ == "__main__":
    main()
