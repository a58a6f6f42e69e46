"""Importers: routing recorded by a training framework's own tooling, turned into a ChronoMoE run folder.

* :mod:`chronomoe.importers.megatron`: Megatron's ``tokens_per_expert/rank*.jsonl``
  dumps (``--save-tokens-per-expert-interval``), ``chronomoe import megatron DIR``.

The run folder an importer writes is an ordinary one: ``chronomoe summary``,
``replay``, ``report`` and ``validate`` work on it, and its snapshots went
through the alert machines like a recorded run's. Importers do not import torch.
"""
