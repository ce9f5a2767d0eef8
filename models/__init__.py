"""Torch networks, losses, metrics, training, checkpoints and the Predictor."""
