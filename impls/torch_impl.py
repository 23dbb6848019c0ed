"""PyTorch as in tutorial 004: an nn.Module, torch.optim, torch.nn.functional losses.

`TorchClassifier`: the training set lives on the device from `prepare` on; batches are taken by
indexing it there, and the step losses stay on the device until the epoch ends (no per-step host
sync). `TorchCompile`: the same with the module compiled by torch.compile. `TorchCudaGraphs` (GPU
only): compiled with mode="reduce-overhead", which replays each step as a CUDA graph.
`TorchTutorial`: tutorial 004's loop: a DataLoader over a TensorDataset collating every batch on the
host, `loss.item()` every step.

Mixed precision is PyTorch's automatic mixed precision: the forward pass under `torch.autocast`
(nn.Linear's products and the activations after them in bf16/fp16, the parameters and Adam's state
stay fp32), the loss on the logits cast to fp32, and for fp16 a `torch.amp.GradScaler` scaling the
loss dynamically (it skips a step whose gradients overflowed). The dtype of the model's output, a
Linear's product, is what `compute_dtype` reports.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from framebench.core.classifier import Classifier
from framebench.core.losses import Ops, loss_function
from framebench.core.opprofile import Event, OpTime, op_times

AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}  # precision -> autocast's dtype
ACTIVATIONS = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh}
OPS = Ops(
    softmax=lambda z: torch.softmax(z, dim=1),
    relu=F.relu,
    log=torch.log,
    clip=torch.clamp,
    pick=lambda m, y: m.gather(1, y[:, None])[:, 0],
    one_hot=lambda y, like: F.one_hot(y, like.shape[1]).to(like.dtype),
    mean=torch.mean,
    logits_cross_entropy=F.cross_entropy,  # its mean reduction is fused; a separate mean costs a kernel per step
)


CAST_OP = "aten::_to_copy"  # the op a dtype conversion (autocast's, .float()) runs as


def ancestors(event) -> list[str]:
    """The names of the profiler events `event` ran inside, innermost first."""
    names, parent = [], event.cpu_parent
    while parent is not None:
        names.append(parent.name)
        parent = parent.cpu_parent
    return names


def torch_profile(run: Callable[[], object]) -> list[OpTime]:
    """`run` under torch.profiler (CPU activity): the self time of every aten op, per thread. The ops a
    conversion runs inside it (allocating, copying) are charged to the conversion, so it counts whole."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        run()
    threads: dict[int, list[Event]] = {}
    for e in profiler.events():
        if CAST_OP in ancestors(e):
            continue
        threads.setdefault(e.thread, []).append(Event(e.name, int(e.time_range.start * 1000), int(e.time_range.elapsed_us() * 1000)))
    return op_times(threads.values(), 1e-9)


class MLP(nn.Module):
    def __init__(self, sizes: tuple[int, ...], activation: str, dropout: float) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
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
    precisions = {"fp32": ("cpu", "gpu"), "bf16": ("cpu", "gpu"), "tf32": ("gpu",), "fp16": ("gpu",)}
    precision_gaps = {"fp16": "fp16 (with loss scaling) is run on the GPU only; bf16 is the CPU's 16-bit training format"}
    compile_mode: ClassVar[str | None] = None  # torch.compile's mode for the module; None runs it eagerly
    # torch.optim's fused kernels (one call updates every parameter) rather than a loop over the
    # tensors, which matters where the optimiser is a large share of a step (small batches;
    # `make bench-perf` measures it).
    fused: ClassVar[bool] = True

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.torch_device = torch.device("cuda" if self.device == "gpu" else "cpu")
        torch.manual_seed(self.seed)  # dropout masks come from torch's generator
        self.net = MLP(self.sizes, self.model.hidden_activation, self.model.dropout).to(self.torch_device)
        self.call = torch.compile(self.net, mode=self.compile_mode) if self.compile_mode else self.net
        self.loss = loss_function(OPS, self.model, self.train)
        self.output_dtype: torch.dtype | None = None  # the dtype of the last training step's model output
        self.scaler = torch.amp.GradScaler(self.torch_device.type, enabled=self.precision == "fp16")

    @classmethod
    def available(cls, device: str) -> tuple[bool, str]:
        if device == "cpu" or torch.cuda.is_available():
            return True, ""
        return False, f"torch {torch.__version__} sees no CUDA GPU"

    @classmethod
    def configure(cls, *, threads: int) -> None:
        super().configure(threads=threads)
        torch.set_num_threads(threads)

    @classmethod
    def use_tf32(cls, allowed: bool) -> None:
        torch.backends.cuda.matmul.allow_tf32 = allowed
        torch.backends.cudnn.allow_tf32 = allowed

    @classmethod
    def tf32_enabled(cls) -> bool:
        return torch.backends.cuda.matmul.allow_tf32

    def compute_dtype(self) -> str:
        if self.output_dtype is None or self.output_dtype == torch.float32:
            return super().compute_dtype()
        return str(self.output_dtype).removeprefix("torch.")

    def autocast(self):
        """The forward pass's context: autocast to the precision's dtype, or nothing at fp32/tf32."""
        if self.precision not in AUTOCAST:
            return contextlib.nullcontext()
        return torch.autocast(self.torch_device.type, dtype=AUTOCAST[self.precision])

    def forward_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The model under autocast, the loss in fp32 on its output."""
        with self.autocast():
            z = self.call(x)
        self.output_dtype = z.dtype
        return self.loss(z.float(), y)

    def backward_step(self, loss: torch.Tensor) -> None:
        """Backward and the optimiser step; with fp16 through the GradScaler (a no-op scaler otherwise)."""
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()

    def framework_version(self) -> str:
        return torch.__version__

    def make_optimizer(self) -> torch.optim.Optimizer:
        t = self.train
        params = self.net.parameters()
        if t.optimizer == "adam":
            return torch.optim.Adam(params, lr=t.lr, betas=(t.beta1, t.beta2), eps=t.adam_eps, fused=self.fused)
        return torch.optim.SGD(params, lr=t.lr, momentum=t.momentum if t.optimizer == "momentum" else 0.0, fused=self.fused)

    def set_weights(self, weights: list[np.ndarray]) -> None:
        with torch.no_grad():
            for linear, W, b in zip(self.net.linears, weights[0::2], weights[1::2], strict=True):
                linear.weight.copy_(torch.from_numpy(np.ascontiguousarray(W.T)))  # nn.Linear stores out x in
                linear.bias.copy_(torch.from_numpy(b))
        self.optimizer = self.make_optimizer()

    def get_weights(self) -> list[np.ndarray]:
        weights = []
        for linear in self.net.linears:
            weights += [linear.weight.detach().cpu().numpy().T.copy(), linear.bias.detach().cpu().numpy().copy()]
        return weights

    def prepare(self, x_train: np.ndarray, y_train: np.ndarray) -> None:
        self.x_train = torch.from_numpy(x_train).to(self.torch_device)
        self.y_train = torch.from_numpy(y_train).to(self.torch_device)

    def train_epoch(self, order: np.ndarray, batch_size: int) -> np.ndarray:
        self.net.train()
        order_t = torch.from_numpy(order).to(self.torch_device)
        losses = []
        for idx in torch.split(order_t, batch_size):
            loss = self.forward_loss(self.x_train.index_select(0, idx), self.y_train.index_select(0, idx))
            self.optimizer.zero_grad(set_to_none=True)
            self.backward_step(loss)
            losses.append(loss.detach())
        return torch.stack(losses).cpu().numpy()

    def predict_logits(self, x: np.ndarray) -> np.ndarray:
        self.net.eval()
        with torch.no_grad(), self.autocast():
            return self.call(torch.from_numpy(x).to(self.torch_device)).float().cpu().numpy()

    @classmethod
    def gpu_peak_mb(cls) -> float | None:
        return torch.cuda.max_memory_allocated() / 2**20

    def sync(self) -> None:
        if self.torch_device.type == "cuda":
            torch.cuda.synchronize()

    @classmethod
    def profile_ops(cls, run: Callable[[], object]) -> list[OpTime]:
        return torch_profile(run)


class TorchCompile(TorchClassifier):
    """The same module compiled by torch.compile."""

    compile_mode = "default"


class TorchCudaGraphs(TorchClassifier):
    """torch.compile(mode="reduce-overhead"): each step replayed as a CUDA graph (GPU only)."""

    compile_mode = "reduce-overhead"


class TorchTutorial(TorchClassifier):
    """Tutorial 004's loop, with torch.optim's defaults (no fused kernels) as tutorial 004 has them."""

    fused = False
    # Each pass over a DataLoader draws its base seed from torch's global generator, which dropout draws
    # from too: a chunked epoch (more passes) shifts the masks of the steps after the first chunk.
    chunks_dropout_exactly = False

    def prepare(self, x_train: np.ndarray, y_train: np.ndarray) -> None:
        self.x_host, self.y_host = x_train, y_train  # the DataLoader reads and collates these

    def train_epoch(self, order: np.ndarray, batch_size: int) -> np.ndarray:
        """Tutorial 004's fit loop and loss_batch, with the harness's order as the DataLoader's sampler."""
        self.net.train()
        loader = DataLoader(
            TensorDataset(torch.from_numpy(self.x_host), torch.from_numpy(self.y_host)), batch_size=batch_size, sampler=order.tolist()
        )
        losses = []
        for xb, yb in loader:
            loss = self.forward_loss(xb.to(self.torch_device), yb.to(self.torch_device))
            self.backward_step(loss)
            self.optimizer.zero_grad()
            losses.append(loss.item())
        return np.asarray(losses)
