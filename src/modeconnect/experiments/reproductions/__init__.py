"""One module per reproduction (see :mod:`modeconnect.experiments.reproduce`)."""
