"""Training entry points: train.scratch, train.transfer and train.crossval."""
