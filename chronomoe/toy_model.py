"""A toy Mixture-of-Experts language model, its synthetic data and its optimizer (pure torch, CPU-sized).

What :mod:`chronomoe.demo` trains, and what the tests and benchmarks use as a
real MoE model to attach a :class:`~chronomoe.Monitor` to.

The model (:class:`DemoMoEModel`, sizes in :class:`DemoConfig`): token and
learned position embeddings, 4 pre-norm blocks of causal self-attention and a
top-1 routed MoE of 8 SwiGLU experts, a linear head. The MoE block calls its
experts as ``self.experts(hidden_states, top_k_index, top_k_weights)`` and the
experts module has ``num_experts``: the transformers 5 convention that
``monitor.attach`` recognises (layer ids from the ``layers.N`` module path).
Each MoE block keeps the Switch load-balancing loss of its last forward; the
model returns their sum next to the logits, for the training objective to
weight.

The data (:func:`make_corpus`): sequences from 8 topics, each a random sparse
Markov chain over 128 tokens whose successors and noise tokens are drawn from
a Zipf(1.5) distribution. :func:`batch_at` cycles through it, one batch per
training step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

LEARNING_RATE = 3e-3
"""AdamW learning rate of every parameter (:func:`make_optimizer`)."""
CORPUS_SEQUENCES = 2048
"""Sequences :func:`make_corpus` draws by default."""


@dataclass(frozen=True)
class DemoConfig:
    """Sizes of the toy model and of its synthetic data (all counts, except where noted).

    ``capacity_factor=None`` makes the experts dropless (every routed token is
    processed); a number gives each expert a fixed capacity of
    ``ceil(capacity_factor * tokens * top_k / n_experts)`` tokens per forward
    and drops the rest (see :class:`DemoExperts`).
    """

    vocab_size: int = 128
    seq_len: int = 64
    batch_size: int = 16
    hidden_size: int = 64
    n_heads: int = 4
    n_layers: int = 4
    n_experts: int = 8
    top_k: int = 1
    expert_hidden_size: int = 128
    capacity_factor: float | None = None
    n_topics: int = 8
    successors_per_token: int = 4
    zipf_exponent: float = 1.5
    noise_share: float = 0.1
    """Fraction of tokens drawn from the Zipf distribution instead of the topic's chain."""


class DemoExperts(nn.Module):
    """``n_experts`` SwiGLU experts applied to the tokens the router sent them.

    ``forward(hidden_states [T, H], top_k_index [T, k] int64, top_k_weights [T, k])
    -> [T, H]``: the weighted sum of each token's experts' outputs.

    Two dispatches, the same result when no token is dropped:

    * dropless (``capacity_factor=None``): tokens grouped by expert, one matmul
      per expert; the group sizes are read on the host (a device sync per call
      on a GPU, free on a CPU);
    * fixed capacity: each expert takes the first ``capacity`` of its tokens in
      token order into a ``[n_experts, capacity, H]`` buffer (batched matmuls,
      fixed shapes, no host sync); later tokens get no output from that expert.
    """

    def __init__(self, config: DemoConfig) -> None:
        super().__init__()
        self.num_experts = config.n_experts
        self.capacity_factor = config.capacity_factor
        self.gate_up_proj = nn.Parameter(
            torch.randn(config.n_experts, config.hidden_size, 2 * config.expert_hidden_size) * config.hidden_size**-0.5
        )
        self.down_proj = nn.Parameter(
            torch.randn(config.n_experts, config.expert_hidden_size, config.hidden_size)
            * config.expert_hidden_size**-0.5
        )

    def capacity(self, tokens: int, top_k: int) -> int:
        """Tokens each expert processes per forward (``tokens`` when dropless)."""
        if self.capacity_factor is None:
            return tokens
        return min(tokens, max(1, math.ceil(self.capacity_factor * tokens * top_k / self.num_experts)))

    def forward(
        self, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor
    ) -> torch.Tensor:
        if self.capacity_factor is None:
            return self._dropless(hidden_states, top_k_index, top_k_weights)
        return self._fixed_capacity(hidden_states, top_k_index, top_k_weights)

    def _expert_mlp(self, rows: torch.Tensor, expert: int | slice) -> torch.Tensor:
        gate, up = (rows @ self.gate_up_proj[expert].to(rows.dtype)).chunk(2, dim=-1)
        return (F.silu(gate) * up) @ self.down_proj[expert].to(rows.dtype)

    def _dropless(
        self, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor
    ) -> torch.Tensor:
        top_k = top_k_index.shape[-1]
        flat_expert = top_k_index.reshape(-1)
        order = flat_expert.argsort(stable=True)
        token_of = order // top_k
        sizes = torch.bincount(flat_expert, minlength=self.num_experts).tolist()
        outputs = [
            self._expert_mlp(rows, expert) for expert, rows in enumerate(torch.split(hidden_states[token_of], sizes))
        ]
        weighted = torch.cat(outputs) * top_k_weights.reshape(-1, 1)[order].to(hidden_states.dtype)
        return torch.zeros_like(hidden_states).index_add(0, token_of, weighted)

    def _fixed_capacity(
        self, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor
    ) -> torch.Tensor:
        tokens, hidden = hidden_states.shape
        top_k = top_k_index.shape[-1]
        n_experts = self.num_experts
        capacity = self.capacity(tokens, top_k)
        flat_expert = top_k_index.reshape(-1)
        chosen = (flat_expert[:, None] == torch.arange(n_experts, device=flat_expert.device)).to(torch.int32)
        queue_position = ((chosen.cumsum(0) - 1) * chosen).sum(-1)
        # Dropped assignments all point at one spare row past the buffer, which is discarded.
        slot = torch.where(queue_position < capacity, flat_expert * capacity + queue_position, n_experts * capacity)
        rows = hidden_states.repeat_interleave(top_k, dim=0)
        buffer = hidden_states.new_zeros(n_experts * capacity + 1, hidden).index_add(0, slot, rows)
        expert_out = self._expert_mlp(buffer[:-1].view(n_experts, capacity, hidden), slice(None))
        padded = torch.cat([expert_out.reshape(n_experts * capacity, hidden), expert_out.new_zeros(1, hidden)])
        weighted = padded[slot] * top_k_weights.reshape(-1, 1).to(padded.dtype)
        return weighted.view(tokens, top_k, hidden).sum(1).to(hidden_states.dtype)


class DemoRouter(nn.Module):
    """Linear router with bias: softmax over experts, the top-k experts, their probabilities as weights.

    ``forward(hidden_states [T, H]) -> (router_logits [T, E] float32, top_k_weights [T, k]
    float32, top_k_index [T, k] int64)``, the transformers 5 router convention.
    Weights are not renormalised over the top k (Switch), so the router learns
    from how much each chosen expert helps.
    """

    def __init__(self, config: DemoConfig) -> None:
        super().__init__()
        self.top_k = config.top_k
        # Small initial weights: routing starts close to input-independent.
        self.weight = nn.Parameter(torch.randn(config.n_experts, config.hidden_size) * 0.1 * config.hidden_size**-0.5)
        self.bias = nn.Parameter(torch.zeros(config.n_experts))

    def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        router_logits = F.linear(hidden_states, self.weight, self.bias).float()
        top_k_weights, top_k_index = router_logits.softmax(dim=-1).topk(self.top_k, dim=-1)
        return router_logits, top_k_weights, top_k_index


class DemoMoE(nn.Module):
    """Routed MoE block: ``forward([B, S, H]) -> [B, S, H]``.

    Keeps ``balance_loss`` of its last forward (absent before the first): the
    Switch load-balancing loss ``n_experts * sum_e f_e * P_e`` (``f_e``: share
    of the token-to-expert assignments that went to ``e``; ``P_e``: mean router
    probability of ``e``), 1.0 for perfectly balanced routing, up to
    ``n_experts`` when collapsed.
    """

    balance_loss: torch.Tensor
    """Scalar, with the graph of the last forward."""

    def __init__(self, config: DemoConfig) -> None:
        super().__init__()
        self.top_k = config.top_k
        self.gate = DemoRouter(config)
        self.experts = DemoExperts(config)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        batch, seq, hidden = hidden_states.shape
        flat = hidden_states.reshape(-1, hidden)
        router_logits, top_k_weights, top_k_index = self.gate(flat)
        probs = router_logits.softmax(dim=-1)
        assignments = top_k_index.reshape(-1)
        assignment_share = torch.zeros_like(probs[0]).index_add(
            0, assignments, torch.full_like(assignments, 1.0 / assignments.numel(), dtype=probs.dtype)
        )
        self.balance_loss = probs.shape[-1] * (assignment_share * probs.mean(0)).sum()
        mixed: torch.Tensor = self.experts(flat, top_k_index, top_k_weights)
        return mixed.view(batch, seq, hidden)


class DemoBlock(nn.Module):
    """Pre-norm transformer block: causal self-attention, then the MoE, each on a residual."""

    def __init__(self, config: DemoConfig) -> None:
        super().__init__()
        self.n_heads = config.n_heads
        self.attention_norm = nn.LayerNorm(config.hidden_size)
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=False)
        self.attention_out = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.mlp_norm = nn.LayerNorm(config.hidden_size)
        self.mlp = DemoMoE(config)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        batch, seq, hidden = hidden_states.shape
        qkv = self.qkv(self.attention_norm(hidden_states)).view(batch, seq, 3, self.n_heads, hidden // self.n_heads)
        query, key, value = qkv.permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(query, key, value, is_causal=True)
        hidden_states = hidden_states + self.attention_out(attended.transpose(1, 2).reshape(batch, seq, hidden))
        moe_out: torch.Tensor = self.mlp(self.mlp_norm(hidden_states))
        return hidden_states + moe_out


class DemoMoEModel(nn.Module):
    """The toy MoE language model.

    ``forward(tokens [B, S] int64) -> (logits [B, S, vocab], balance_loss)``
    where ``balance_loss`` is the sum over MoE layers of their Switch
    load-balancing losses (a scalar tensor). ``S <= config.seq_len``.
    """

    def __init__(self, config: DemoConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position = nn.Parameter(torch.randn(config.seq_len, config.hidden_size) * 0.02)
        self.layers = nn.ModuleList(DemoBlock(config) for _ in range(config.n_layers))
        self.norm = nn.LayerNorm(config.hidden_size)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        blocks = cast("list[DemoBlock]", list(self.layers))  # nn.ModuleList does not type its items
        hidden = self.embed(tokens) + self.position[: tokens.shape[1]]
        for block in blocks:
            hidden = block(hidden)
        balance_loss = torch.stack([block.mlp.balance_loss for block in blocks]).sum()
        return self.lm_head(self.norm(hidden)), balance_loss


def make_corpus(config: DemoConfig, seed: int, n_sequences: int = CORPUS_SEQUENCES) -> torch.Tensor:
    """``[n_sequences, seq_len + 1]`` int64 token ids, the same for the same ``seed``.

    Each sequence follows one of ``n_topics`` Markov chains; in every chain each
    token has ``successors_per_token`` possible successors, drawn once from a
    Zipf(``zipf_exponent``) distribution over the vocabulary, so frequent tokens
    are frequent in every topic. A ``noise_share`` of tokens is drawn from the
    Zipf distribution directly.
    """
    generator = torch.Generator().manual_seed(seed)
    vocab, topics, fanout = config.vocab_size, config.n_topics, config.successors_per_token
    zipf = torch.arange(1, vocab + 1, dtype=torch.float64) ** -config.zipf_exponent
    successors = torch.multinomial(zipf.expand(topics * vocab, vocab), fanout, generator=generator)
    successors = successors.view(topics, vocab, fanout)
    topic = torch.randint(0, topics, (n_sequences,), generator=generator)
    tokens = torch.empty(n_sequences, config.seq_len + 1, dtype=torch.int64)
    tokens[:, 0] = torch.multinomial(zipf, n_sequences, replacement=True, generator=generator)
    for position in range(1, config.seq_len + 1):
        choice = torch.randint(0, fanout, (n_sequences,), generator=generator)
        follows_chain = successors[topic, tokens[:, position - 1], choice]
        noise = torch.multinomial(zipf, n_sequences, replacement=True, generator=generator)
        is_noise = torch.rand(n_sequences, generator=generator) < config.noise_share
        tokens[:, position] = torch.where(is_noise, noise, follows_chain)
    return tokens


def batch_at(corpus: torch.Tensor, step: int, batch_size: int) -> torch.Tensor:
    """The ``[batch_size, seq_len + 1]`` rows of training step ``step`` (the corpus, cycled)."""
    start = ((step - 1) * batch_size) % (len(corpus) - batch_size + 1)
    return corpus[start : start + batch_size]


def make_optimizer(model: nn.Module, fused: bool | None = None) -> torch.optim.AdamW:
    """AdamW at :data:`LEARNING_RATE`, weight decay 0.01 (``fused``: AdamW's option)."""
    return torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=0.01, fused=fused)
