"""Model architectures of the papers' experiments (image convnets, an LSTM language model).

Builders never touch the global random state when used through
:func:`modeconnect.tasks._init.seeded` (convnets) or :func:`init_uniform_` (the LSTM).
"""

from __future__ import annotations

from .convnets import cifar_convnet, kuditipudi_convnet, mnist_convnet
from .lstm import LSTM, LSTMLanguageModel, init_uniform_
from .mlp import image_mlp
from .vgg import vgg_small

__all__ = ["mnist_convnet", "cifar_convnet", "kuditipudi_convnet", "image_mlp", "vgg_small", "LSTM",
           "LSTMLanguageModel", "init_uniform_"]
