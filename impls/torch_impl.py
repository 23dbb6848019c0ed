"""PyTorch as in seed 004: an nn.Module, torch.optim, torch.nn.functional losses.

`default`: the training set lives on the device from `prepare` on; batches are taken by indexing it
there, and the step losses stay on the device until the epoch ends (no per-step host sync).
`compile`: the same with the module compiled by torch.compile. `cudagraphs` (GPU only): compiled
with mode="reduce-overhead", which replays each step as a CUDA graph. `tutorial`: seed 004's loop:
a DataLoader over a TensorDataset collating every batch on the host, `loss.item()` every step.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from bench.config import PROB_CLIP
from impls.base import Classifier

ACTIVATIONS = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh}


class MLP(nn.Module):
    def __init__(self, sizes: tuple[int, ...], activation: str, dropout: float) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(nn.Linear(fan_in, fan_out))
            if i < len(sizes) - 2:
                layers.append(ACTIVATIONS[activation]())
                if dropout > 0:
                    layers.append(nn.Dropout(dropout))
        self.layers = nn.Sequential(*layers)
        self.linears = [layer for layer in layers if isinstance(layer, nn.Linear)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class TorchClassifier(Classifier):
    variants = ("default", "compile", "cudagraphs", "tutorial")

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.torch_device = torch.device("cuda" if self.device == "gpu" else "cpu")
        torch.manual_seed(self.seed)  # dropout masks come from torch's generator
        self.net = MLP(self.sizes, self.model.hidden_activation, self.model.dropout).to(self.torch_device)
        compile_modes = {"compile": "default", "cudagraphs": "reduce-overhead"}
        self.call = torch.compile(self.net, mode=compile_modes[self.variant]) if self.variant in compile_modes else self.net

    @classmethod
    def lacks(cls, model, train, variant: str, device: str) -> str | None:
        if variant == "cudagraphs" and device != "gpu":
            return "CUDA graphs need a GPU"
        return None

    @classmethod
    def available(cls, device: str) -> tuple[bool, str]:
        if device == "cpu" or torch.cuda.is_available():
            return True, ""
        return False, f"torch {torch.__version__} sees no CUDA GPU"

    @classmethod
    def configure(cls, *, threads: int, tf32: bool) -> None:
        super().configure(threads=threads, tf32=tf32)
        torch.set_num_threads(threads)
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32

    def framework_version(self) -> str:
        return torch.__version__

    def make_optimizer(self) -> torch.optim.Optimizer:
        """The fused kernels (one call updates every parameter) except in the tutorial, which uses
        torch.optim's defaults as seed 004 does; fused Adam took seed003's epoch from 0.72 s to 0.53 s."""
        t = self.train
        params = self.net.parameters()
        fused = self.variant != "tutorial"
        if t.optimizer == "adam":
            return torch.optim.Adam(params, lr=t.lr, betas=(t.beta1, t.beta2), eps=t.adam_eps, fused=fused)
        return torch.optim.SGD(params, lr=t.lr, momentum=t.momentum if t.optimizer == "momentum" else 0.0, fused=fused)

    def set_weights(self, weights: list[np.ndarray]) -> None:
        with torch.no_grad():
            for linear, W, b in zip(self.net.linears, weights[0::2], weights[1::2]):
                linear.weight.copy_(torch.from_numpy(np.ascontiguousarray(W.T)))  # nn.Linear stores out x in
                linear.bias.copy_(torch.from_numpy(b))
        self.optimizer = self.make_optimizer()

    def get_weights(self) -> list[np.ndarray]:
        weights = []
        for linear in self.net.linears:
            weights += [linear.weight.detach().cpu().numpy().T.copy(), linear.bias.detach().cpu().numpy().copy()]
        return weights

    def prepare(self, x_train: np.ndarray, y_train: np.ndarray) -> None:
        self.x_host, self.y_host = x_train, y_train  # the tutorial's DataLoader reads these
        self.x_train = torch.from_numpy(x_train).to(self.torch_device)
        self.y_train = torch.from_numpy(y_train).to(self.torch_device)

    def loss(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """bench.metrics' definitions in torch ops."""
        if self.train.loss == "cross_entropy":
            if self.model.output_activation == "softmax":
                p_true = torch.softmax(z, dim=1).gather(1, y[:, None])
                return -torch.log(p_true.clamp(PROB_CLIP, 1 - PROB_CLIP)).mean()
            return F.cross_entropy(z, y)
        out = {"softmax": lambda v: torch.softmax(v, dim=1), "relu": F.relu, "none": lambda v: v}[self.model.output_activation](z)
        return F.mse_loss(out, F.one_hot(y, self.sizes[-1]).to(out.dtype))

    def train_epoch(self, order: np.ndarray, batch_size: int) -> np.ndarray:
        self.net.train()
        if self.variant == "tutorial":
            return self.train_epoch_tutorial(order, batch_size)
        order_t = torch.from_numpy(order).to(self.torch_device)
        losses = []
        for idx in torch.split(order_t, batch_size):
            loss = self.loss(self.call(self.x_train.index_select(0, idx)), self.y_train.index_select(0, idx))
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            losses.append(loss.detach())
        return torch.stack(losses).cpu().numpy()

    def train_epoch_tutorial(self, order: np.ndarray, batch_size: int) -> np.ndarray:
        """Seed 004's fit loop and loss_batch, with the harness's order as the DataLoader's sampler."""
        loader = DataLoader(TensorDataset(torch.from_numpy(self.x_host), torch.from_numpy(self.y_host)),
                            batch_size=batch_size, sampler=order.tolist())
        losses = []
        for xb, yb in loader:
            loss = self.loss(self.net(xb.to(self.torch_device)), yb.to(self.torch_device))
            loss.backward()
            self.optimizer.step()
            self.optimizer.zero_grad()
            losses.append(loss.item())
        return np.asarray(losses)

    def predict_logits(self, x: np.ndarray) -> np.ndarray:
        self.net.eval()
        with torch.no_grad():
            return self.call(torch.from_numpy(x).to(self.torch_device)).cpu().numpy()

    def peak_gpu_memory_mb(self) -> float | None:
        return torch.cuda.max_memory_allocated() / 2**20 if self.torch_device.type == "cuda" else None

    def sync(self) -> None:
        if self.torch_device.type == "cuda":
            torch.cuda.synchronize()
