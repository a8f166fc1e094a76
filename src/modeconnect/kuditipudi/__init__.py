"""Kuditipudi et al. (2019), "Explaining Landscape Connectivity of Low-cost Solutions for Multilayer Nets".

Submodules: :mod:`.units` (naming a model's hidden units), :mod:`.dropout` (dropout stability,
Definition 1) and noise stability. The Theorem 1 path is the path method ``kuditipudi_dropout``
(:mod:`modeconnect.methods.kuditipudi_dropout`). See ``docs/kuditipudi.md``.
"""
