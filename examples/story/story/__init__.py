"""A student's own segmentation code, as they might have written it: a DeconvNet and the
optimiser line from the story. Plain PyTorch; it knows nothing about harness."""
