"""Where the CPU step time goes: ResNet-50's layers, forward and backward, JAX vs PyTorch.

Times single layers of ResNet-50 at a 224 input, batch 8, forward plus backward, in JAX
(XLA's CPU kernels, and our PyTorch-exact BatchNorm) and PyTorch (oneDNN), so that a gap
in the whole step can be traced to the layers that cause it.

    python benchmarks/conv_kernels.py
"""

import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from lln_jax.models import resnet

BATCH, REPEATS = 8, 10


def _time(fn) -> float:
    fn()
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _jax_grad_time(loss, *inputs) -> float:
    step = jax.jit(jax.grad(loss, argnums=tuple(range(len(inputs)))))
    return _time(lambda: jax.block_until_ready(step(*inputs)))


def _torch_grad_time(forward, *inputs) -> float:
    def step():
        for tensor in inputs:
            tensor.grad = None
        forward(*inputs).sum().backward()

    return _time(step)


def conv(size, cin, cout, kernel, stride):
    import torch

    x = np.random.rand(BATCH, size, size, cin).astype(np.float32)
    w = np.random.rand(kernel, kernel, cin, cout).astype(np.float32)
    pad = kernel // 2

    def loss(x, w):
        dims = ("NHWC", "HWIO", "NHWC")
        y = jax.lax.conv_general_dilated(x, w, (stride, stride), [(pad, pad)] * 2,
                                         dimension_numbers=dims)  # fmt: skip
        return jnp.sum(y)

    tx = torch.tensor(x).permute(0, 3, 1, 2).contiguous().requires_grad_()
    tw = torch.tensor(w).permute(3, 2, 0, 1).contiguous().requires_grad_()
    forward = lambda a, b: torch.nn.functional.conv2d(a, b, stride=stride, padding=pad)  # noqa: E731
    return _jax_grad_time(loss, jnp.asarray(x), jnp.asarray(w)), _torch_grad_time(forward, tx, tw)


def max_pool(size, channels):
    import torch

    x = np.random.rand(BATCH, size, size, channels).astype(np.float32)

    def loss(x):
        return jnp.sum(jax.lax.reduce_window(
            x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1), ((0, 0), (1, 1), (1, 1), (0, 0))
        ))  # fmt: skip

    tx = torch.tensor(x).permute(0, 3, 1, 2).contiguous().requires_grad_()
    forward = lambda a: torch.nn.functional.max_pool2d(a, 3, 2, 1)  # noqa: E731
    return _jax_grad_time(loss, jnp.asarray(x)), _torch_grad_time(forward, tx)


def batch_norm(size, channels):
    import torch

    x = np.random.rand(BATCH, size, size, channels).astype(np.float32)
    module = resnet.BatchNorm(use_running_average=False)
    variables = module.init(jax.random.PRNGKey(0), jnp.asarray(x))

    def loss(x, params):
        y, _ = module.apply({**variables, "params": params}, x, mutable=["batch_stats"])
        return jnp.sum(y * y)

    tx = torch.tensor(x).permute(0, 3, 1, 2).contiguous().requires_grad_()
    bn = torch.nn.BatchNorm2d(channels).train()
    forward = lambda a: bn(a) ** 2  # noqa: E731
    return _jax_grad_time(loss, jnp.asarray(x), variables["params"]), _torch_grad_time(forward, tx)


LAYERS = {
    "stem conv 7x7/2, 224x224x3 -> 64": lambda: conv(224, 3, 64, 7, 2),
    "max pool 3x3/2, 112x112x64": lambda: max_pool(112, 64),
    "BatchNorm (train), 112x112x64": lambda: batch_norm(112, 64),
    "conv 3x3, 56x56x64": lambda: conv(56, 64, 64, 3, 1),
    "conv 1x1, 56x56x64 -> 256": lambda: conv(56, 64, 256, 1, 1),
    "conv 3x3, 28x28x128": lambda: conv(28, 128, 128, 3, 1),
    "conv 3x3, 14x14x256": lambda: conv(14, 256, 256, 3, 1),
    "conv 3x3, 7x7x512": lambda: conv(7, 512, 512, 3, 1),
}


def main() -> None:
    print("| layer (forward + backward, batch 8) | JAX ms | PyTorch ms | JAX / PyTorch time |")
    print("|---|---|---|---|")
    for name, measure in LAYERS.items():
        jax_s, torch_s = measure()
        print(f"| {name} | {jax_s * 1e3:.1f} | {torch_s * 1e3:.1f} | {jax_s / torch_s:.2f} |")


if __name__ == "__main__":
    main()
