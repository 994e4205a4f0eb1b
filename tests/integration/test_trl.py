"""TRL ``SFTTrainer``: R3F (token-level, completion tokens only) and noise-only through rxf.

The plain ``SFTTrainer`` installs a fused LM-head forward on the wrapper that bypasses rxf;
the callback refuses it, and ``RXFSFTTrainer`` (same arguments) trains through the wrapper.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

import rxf
from tests.plugins.transformers.conftest import make_model

trl = pytest.importorskip("trl", reason="TRL is not installed (rxf[stacks])")
datasets = pytest.importorskip("datasets", reason="datasets is not installed (rxf[stacks])")

from rxf_transformers import RXFCallback  # noqa: E402
from rxf_transformers.sft import RXFSFTTrainer  # noqa: E402

WORDS = [f"w{i}" for i in range(40)]
PAD, EOS = 0, 2


def tokenizer() -> Any:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<pad>", "<unk>", "<eos>", *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", eos_token="<eos>"
    )


def prompt_completion(rows: int = 8) -> Any:
    g = torch.Generator().manual_seed(0)

    def text(n: int) -> str:
        return " ".join(WORDS[i] for i in torch.randint(0, 40, (n,), generator=g).tolist())

    return datasets.Dataset.from_list(
        [{"prompt": text(4 + i % 3), "completion": text(3)} for i in range(rows)]
    )


def llama() -> torch.nn.Module:
    return make_model("llama", eos_token_id=EOS, pad_token_id=PAD, bos_token_id=None)


def sft_config(tmp_path: Any, **overrides: Any) -> Any:
    """Two CPU steps of batch 4, logging every step, nothing saved."""
    return trl.SFTConfig(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        max_steps=2,
        logging_steps=1,
        learning_rate=1e-3,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        disable_tqdm=True,
        **overrides,
    )


def sft(
    trainer_class: type, model: torch.nn.Module, tmp_path: Any, rxf_callback: bool = True
) -> Any:
    args = sft_config(tmp_path, seed=0)
    return trainer_class(
        model=model,
        args=args,
        train_dataset=prompt_completion(),
        processing_class=tokenizer(),
        callbacks=[RXFCallback()] if rxf_callback else None,
    )


class CompletionMaskSpy:
    """Keeps the labels of each training forward (TRL masks the prompt with -100)."""

    def __init__(self, wrapped: rxf.RXFModel) -> None:
        self.labels: list[torch.Tensor] = []
        wrapped.module.register_forward_pre_hook(self.keep, with_kwargs=True)

    def keep(self, module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        if module.training and kwargs.get("labels") is not None:
            self.labels.append(kwargs["labels"].clone())


def test_plain_sft_trainer_bypassing_rxf_is_refused(tmp_path) -> None:
    trainer = sft(trl.SFTTrainer, rxf.wrap(llama(), eps=0.5), tmp_path)
    with pytest.raises(rxf.RXFError, match="RXFSFTTrainer"):
        trainer.train()


def test_rxf_sft_trainer_adds_the_token_level_term_on_completion_tokens(tmp_path) -> None:
    plain = sft(trl.SFTTrainer, llama(), tmp_path / "plain", rxf_callback=False)
    plain.train()
    reference = [e for e in plain.state.log_history if "loss" in e]

    wrapped = rxf.wrap(llama(), eps=0.5)
    spy = CompletionMaskSpy(wrapped)
    trainer = sft(RXFSFTTrainer, wrapped, tmp_path / "rxf")
    trainer.train()
    logs = [e for e in trainer.state.log_history if "loss" in e]
    assert len(logs) == len(reference) == 2
    first = logs[0]
    assert first["rxf_consistency_loss"] > 1e-6 and first["rxf_noise_to_signal"] > 0
    # dropout off, same seed and batches: the logged loss is TRL's task loss + the term
    assert first["loss"] - reference[0]["loss"] == pytest.approx(
        first["rxf_consistency_loss"], rel=1e-3, abs=1e-6
    )
    # the term counted the completion tokens only: TRL's labels mask the prompt
    labels = spy.labels[0]
    completion = int(labels[:, 1:].ne(-100).sum())
    assert 0 < completion < labels[:, 1:].numel()
    assert wrapped.last_stats["positions"] == int(spy.labels[-1][:, 1:].ne(-100).sum())


def test_rxf_sft_trainer_noise_only(tmp_path) -> None:
    wrapped = rxf.wrap(llama(), eps=5.0, noise_type="neftune", r3f_lambda=0.0)
    trainer = sft(RXFSFTTrainer, wrapped, tmp_path)
    trainer.train()
    assert wrapped.last_stats["mode"] == "noise_only"
    logs = [e for e in trainer.state.log_history if "loss" in e]
    assert logs[0]["rxf_noise_to_signal"] > 0


def test_docs_recipe(tmp_path) -> None:
    from tests.integration.recipes import run_recipe

    ns = run_recipe(
        "trl",
        model=llama(),
        train_dataset=prompt_completion(),
        tokenizer=tokenizer(),
        output_dir=str(tmp_path),
    )
    logs = [e for e in ns["trainer"].state.log_history if "loss" in e]
    assert logs and logs[-1]["rxf_noise_to_signal"] > 0


def test_rxf_sft_trainer_with_a_peft_config(tmp_path) -> None:
    peft = pytest.importorskip("peft", reason="PEFT is not installed (rxf[stacks])")
    wrapped = rxf.wrap(llama(), eps=0.5)
    args = sft_config(tmp_path)
    trainer = RXFSFTTrainer(
        model=wrapped,
        args=args,
        train_dataset=prompt_completion(),
        processing_class=tokenizer(),
        peft_config=peft.LoraConfig(target_modules=["q_proj", "v_proj"], r=4, lora_alpha=8),
    )
    trainer.train()
    logs = [e for e in trainer.state.log_history if "loss" in e]
    assert logs[0]["rxf_consistency_loss"] > 1e-6 and logs[0]["rxf_noise_to_signal"] > 0
    trained = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert trained and all("lora_" in n for n in trained)
    trainer.model.save_pretrained(str(tmp_path / "adapter"))
    plain = peft.PeftModel.from_pretrained(llama(), str(tmp_path / "adapter"))
    ids = torch.tensor([[5, 6, 7, 8]])
    trained = trainer.model.get_base_model().eval()  # the wrapper; the PeftModel's forward
    with torch.no_grad():  # runs under the Trainer's mixed-precision autocast (bf16 on CPU)
        torch.testing.assert_close(plain(input_ids=ids).logits, trained(input_ids=ids).logits)


def test_rxf_sft_trainer_with_rdrop_and_label_smoothing_averages_both_passes(tmp_path) -> None:
    """R-Drop under RXFSFTTrainer with label smoothing: the smoothed LM loss of both dropout
    passes (shifted, prompt masked), averaged, plus the term."""
    model = llama()
    for module in model.modules():
        if hasattr(module, "attention_dropout"):
            module.attention_dropout = 0.3
    wrapped = rxf.wrap(model, rxf.RXFConfig.preset("rdrop"))
    trainer = sft(RXFSFTTrainer, wrapped, tmp_path)
    trainer.args.label_smoothing_factor = 0.1
    from transformers.trainer_pt_utils import LabelSmoother

    trainer.label_smoother = LabelSmoother(epsilon=0.1)
    batch = next(iter(trainer.get_train_dataloader()))
    logits: list[torch.Tensor] = []
    handle = wrapped.module.register_forward_hook(lambda m, a, out: logits.append(out.logits))
    loss = trainer.compute_loss(wrapped, dict(batch))
    handle.remove()
    assert len(logits) == 2 and not torch.allclose(logits[0], logits[1])
    labels = batch["labels"][:, 1:]
    active = labels.ne(-100)

    def smoothed(x: torch.Tensor) -> torch.Tensor:
        logp = x[:, :-1].float().log_softmax(-1)[active]
        nll = -logp.gather(-1, labels[active][:, None]).mean()
        return 0.9 * nll + 0.1 * (-logp).mean()

    term = wrapped.consistency_loss
    assert float(term.detach()) > 0
    expected = (smoothed(logits[0]) + smoothed(logits[1])) / 2 + term
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
