"""``chronomoe demo``: a Mixture-of-Experts model's routing collapsing, recorded live, on a CPU.

The demo trains one small MoE language model (pure torch) twice, from the same
initial weights on the same synthetic data, each time with a
:class:`~chronomoe.Monitor` attached by ``monitor.attach(model)``. It shows a
progress bar per run, prints every alert transition the moment the alert
machines make it, then each run folder's per-layer summary (Neff, Top2, dead
experts, state, the step of each transition) and the folders' paths:

* ``demo-balanced``: trained with the Switch Transformer load-balancing loss
  (``alpha = 0.01`` per MoE layer). Its routing stays balanced: no alert at all.
* ``demo-collapse``: the same run without that loss; nothing else differs.
  Within a few dozen steps routing concentrates on one or two experts in some
  layers, experts stop receiving tokens, and the alert machines go
  ``nominal -> pre_collapse -> collapse_confirmed``; later windows may see a
  starved expert get a token again and the layer step back down (the table
  lists every transition).

No nudge is needed and none is applied: no expert is switched off, no logit,
temperature or learning rate is changed. What drives it is the rich-get-richer
feedback that balancing losses exist to stop (Shazeer et al., 2017): the data's frequent tokens are
shared by every topic, so any expert can learn the same generic job; the
experts that receive more tokens learn it first, and the router (softmax over
experts, with a bias; the chosen expert's output is scaled by its probability,
as in Switch) sends them still more.

The model (:class:`DemoMoEModel`, sizes in :class:`DemoConfig`): token and
learned position embeddings, 4 pre-norm blocks of causal self-attention and a
top-1 routed MoE of 8 SwiGLU experts, a linear head. The MoE block calls its
experts as ``self.experts(hidden_states, top_k_index, top_k_weights)`` and the
experts module has ``num_experts``: the transformers 5 convention that
``monitor.attach`` recognises (layer ids from the ``layers.N`` module path).

The data (:func:`make_corpus`): sequences from 8 topics, each a random sparse
Markov chain over 128 tokens whose successors and noise tokens are drawn from
a Zipf(1.5) distribution.

Repeatable: ``torch.manual_seed(seed)`` before each run's model, the corpus
from ``torch.Generator().manual_seed(seed)``; on CPU a run repeats bit for bit
for a given number of threads. A previous demo's files in the two run folders
are replaced.

Run it as ``chronomoe demo`` or ``python -m chronomoe.demo``.
"""

from __future__ import annotations

import argparse
import math
import sys
import textwrap
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from .alerts import AlertState, AlertTransition
from .errors import InvalidInputError
from .io import ALERTS_FILE, EVENTS_FILE, MANIFEST_FILE, SNAPSHOTS_FILE
from .monitor import Monitor
from .report import format_summary, summarize_run

DEFAULT_STEPS = 400
SNAPSHOT_EVERY = 10
"""Training steps per snapshot window."""
LEARNING_RATE = 3e-3
"""AdamW learning rate of every parameter, in both runs."""
CORPUS_SEQUENCES = 2048
MODEL_NAME = "chronomoe-demo-moe"


@dataclass(frozen=True)
class DemoConfig:
    """Sizes of the demo model and of its synthetic data (all counts, except where noted).

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


@dataclass(frozen=True)
class Arm:
    """One training run of the demo.

    Attributes:
        run_id: the run folder's name.
        balance_coefficient: weight of the Switch load-balancing loss of each MoE layer.
        description: what the run is, as printed.
    """

    run_id: str
    balance_coefficient: float
    description: str


BALANCED = Arm("demo-balanced", 0.01, "with the Switch load-balancing loss (alpha 0.01 per MoE layer)")
COLLAPSE = Arm(
    "demo-collapse",
    0.0,
    "without it; nothing else differs (no nudge: no expert switched off, no logit or learning rate changed)",
)
ARMS = (BALANCED, COLLAPSE)


# -- the model ---------------------------------------------------------------------------
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

    def _dropless(self, hidden_states, top_k_index, top_k_weights):
        top_k = top_k_index.shape[-1]
        flat_expert = top_k_index.reshape(-1)
        order = flat_expert.argsort(stable=True)
        token_of = order // top_k
        sizes = torch.bincount(flat_expert, minlength=self.num_experts).tolist()
        outputs = [self._expert_mlp(rows, expert) for expert, rows in enumerate(hidden_states[token_of].split(sizes))]
        weighted = torch.cat(outputs) * top_k_weights.reshape(-1, 1)[order].to(hidden_states.dtype)
        return torch.zeros_like(hidden_states).index_add(0, token_of, weighted)

    def _fixed_capacity(self, hidden_states, top_k_index, top_k_weights):
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

    ``forward(hidden_states [T, H]) -> (probs [T, E] float32, top_k_weights [T, k]
    float32, top_k_index [T, k] int64)``. Weights are not renormalised over the
    top k (Switch), so the router learns from how much each chosen expert helps.
    """

    def __init__(self, config: DemoConfig) -> None:
        super().__init__()
        self.top_k = config.top_k
        # Small initial weights: routing starts close to input-independent.
        self.weight = nn.Parameter(torch.randn(config.n_experts, config.hidden_size) * 0.1 * config.hidden_size**-0.5)
        self.bias = nn.Parameter(torch.zeros(config.n_experts))

    def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        probs = F.linear(hidden_states, self.weight, self.bias).float().softmax(dim=-1)
        top_k_weights, top_k_index = probs.topk(self.top_k, dim=-1)
        return probs, top_k_weights, top_k_index


class DemoMoE(nn.Module):
    """Routed MoE block: ``forward([B, S, H]) -> [B, S, H]``.

    Keeps ``balance_loss`` of its last forward: the Switch load-balancing loss
    ``n_experts * sum_e f_e * P_e`` (``f_e``: share of the token-to-expert
    assignments that went to ``e``; ``P_e``: mean router probability of ``e``),
    1.0 for perfectly balanced routing, up to ``n_experts`` when collapsed.
    """

    def __init__(self, config: DemoConfig) -> None:
        super().__init__()
        self.top_k = config.top_k
        self.gate = DemoRouter(config)
        self.experts = DemoExperts(config)
        self.balance_loss: torch.Tensor | None = None

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        batch, seq, hidden = hidden_states.shape
        flat = hidden_states.reshape(-1, hidden)
        probs, top_k_weights, top_k_index = self.gate(flat)
        assignments = top_k_index.reshape(-1)
        assignment_share = torch.zeros_like(probs[0]).index_add(
            0, assignments, torch.full_like(assignments, 1.0 / assignments.numel(), dtype=probs.dtype)
        )
        self.balance_loss = probs.shape[-1] * (assignment_share * probs.mean(0)).sum()
        return self.experts(flat, top_k_index, top_k_weights).view(batch, seq, hidden)


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
        return hidden_states + self.mlp(self.mlp_norm(hidden_states))


class DemoMoEModel(nn.Module):
    """The demo's MoE language model.

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
        hidden = self.embed(tokens) + self.position[: tokens.shape[1]]
        for layer in self.layers:
            hidden = layer(hidden)
        balance_loss = torch.stack([layer.mlp.balance_loss for layer in self.layers]).sum()
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


def training_loss(model: DemoMoEModel, batch: torch.Tensor, arm: Arm) -> tuple[torch.Tensor, torch.Tensor]:
    """``(objective, language-model loss)`` of one batch: the objective adds the arm's balancing loss."""
    logits, balance_loss = model(batch[:, :-1])
    lm_loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
    return lm_loss + arm.balance_coefficient * balance_loss, lm_loss


# -- one run -------------------------------------------------------------------------------
@dataclass
class ArmOutcome:
    """What one run did: its folder and every alert transition, in order."""

    arm: Arm
    run_dir: Path
    transitions: list[AlertTransition] = field(default_factory=list)

    @property
    def confirmed_layers(self) -> list[int]:
        """Layers that reached ``collapse_confirmed`` at some snapshot, by layer id."""
        return sorted({t.layer_id for t in self.transitions if t.dest is AlertState.COLLAPSE_CONFIRMED})

    @property
    def first_confirmation_step(self) -> int | None:
        steps = [t.step for t in self.transitions if t.dest is AlertState.COLLAPSE_CONFIRMED]
        return min(steps) if steps else None


def describe_transition(run_id: str, transition: AlertTransition) -> str:
    """One line for a transition: run, step, layer, states, the metrics that caused it."""
    metrics = transition.metrics
    return (
        f"[{run_id}] step {transition.step:>4}  layer {transition.layer_id}: "
        f"{transition.source.value} -> {transition.dest.value}  "
        f"(Neff {metrics['n_effective']:.2f}/{metrics['n_experts']}, Top2 {metrics['top2_share']:.3f}, "
        f"dead {metrics['dead_expert_count']})"
    )


def _remove_previous_run(run_dir: Path) -> None:
    """Delete the files a previous demo wrote in ``run_dir`` (the writer appends otherwise)."""
    for name in (EVENTS_FILE, SNAPSHOTS_FILE, ALERTS_FILE, MANIFEST_FILE):
        for path in (run_dir / name, run_dir / f"{name}.torn"):
            path.unlink(missing_ok=True)


def train_arm(
    arm: Arm,
    config: DemoConfig,
    corpus: torch.Tensor,
    steps: int,
    seed: int,
    output_dir: str | Path,
    *,
    show_progress: bool = True,
    on_transition: Callable[[AlertTransition], None] | None = None,
) -> ArmOutcome:
    """Train the demo model for ``steps`` steps as ``arm`` prescribes, recording into ``output_dir/arm.run_id``.

    A snapshot closes every :data:`SNAPSHOT_EVERY` steps and at the last step;
    its ``train_loss`` is the mean language-model loss of its window.
    ``on_transition`` is subscribed to the monitor's ``"transition"`` topic.
    """
    run_dir = Path(output_dir) / arm.run_id
    _remove_previous_run(run_dir)
    torch.manual_seed(seed)
    model = DemoMoEModel(config)
    optimizer = make_optimizer(model)
    run_config = {
        "demo_arm": arm.run_id,
        "description": arm.description,
        "seed": seed,
        "steps": steps,
        "learning_rate": LEARNING_RATE,
        "balance_coefficient": arm.balance_coefficient,
        "snapshot_every": SNAPSHOT_EVERY,
        **asdict(config),
    }
    outcome = ArmOutcome(arm, run_dir)
    with Monitor(arm.run_id, output_dir, model_name=MODEL_NAME, training_config=run_config) as monitor:
        monitor.attach(model)
        monitor.bus.subscribe("transition", outcome.transitions.append)
        if on_transition is not None:
            monitor.bus.subscribe("transition", on_transition)
        window_loss = torch.zeros(())
        window_steps = 0
        with tqdm(total=steps, desc=arm.run_id, unit="step", disable=not show_progress, dynamic_ncols=True) as bar:
            for step in range(1, steps + 1):
                objective, lm_loss = training_loss(model, batch_at(corpus, step, config.batch_size), arm)
                optimizer.zero_grad(set_to_none=True)
                objective.backward()
                optimizer.step()
                monitor.step(step)
                window_loss += lm_loss.detach()
                window_steps += 1
                if step % SNAPSHOT_EVERY == 0 or step == steps:
                    snapshot = monitor.snapshot(step, train_loss=window_loss.item() / window_steps)
                    window_loss.zero_()
                    window_steps = 0
                    states = "".join(layer.alert_state.value[0].upper() for layer in snapshot.layers)
                    bar.set_postfix_str(f"loss {snapshot.train_loss:.3f}  layers {states}")
                bar.update()
    return outcome


# -- the demo --------------------------------------------------------------------------------
def _verdict(balanced: ArmOutcome, collapse: ArmOutcome, steps: int) -> tuple[bool, list[str]]:
    """Whether the runs show what the demo promises, and the lines that say so."""
    lines = []
    healthy = not balanced.transitions
    if healthy:
        lines.append(f"{balanced.arm.run_id}: no alert in {steps} steps.")
    else:
        lines.append(
            f"{balanced.arm.run_id}: UNEXPECTED: {len(balanced.transitions)} alert transitions "
            f"(first: {describe_transition(balanced.arm.run_id, balanced.transitions[0])})."
        )
    layers = collapse.confirmed_layers
    if layers:
        lines.append(
            f"{collapse.arm.run_id}: COLLAPSE_CONFIRMED in layer{'s' if len(layers) > 1 else ''} "
            f"{', '.join(map(str, layers))} (first at step {collapse.first_confirmation_step})."
        )
    else:
        lines.append(
            f"{collapse.arm.run_id}: did not reach COLLAPSE_CONFIRMED in {steps} steps "
            f"(the default, {DEFAULT_STEPS}, does for seeds 0-9)."
        )
    return healthy and bool(layers), lines


def run_demo(output_dir: str = "runs", steps: int = DEFAULT_STEPS, seed: int = 0, quiet: bool = False) -> int:
    """Train both runs, print what the monitors saw, return 0 when the demo showed its point, else 1.

    Args:
        output_dir: parent folder of the run folders ``demo-balanced`` and ``demo-collapse``.
        steps: training steps of each run.
        seed: seeds the initial weights (the same for both runs) and the corpus.
        quiet: print only the verdict and the run folders (no progress bars,
            live transitions or tables).
    """
    if not isinstance(steps, int) or steps < 1:
        raise InvalidInputError("steps", steps, "must be a positive integer")
    if not isinstance(seed, int) or seed < 0:
        raise InvalidInputError("seed", seed, "must be a non-negative integer")
    config = DemoConfig()
    say = (lambda text: None) if quiet else print
    say(
        textwrap.fill(
            f"ChronoMoE demo: one small MoE language model ({config.n_layers} layers x {config.n_experts} experts, "
            f"top-{config.top_k} routing), trained twice on CPU from the same weights and data (seed {seed}): "
            f"{steps} steps each, a snapshot every {SNAPSHOT_EVERY} steps.",
            width=100,
        )
    )
    for arm in ARMS:
        say(textwrap.fill(arm.description, width=100, initial_indent=f"  {arm.run_id}: ", subsequent_indent=" " * 17))
    say("Progress bars end with each layer's alert state: N nominal, P pre_collapse, C collapse_confirmed.\n")
    corpus = make_corpus(config, seed)
    outcomes = []
    for arm in ARMS:
        started = time.perf_counter()
        announce = (
            None
            if quiet
            else (lambda transition, run_id=arm.run_id: tqdm.write(describe_transition(run_id, transition)))
        )
        outcomes.append(
            train_arm(arm, config, corpus, steps, seed, output_dir, show_progress=not quiet, on_transition=announce)
        )
        say(f"{arm.run_id}: {steps} steps in {time.perf_counter() - started:.1f} s\n")
    for outcome in outcomes:
        say(format_summary(summarize_run(outcome.run_dir)) + "\n")
    shown, lines = _verdict(*outcomes, steps)
    print("\n".join(lines))
    print("Run folders: " + "  ".join(str(outcome.run_dir) for outcome in outcomes))
    say(f"Look again: chronomoe summary {outcomes[1].run_dir}   chronomoe report {outcomes[1].run_dir}")
    return 0 if shown else 1


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m chronomoe.demo [--output-dir DIR] [--steps N] [--seed S] [--quiet]``."""
    parser = argparse.ArgumentParser(prog="python -m chronomoe.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", default="runs", help="parent folder of the run folders (default: runs)")
    parser.add_argument(
        "--steps", type=int, default=DEFAULT_STEPS, help=f"training steps per run (default: {DEFAULT_STEPS})"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and the data (default: 0)")
    parser.add_argument("--quiet", action="store_true", help="print only the verdict and the run folders")
    args = parser.parse_args(argv)
    try:
        return run_demo(args.output_dir, args.steps, args.seed, args.quiet)
    except InvalidInputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
