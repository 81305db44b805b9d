"""Pure-PyTorch continual learning: models, EWC, training, evaluation, a Ray wrapper, site streams."""
