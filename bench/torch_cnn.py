"""The CNN baseline of minicaps.nn.cnn (CNNConfig) in PyTorch: the peer ``bench.py --cnn``
times minicaps' BaselineCNN against. The same layers in the same order (5x5 SAME
convolutions + ReLU, 2x2 max-pooling where ``pool_after`` says, fully connected + ReLU,
dropout, the softmax layer, cross-entropy), the input NHWC in [0, 1] as minicaps takes it.
Only its speed is compared: its parameters are PyTorch's own initialisation.

It answers what bench.py's PyTorch loop calls on a peer: ``loss(x, y)[0]`` (the training
loss, dropout on) and ``forward(x)["lengths"]`` (the class probabilities)."""
import torch
from torch import nn


class TorchCNN(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        k, (_, _, c) = cfg.conv_kernel, cfg.input_shape
        layers = []
        for l, (_, _, c_in, c_out, pooled) in enumerate(cfg.conv_layers(), start=1):
            layers += [nn.Conv2d(c_in, c_out, k, padding="same"), nn.ReLU()]
            if pooled:
                layers.append(nn.MaxPool2d(2))
        layers.append(nn.Flatten())
        sizes = (int(torch.tensor(cfg.feature_shape).prod()),) + tuple(cfg.fc_sizes)
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        layers += [nn.Dropout(cfg.dropout), nn.Linear(sizes[-1], cfg.num_classes)]
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        logits = self.net(x.permute(0, 3, 1, 2))          # NHWC -> NCHW
        return {"logits": logits, "lengths": torch.softmax(logits, dim=1)}

    def loss(self, x, y):
        logits = self.forward(x)["logits"]
        total = nn.functional.cross_entropy(logits, y)
        return total, logits
