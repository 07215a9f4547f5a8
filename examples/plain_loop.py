"""The checks in a plain PyTorch loop: the story's optimiser line, caught after 5 steps.

python examples/plain_loop.py
"""

import torch
from torch import nn

import harness.checks


class Net(nn.Module):
    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.fcn = nn.Sequential(nn.Conv2d(8, 8, 1), nn.ReLU())
        self.decoder = nn.Conv2d(8, classes, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.fcn(self.encoder(x)))


torch.manual_seed(0)
model, lr, f_lr = Net(), 1e-3, 1e-4
# the story's line: a lower lr for the encoder ... and nothing else
optimizer = torch.optim.Adam([{"params": model.encoder.parameters(), "lr": f_lr}], lr=lr)
criterion = nn.CrossEntropyLoss()

with harness.checks.watch(model, optimizer, steps=5) as w:
    model.train()
    for _ in range(20):
        images, masks = torch.randn(4, 3, 16, 16), torch.randint(0, 3, (4, 16, 16))
        loss = criterion(model(images), masks)
        w.report_loss(loss)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

print(w.report())  # each flag was also printed as a WARNING when it was found
