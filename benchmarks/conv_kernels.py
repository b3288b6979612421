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


def _jax_grad_time(loss, *inputs, argnums=None) -> float:
    argnums = tuple(range(len(inputs))) if argnums is None else argnums
    step = jax.jit(jax.grad(loss, argnums=argnums))
    return _time(lambda: jax.block_until_ready(step(*inputs)))


def _torch_grad_time(forward, *inputs) -> float:
    def step():
        for tensor in inputs:
            tensor.grad = None
        forward(*inputs).sum().backward()

    return _time(step)


def conv(size, cin, cout, kernel, stride, input_grad=True):
    """A convolution; the stem's input needs no gradient in training (`input_grad=False`)."""
    import torch

    x = np.random.rand(BATCH, size, size, cin).astype(np.float32)
    w = np.random.rand(kernel, kernel, cin, cout).astype(np.float32)
    pad = kernel // 2

    def loss(x, w):
        dims = ("NHWC", "HWIO", "NHWC")
        y = jax.lax.conv_general_dilated(x, w, (stride, stride), [(pad, pad)] * 2,
                                         dimension_numbers=dims)  # fmt: skip
        return jnp.sum(y)

    tx = torch.tensor(x).permute(0, 3, 1, 2).contiguous().requires_grad_(input_grad)
    tw = torch.tensor(w).permute(3, 2, 0, 1).contiguous().requires_grad_()
    if input_grad:
        forward = lambda a, b: torch.nn.functional.conv2d(a, b, stride=stride, padding=pad)  # noqa: E731
        return _jax_grad_time(loss, jnp.asarray(x), jnp.asarray(w)), _torch_grad_time(
            forward, tx, tw
        )
    forward = lambda b: torch.nn.functional.conv2d(tx, b, stride=stride, padding=pad)  # noqa: E731
    jax_time = _jax_grad_time(loss, jnp.asarray(x), jnp.asarray(w), argnums=(1,))
    return jax_time, _torch_grad_time(forward, tw)


def pointwise(size, cin, cout):
    """Our 1x1 convolution: a matmul over channels (`resnet.PointwiseConv`)."""
    import torch

    x = np.random.rand(BATCH, size, size, cin).astype(np.float32)
    module = resnet.PointwiseConv(cout)
    params = module.init(jax.random.PRNGKey(0), jnp.asarray(x))

    def loss(x, params):
        return jnp.sum(module.apply(params, x))

    tx = torch.tensor(x).permute(0, 3, 1, 2).contiguous().requires_grad_()
    tw = torch.rand(cout, cin, 1, 1, requires_grad=True)
    forward = lambda a, b: torch.nn.functional.conv2d(a, b)  # noqa: E731
    return _jax_grad_time(loss, jnp.asarray(x), params), _torch_grad_time(forward, tx, tw)


def our_max_pool(size, channels):
    """Our max pool: the maximum of 9 strided slices (`resnet.max_pool_3x3_stride_2`)."""
    import torch

    x = np.random.rand(BATCH, size, size, channels).astype(np.float32)
    tx = torch.tensor(x).permute(0, 3, 1, 2).contiguous().requires_grad_()
    forward = lambda a: torch.nn.functional.max_pool2d(a, 3, 2, 1)  # noqa: E731
    loss = lambda x: jnp.sum(resnet.max_pool_3x3_stride_2(x))  # noqa: E731
    return _jax_grad_time(loss, jnp.asarray(x)), _torch_grad_time(forward, tx)


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
    "stem conv 7x7/2, 224x224x3 -> 64 (kernel gradient only)": lambda: conv(
        224, 3, 64, 7, 2, input_grad=False
    ),
    "max pool 3x3/2, 112x112x64: XLA reduce_window": lambda: max_pool(112, 64),
    "max pool 3x3/2, 112x112x64: ours, strided slices": lambda: our_max_pool(112, 64),
    "BatchNorm (train), 112x112x64": lambda: batch_norm(112, 64),
    "conv 3x3, 56x56x64": lambda: conv(56, 64, 64, 3, 1),
    "conv 1x1, 56x56x64 -> 256: XLA convolution": lambda: conv(56, 64, 256, 1, 1),
    "conv 1x1, 56x56x64 -> 256: ours, matmul": lambda: pointwise(56, 64, 256),
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
