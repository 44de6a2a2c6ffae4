"""The train stage: data path, loss, model loading, the training loop."""
