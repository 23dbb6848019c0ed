"""NumPy with hand-written backprop: the oracle every framework is checked against.

`NumpyClassifier`: float32 throughout, with buffers allocated once per batch size and in-place
optimiser updates, so its speed measures NumPy's BLAS rather than Python allocation churn.
`NumpyTutorial`: tutorial 002's loop as written there — layer objects in an OrderedDict, float64
parameters, a fresh batch copy and fresh arrays every step — on the harness's weights and batch order.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from framebench.core import optim
from framebench.core.classifier import Classifier
from framebench.core.config import PROB_CLIP
from framebench.core.losses import NUMPY, output_activation


def activate(name: str, a: np.ndarray) -> None:
    """Apply a hidden activation in place."""
    if name == "relu":
        np.maximum(a, 0, out=a)
    elif name == "sigmoid":
        np.negative(a, out=a)
        np.exp(a, out=a)
        a += 1
        np.reciprocal(a, out=a)
    else:
        np.tanh(a, out=a)


def scale_by_derivative(name: str, grad: np.ndarray, h: np.ndarray) -> None:
    """grad *= activation'(pre-activation), written in terms of the activation's output `h`."""
    if name == "relu":
        grad *= h > 0
    elif name == "sigmoid":
        grad *= h * (1 - h)
    else:
        grad *= 1 - h * h


class Affine:
    """Tutorial 002's affine layer: keeps its input for the backward pass."""

    def __init__(self, W: np.ndarray, b: np.ndarray) -> None:
        self.W, self.b = W, b

    def forward(self, x: np.ndarray) -> np.ndarray:
        self.x = x
        return np.dot(x, self.W) + self.b

    def backward(self, dout: np.ndarray) -> np.ndarray:
        self.dW = np.dot(self.x.T, dout)
        self.db = np.sum(dout, axis=0)
        return np.dot(dout, self.W.T)


class Relu:
    def forward(self, x: np.ndarray) -> np.ndarray:
        self.mask = x <= 0
        out = x.copy()
        out[self.mask] = 0
        return out

    def backward(self, dout: np.ndarray) -> np.ndarray:
        dout[self.mask] = 0
        return dout


class SoftmaxWithLoss:
    """Tutorial 002's output layer, with the project's cross-entropy (log-sum-exp, not p + 1e-7)."""

    def forward(self, x: np.ndarray, t: np.ndarray) -> float:
        shifted = x - x.max(axis=1, keepdims=True)
        self.y = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
        self.t = t
        return float(NUMPY.logits_cross_entropy(x, t))

    def backward(self) -> np.ndarray:
        dx = self.y.copy()
        dx[np.arange(len(self.t)), self.t] -= 1
        return dx / len(self.t)


class NumpyClassifier(Classifier):
    # float64 in the oracle (framebench.testing.oracle) and the finite-difference tests, where float32
    # rounding would swamp the comparison.
    dtype = np.float32
    precision_gaps = dict.fromkeys(
        ("bf16", "fp16"),
        "NumPy has no 16-bit GEMM: np.matmul promotes ml_dtypes' bfloat16 operands to a float32 product, and multiplies "
        "float16 without BLAS, so a NumPy 16-bit run would time conversions, not 16-bit products",
    )

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.rng = np.random.default_rng(self.seed)
        self.buffers: dict[int, dict[str, list[np.ndarray]]] = {}
        self.layers = len(self.sizes) - 1

    def framework_version(self) -> str:
        return np.__version__

    def compute_dtype(self) -> str:
        """The dtype of the first layer's product on one training sample."""
        return self.forward(self.x_train[:1], masks=None)[1].dtype.name

    def set_weights(self, weights: list[np.ndarray]) -> None:
        """Parameters, gradients and optimiser state are each one flat array, with per-layer views
        into it, so an optimiser step is a dozen whole-model ufunc calls rather than a dozen per
        tensor, which matters where the optimiser is a large share of a step (small batches;
        `make bench-perf` measures it)."""
        bounds = np.cumsum([0, *(w.size for w in weights)])

        def flat_with_views() -> tuple[np.ndarray, list[np.ndarray]]:
            flat = np.zeros(bounds[-1], self.dtype)
            return flat, [flat[a:b].reshape(w.shape) for a, b, w in zip(bounds[:-1], bounds[1:], weights, strict=True)]

        (self.flat_params, self.params), (self.flat_grads, self.grads) = flat_with_views(), flat_with_views()
        self.flat_scratch, self.first_moment, self.second_moment = (flat_with_views()[0] for _ in range(3))
        for param, weight in zip(self.params, weights, strict=True):
            param[...] = weight
        self.adam = optim.AdamSchedule(self.train, self.adam_form)

    def get_weights(self) -> list[np.ndarray]:
        return [p.astype(np.float32) for p in self.params]

    def prepare(self, x_train: np.ndarray, y_train: np.ndarray) -> None:
        super().prepare(x_train.astype(self.dtype, copy=False), y_train)

    def batch_buffers(self, n: int) -> dict[str, list[np.ndarray]]:
        """Activations (`h`: input of each layer, then logits) and back-propagated gradients (`dh`)."""
        if n not in self.buffers:
            self.buffers[n] = {
                "h": [np.empty((n, size), self.dtype) for size in self.sizes],
                "dh": [np.empty((n, size), self.dtype) for size in self.sizes],
                "kept": [np.empty((n, size), self.dtype) for size in self.sizes[1:-1]],
            }
        return self.buffers[n]

    def forward(self, x: np.ndarray, *, masks: list[np.ndarray] | None) -> list[np.ndarray]:
        """Each layer's input (after activation and dropout), then the logits, as buffer views."""
        bufs = self.batch_buffers(len(x))
        h = bufs["h"]
        if x is not h[0]:  # train_epoch gathers the batch straight into the buffer
            h[0][...] = x
        for layer in range(self.layers):
            W, b = self.params[2 * layer], self.params[2 * layer + 1]
            out = h[layer + 1]
            np.matmul(h[layer], W, out=out)
            out += b
            if layer < self.layers - 1:
                activate(self.model.hidden_activation, out)
                if masks is not None:
                    bufs["kept"][layer][...] = out  # pre-dropout activation, for the derivative
                    out *= masks[layer]
        return h

    def dropout_masks(self, n: int) -> list[np.ndarray] | None:
        """Inverted-dropout masks (0 or 1/keep) for one batch, or None without dropout."""
        rate = self.model.dropout
        if rate == 0:
            return None
        keep = self.dtype(1.0 - rate)
        return [(self.rng.random((n, size), dtype=self.dtype) < keep) / keep for size in self.sizes[1:-1]]

    def output_gradient(self, z: np.ndarray, y: np.ndarray, grad: np.ndarray) -> float:
        """Mean loss of the batch (framebench.core.losses' definition, fused with its derivative here, which
        the finite-difference tests check); writes dLoss/dz into `grad`."""
        n, classes = z.shape
        rows = np.arange(n)
        if self.train.loss == "cross_entropy":
            z_max = z.max(axis=1, keepdims=True)
            np.subtract(z, z_max, out=grad)
            np.exp(grad, out=grad)
            total = grad.sum(axis=1, keepdims=True)
            grad /= total
            if self.model.output_activation == "softmax":
                p_true = grad[rows, y]
                loss = -np.log(np.clip(p_true, PROB_CLIP, 1 - PROB_CLIP)).mean()
                unclipped = (p_true > PROB_CLIP) & (p_true < 1 - PROB_CLIP)
                grad *= unclipped[:, None]  # the clip's zero slope
                grad[rows, y] -= unclipped
            else:
                loss = (np.log(total) + z_max)[:, 0].mean() - z[rows, y].mean()
                grad[rows, y] -= 1
            grad /= n
            return float(loss)
        activate = output_activation(NUMPY, self.model)
        out = activate(z).copy()  # becomes out - onehot in place; z must survive
        out[rows, y] -= 1  # out - onehot
        loss = float((out * out).mean())
        np.multiply(out, 2.0 / (n * classes), out=grad)
        if self.model.output_activation == "relu":
            grad *= z > 0
        elif self.model.output_activation == "softmax":
            p = activate(z)
            grad -= (grad * p).sum(axis=1, keepdims=True)
            grad *= p
        return loss

    def loss_and_gradients(self, x: np.ndarray, y: np.ndarray, *, masks: list[np.ndarray] | None) -> float:
        """Forward and backward for one batch; the gradients land in `self.grads`."""
        h = self.forward(x, masks=masks)
        dh = self.batch_buffers(len(x))["dh"]
        loss = self.output_gradient(h[-1], y, dh[-1])
        for layer in reversed(range(self.layers)):
            delta = dh[layer + 1]
            np.matmul(h[layer].T, delta, out=self.grads[2 * layer])
            np.sum(delta, axis=0, out=self.grads[2 * layer + 1])
            if layer == 0:
                break
            np.matmul(delta, self.params[2 * layer].T, out=dh[layer])
            if masks is not None:
                dh[layer] *= masks[layer - 1]
                scale_by_derivative(self.model.hidden_activation, dh[layer], self.batch_buffers(len(x))["kept"][layer - 1])
            else:
                scale_by_derivative(self.model.hidden_activation, dh[layer], h[layer])
        return loss

    def apply_gradients(self, adam: np.ndarray) -> None:
        """One in-place optimiser step from `self.grads`, with the same formulas as torch.optim;
        `adam` is this step's row of `adam_schedule`."""
        t = self.train
        p, g, s, m = self.flat_params, self.flat_grads, self.flat_scratch, self.first_moment
        if t.optimizer == "sgd":
            np.multiply(g, t.lr, out=s)
        elif t.optimizer == "momentum":
            m *= t.momentum
            m += g
            np.multiply(m, t.lr, out=s)
        else:
            self.adam_direction(*adam)
        p -= s

    def adam_schedule(self, steps: int) -> np.ndarray:
        """The next `steps` steps' Adam coefficients (framebench.core.optim, in the form `adam_form`
        names), rescaled for the moment buffers `adam_direction` keeps."""
        t = self.train
        return (self.adam.next(steps) * [(1 - t.beta1) / np.sqrt(1 - t.beta2), 1 / np.sqrt(1 - t.beta2)]).astype(self.dtype)

    def adam_direction(self, scale: np.floating, eps: np.floating) -> None:
        """Write Adam's step step_size * m / (sqrt(v) + eps') into the scratch buffer.

        To make fewer passes over the parameters (10 instead of 13, for the small batches where this
        loop is a large share of a step) the buffers hold M = m / (1 - β1) and V = v / (1 - β2), which update as
        M = β1 M + g and V = β2 V + g², so the step is scale * M / (sqrt(V) + eps) with
        scale = step_size (1 - β1) / sqrt(1 - β2) and eps = eps' / sqrt(1 - β2) (`adam_schedule`).
        """
        t = self.train
        g, s, m, v = self.flat_grads, self.flat_scratch, self.first_moment, self.second_moment
        m *= t.beta1
        m += g
        np.multiply(g, g, out=s)
        v *= t.beta2
        v += s
        np.sqrt(v, out=s)
        s += eps
        np.divide(m, s, out=s)
        s *= scale

    def train_epoch(self, order: np.ndarray, batch_size: int) -> np.ndarray:
        starts = range(0, len(order), batch_size)
        adam = self.adam_schedule(len(starts))
        losses = []
        for step, start in enumerate(starts):
            idx = order[start : start + batch_size]
            x = self.batch_buffers(len(idx))["h"][0]
            np.take(self.x_train, idx, axis=0, out=x)
            losses.append(self.loss_and_gradients(x, self.y_train[idx], masks=self.dropout_masks(len(idx))))
            self.apply_gradients(adam[step])
        return np.asarray(losses)

    def predict_logits(self, x: np.ndarray) -> np.ndarray:
        return self.forward(np.asarray(x, self.dtype), masks=None)[-1].astype(np.float32)


class NumpyTutorial(NumpyClassifier):
    """Tutorial 002's training loop, on the harness's weights and batch order."""

    dtype = np.float64  # tutorial 002's parameters are float64 (np.random.randn)

    @classmethod
    def lacks(cls, model, train) -> str | None:
        seed_loop = (
            model.hidden_activation == "relu"
            and model.output_activation == "none"
            and train.loss == "cross_entropy"
            and train.optimizer == "sgd"
            and model.dropout == 0
        )
        return None if seed_loop else "tutorial 002's loop: ReLU, softmax cross-entropy on logits, plain SGD, no dropout"

    def train_epoch(self, order: np.ndarray, batch_size: int) -> np.ndarray:
        """Tutorial 002's training loop: gradient(), then params[key] -= learning_rate * grad[key]."""
        names = [f"{kind}{i}" for i in range(1, self.layers + 1) for kind in ("W", "b")]
        params = dict(zip(names, self.params, strict=True))  # the same arrays: updates land in self.params
        layers = OrderedDict()
        for i in range(1, self.layers + 1):
            layers[f"Affine{i}"] = Affine(params[f"W{i}"], params[f"b{i}"])
            if i < self.layers:
                layers[f"Relu{i}"] = Relu()
        last_layer = SoftmaxWithLoss()
        losses = []
        for start in range(0, len(order), batch_size):
            batch_mask = order[start : start + batch_size]
            x_batch, t_batch = self.x_train[batch_mask], self.y_train[batch_mask]
            for layer in layers.values():
                x_batch = layer.forward(x_batch)
            losses.append(last_layer.forward(x_batch, t_batch))
            dout = last_layer.backward()
            for layer in reversed(layers.values()):
                dout = layer.backward(dout)
            for i in range(1, self.layers + 1):
                params[f"W{i}"] -= self.train.lr * layers[f"Affine{i}"].dW
                params[f"b{i}"] -= self.train.lr * layers[f"Affine{i}"].db
        return np.asarray(losses)
