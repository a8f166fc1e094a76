"""Kuditipudi et al. (2019), "Explaining Landscape Connectivity of Low-cost Solutions for Multilayer Nets".

Submodules: :mod:`.units` (naming a model's hidden units), :mod:`.dropout` (dropout stability,
Definition 1), :mod:`.noise` (noise stability, Definitions 2-4, Algorithm 1) and :mod:`.lemma3` (the segment from a
network to its Algorithm 1 dropout version). The paths are path methods: ``kuditipudi_dropout`` (Theorem 1),
``kuditipudi_noise`` (Lemma 3, Theorem 2) and ``kuditipudi_narrow`` (Theorem 3) in :mod:`modeconnect.methods`.
See ``docs/kuditipudi.md``.
"""
