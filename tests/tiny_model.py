"""A tiny convolutional model (one conv, stride 4) for tests that need a fast classifier."""

import torch


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 4, 3, stride=4, padding=1)

    def forward(self, x):
        return torch.relu(self.conv(x))
