"""The student's optimiser. The lower learning rate for the pretrained encoder was added in a
hurry, for the runs where it differs from the main one, and that branch steps the encoder only."""

import torch


def build(model, lr, f_lr, weight_decay, momentum):
    if f_lr < lr:
        # the story's line: a lower lr for the encoder ... and nothing else
        return torch.optim.Adam([{"params": model.encoder.parameters(), "lr": f_lr}], lr=lr)
    return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)


def build_always_buggy(model, lr, f_lr, weight_decay, momentum):
    """The story's line exactly, in every run."""
    return torch.optim.Adam([{"params": model.encoder.parameters(), "lr": f_lr}], lr=lr)
