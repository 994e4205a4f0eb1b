"""Tiny fairseq-shaped models: fairseq's module names, forward signatures and outputs.

Written for the tests (fairseq itself is not installed). Like fairseq: token lookup, then
``embed_scale``, learned positions that skip padding, ``layernorm_embedding``, dropout;
RoBERTa's ``encoder.sentence_encoder`` and ``classification_heads[name].dense/out_proj``;
BART's encoder/decoder sharing one table, the decoder's output projection tied to it, and
classification from the decoder state at the last ``eos`` of ``src_tokens``. Layers are
PyTorch's batch-first transformer layers (fairseq's are time-first; not observable here).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

BOS, PAD, EOS = 0, 1, 2
VOCAB, DIM, MAX_POSITIONS = 24, 16, 32


class LearnedPositionalEmbedding(nn.Embedding):
    """Positions count from ``padding_idx + 1`` over non-pad tokens, as fairseq's."""

    def __init__(self, num: int, dim: int, padding_idx: int) -> None:
        super().__init__(num + padding_idx + 1, dim, padding_idx)

    def forward(self, tokens: Tensor) -> Tensor:  # type: ignore[override]
        mask = tokens.ne(self.padding_idx).int()
        positions = torch.cumsum(mask, dim=1) * mask + self.padding_idx
        return super().forward(positions.long())


def _layers(count: int, dropout: float, decoder: bool) -> nn.ModuleList:
    kind = nn.TransformerDecoderLayer if decoder else nn.TransformerEncoderLayer
    return nn.ModuleList(
        kind(DIM, 2, 2 * DIM, dropout=dropout, batch_first=True) for _ in range(count)
    )


class TransformerEncoder(nn.Module):
    """fairseq's ``TransformerEncoder``: ``forward_embedding`` then layers."""

    def __init__(self, embed_tokens: nn.Embedding, scale: bool, dropout: float) -> None:
        super().__init__()
        self.padding_idx = embed_tokens.padding_idx
        self.embed_tokens = embed_tokens
        self.embed_scale = math.sqrt(DIM) if scale else 1.0
        self.embed_positions = LearnedPositionalEmbedding(MAX_POSITIONS, DIM, PAD)
        self.layernorm_embedding = nn.LayerNorm(DIM)
        self.dropout_module = nn.Dropout(dropout)
        self.layers = _layers(2, dropout, decoder=False)

    def forward_embedding(
        self, src_tokens: Tensor, token_embedding: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        if token_embedding is None:
            token_embedding = self.embed_tokens(src_tokens)
        x = embed = self.embed_scale * token_embedding
        x = embed + self.embed_positions(src_tokens)
        return self.dropout_module(self.layernorm_embedding(x)), embed

    def forward(
        self,
        src_tokens: Tensor,
        src_lengths: Tensor | None = None,
        return_all_hiddens: bool = False,
        token_embeddings: Tensor | None = None,
    ) -> dict[str, list[Tensor]]:
        padding_mask = src_tokens.eq(self.padding_idx)
        x, embed = self.forward_embedding(src_tokens, token_embeddings)
        states = [x]
        for layer in self.layers:
            x = layer(x, src_key_padding_mask=padding_mask)
            states.append(x)
        return {
            "encoder_out": [x],
            "encoder_padding_mask": [padding_mask],
            "encoder_embedding": [embed],
            "encoder_states": states if return_all_hiddens else [],
        }


class TransformerDecoder(nn.Module):
    """fairseq's ``TransformerDecoder`` (causal; cross-attention unless an LM)."""

    def __init__(
        self, embed_tokens: nn.Embedding, scale: bool, dropout: float, no_encoder_attn: bool = False
    ) -> None:
        super().__init__()
        self.padding_idx = embed_tokens.padding_idx
        self.embed_tokens = embed_tokens
        self.embed_scale = math.sqrt(DIM) if scale else 1.0
        self.embed_positions = LearnedPositionalEmbedding(MAX_POSITIONS, DIM, PAD)
        self.layernorm_embedding = nn.LayerNorm(DIM)
        self.dropout_module = nn.Dropout(dropout)
        self.no_encoder_attn = no_encoder_attn
        self.layers = _layers(2, dropout, decoder=not no_encoder_attn)
        self.output_projection = nn.Linear(DIM, embed_tokens.num_embeddings, bias=False)
        self.output_projection.weight = embed_tokens.weight

    def forward(
        self,
        prev_output_tokens: Tensor,
        encoder_out: dict | None = None,
        features_only: bool = False,
        src_lengths: Tensor | None = None,
        return_all_hiddens: bool = False,
        **unused: Any,
    ) -> tuple[Tensor, dict]:
        x = self.embed_scale * self.embed_tokens(prev_output_tokens)
        x = x + self.embed_positions(prev_output_tokens)
        x = self.dropout_module(self.layernorm_embedding(x))
        length = prev_output_tokens.shape[1]
        causal = torch.ones(length, length, dtype=torch.bool).triu(1)
        padding_mask = prev_output_tokens.eq(self.padding_idx)
        states = [x]
        for layer in self.layers:
            if self.no_encoder_attn:
                x = layer(x, src_mask=causal, src_key_padding_mask=padding_mask)
            else:
                assert encoder_out is not None
                x = layer(
                    x,
                    encoder_out["encoder_out"][0],
                    tgt_mask=causal,
                    tgt_key_padding_mask=padding_mask,
                    memory_key_padding_mask=encoder_out["encoder_padding_mask"][0],
                )
            states.append(x)
        if not features_only:
            x = self.output_projection(x)
        return x, {"attn": [None], "inner_states": states}


class ClassificationHead(nn.Module):
    """RoBERTa/BART classification head: dense, tanh, dropout, ``out_proj``."""

    def __init__(
        self,
        input_dim: int,
        inner_dim: int,
        num_classes: int,
        dropout: float,
        take_first_token: bool,
    ) -> None:
        super().__init__()
        self.dense = nn.Linear(input_dim, inner_dim)
        self.activation_fn = torch.tanh
        self.dropout = nn.Dropout(dropout)
        self.out_proj = nn.Linear(inner_dim, num_classes)
        self.take_first_token = take_first_token

    def forward(self, features: Tensor, **kwargs: Any) -> Tensor:
        x = features[:, 0, :] if self.take_first_token else features
        x = self.dropout(self.activation_fn(self.dense(self.dropout(x))))
        return self.out_proj(x)


class RobertaLMHead(nn.Module):
    def __init__(self, weight: Tensor) -> None:
        super().__init__()
        self.dense = nn.Linear(DIM, DIM)
        self.layer_norm = nn.LayerNorm(DIM)
        self.weight = weight
        self.bias = nn.Parameter(torch.zeros(weight.shape[0]))

    def forward(self, features: Tensor, masked_tokens: Tensor | None = None) -> Tensor:
        if masked_tokens is not None:
            features = features[masked_tokens, :]
        return F.linear(self.layer_norm(F.gelu(self.dense(features))), self.weight) + self.bias


class RobertaEncoder(nn.Module):
    def __init__(self, dropout: float, scale: bool) -> None:
        super().__init__()
        embed = nn.Embedding(VOCAB, DIM, PAD)
        self.sentence_encoder = TransformerEncoder(embed, scale=scale, dropout=dropout)
        self.lm_head = RobertaLMHead(embed.weight)

    def forward(
        self,
        src_tokens: Tensor,
        features_only: bool = False,
        return_all_hiddens: bool = False,
        masked_tokens: Tensor | None = None,
        **unused: Any,
    ) -> tuple[Tensor, dict]:
        # like fairseq, unknown keywords (the released R3F's token_embeddings) are swallowed
        out = self.sentence_encoder(src_tokens, return_all_hiddens=return_all_hiddens)
        x = out["encoder_out"][0]
        if not features_only:
            x = self.lm_head(x, masked_tokens)
        return x, {"inner_states": out["encoder_states"] or None}


class RobertaModel(nn.Module):
    def __init__(self, dropout: float = 0.0, scale: bool = False) -> None:
        super().__init__()
        self.dropout = dropout
        self.encoder = RobertaEncoder(dropout, scale)
        self.classification_heads = nn.ModuleDict()

    def register_classification_head(
        self, name: str, num_classes: int, inner_dim: int | None = None
    ) -> None:
        self.classification_heads[name] = ClassificationHead(
            DIM, inner_dim or DIM, num_classes, self.dropout, take_first_token=True
        )

    def forward(
        self,
        src_tokens: Tensor,
        features_only: bool = False,
        return_all_hiddens: bool = False,
        classification_head_name: str | None = None,
        **kwargs: Any,
    ) -> tuple[Tensor, dict]:
        if classification_head_name is not None:
            features_only = True
        x, extra = self.encoder(src_tokens, features_only, return_all_hiddens, **kwargs)
        if classification_head_name is not None:
            x = self.classification_heads[classification_head_name](x)
        return x, extra


class BARTModel(nn.Module):
    """Encoder-decoder sharing one table (``share_all_embeddings``), √d scale optional."""

    def __init__(self, dropout: float = 0.0, scale: bool = True, share: bool = True) -> None:
        super().__init__()
        self.dropout = dropout
        self.eos = EOS
        enc_embed = nn.Embedding(VOCAB, DIM, PAD)
        dec_embed = enc_embed if share else nn.Embedding(VOCAB, DIM, PAD)
        self.encoder = TransformerEncoder(enc_embed, scale=scale, dropout=dropout)
        self.decoder = TransformerDecoder(dec_embed, scale=scale, dropout=dropout)
        self.classification_heads = nn.ModuleDict()

    def register_classification_head(
        self, name: str, num_classes: int, inner_dim: int | None = None
    ) -> None:
        self.classification_heads[name] = ClassificationHead(
            DIM, inner_dim or DIM, num_classes, self.dropout, take_first_token=False
        )

    def forward(
        self,
        src_tokens: Tensor,
        src_lengths: Tensor,
        prev_output_tokens: Tensor,
        features_only: bool = False,
        classification_head_name: str | None = None,
        token_embeddings: Tensor | None = None,
        return_all_hiddens: bool = True,
    ) -> tuple[Tensor, dict]:
        if classification_head_name is not None:
            features_only = True
        encoder_out = self.encoder(
            src_tokens,
            src_lengths=src_lengths,
            token_embeddings=token_embeddings,
            return_all_hiddens=return_all_hiddens,
        )
        x, extra = self.decoder(
            prev_output_tokens,
            encoder_out=encoder_out,
            features_only=features_only,
            src_lengths=src_lengths,
            return_all_hiddens=return_all_hiddens,
        )
        if classification_head_name is not None:
            sentence = x[src_tokens.eq(self.eos), :].view(x.size(0), -1, x.size(-1))[:, -1, :]
            x = self.classification_heads[classification_head_name](sentence)
        return x, extra


class TransformerLanguageModel(nn.Module):
    """Decoder-only LM: ``decoder.embed_tokens``, ``forward(src_tokens, **kwargs)``."""

    def __init__(self, dropout: float = 0.0) -> None:
        super().__init__()
        embed = nn.Embedding(VOCAB, DIM, PAD)
        self.decoder = TransformerDecoder(embed, scale=True, dropout=dropout, no_encoder_attn=True)

    def forward(self, src_tokens: Tensor, **kwargs: Any) -> tuple[Tensor, dict]:
        return self.decoder(src_tokens, **kwargs)


def pad_batch(sequences: list[list[int]]) -> Tensor:
    """Right-pad token lists with PAD (fairseq's default for sources and targets)."""
    width = max(map(len, sequences))
    return torch.tensor([s + [PAD] * (width - len(s)) for s in sequences])


def classification_sample(targets: list[int] | list[float]) -> dict[str, Any]:
    """A fairseq ``sample`` for sentence prediction: ``<s> tokens </s>`` padded."""
    g = torch.Generator().manual_seed(len(targets))
    rows = [
        [BOS, *torch.randint(4, VOCAB, (n,), generator=g).tolist(), EOS]
        for n in (5, 3, 6, 4)[: len(targets)]
    ]
    src = pad_batch(rows)
    return {
        "id": torch.arange(len(rows)),
        "net_input": {"src_tokens": src, "src_lengths": src.ne(PAD).sum(1)},
        "target": torch.tensor(targets),
        "ntokens": int(src.ne(PAD).sum()),
        "nsentences": len(rows),
    }


def seq2seq_sample() -> dict[str, Any]:
    """A fairseq translation-style ``sample``: target ends with EOS, prev_output_tokens is
    the target shifted right with EOS first, both right-padded."""
    g = torch.Generator().manual_seed(7)
    sources = [[*torch.randint(4, VOCAB, (n,), generator=g).tolist(), EOS] for n in (5, 3, 4)]
    targets = [[*torch.randint(4, VOCAB, (n,), generator=g).tolist(), EOS] for n in (4, 6, 2)]
    src, tgt = pad_batch(sources), pad_batch(targets)
    prev = pad_batch([[EOS, *t[:-1]] for t in targets])
    return {
        "id": torch.arange(3),
        "net_input": {
            "src_tokens": src,
            "src_lengths": src.ne(PAD).sum(1),
            "prev_output_tokens": prev,
        },
        "target": tgt,
        "ntokens": int(tgt.ne(PAD).sum()),
        "nsentences": 3,
    }
