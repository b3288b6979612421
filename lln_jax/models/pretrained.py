"""ImageNet weights: torchvision ResNet state dicts -> our Flax params and BatchNorm stats.

Every number in the paper starts from torchvision's ResNet-50 `IMAGENET1K_V1` weights
(`resnet50-0676ba61.pth`; the V2 weights give different results). Convert them once:

    python -m lln_jax.models.pretrained --source=resnet50-0676ba61.pth \
        --target=resnet50_imagenet1k_v1.npz

`.pth` files need torch (`pip install 'lln_jax[torch]'`); `.safetensors` files (timm
publishes the same V1 weights as `resnet50.tv_in1k`) need only the `safetensors` package.
Training then starts from them with `--config.init_from=resnet50_imagenet1k_v1.npz`: the
backbone is loaded, the head stays newly initialised (SPEC.md section 4), and any name or
shape that does not match is an error that names it.
"""

import io
import re
import zipfile

import numpy as np
from absl import app, flags, logging
from etils import epath
from flax import traverse_util

from lln_jax import models

Variables = dict[str, dict]

_BLOCK = re.compile(r"^layer(\d+)\.(\d+)$")
_DOWNSAMPLE = {"downsample.0": "downsample_conv", "downsample.1": "downsample_bn"}
_BN_LEAVES = {
    "weight": ("params", "scale"),
    "bias": ("params", "bias"),
    "running_mean": ("batch_stats", "mean"),
    "running_var": ("batch_stats", "var"),
}


def read_state_dict(path: str) -> dict[str, np.ndarray]:
    """A torchvision state dict from a `.pth` (needs torch) or `.safetensors` file."""
    suffix = epath.Path(path).suffix
    if suffix == ".safetensors":
        from safetensors.numpy import load as load_safetensors

        return load_safetensors(epath.Path(path).read_bytes())
    if suffix in (".pth", ".pt"):
        try:
            import torch
        except ImportError as error:
            raise ImportError(
                f"reading {path} needs torch: pip install 'lln_jax[torch]', or convert the "
                ".safetensors version instead"
            ) from error
        payload = io.BytesIO(epath.Path(path).read_bytes())
        state_dict = torch.load(payload, map_location="cpu", weights_only=True)
        return {key: value.numpy() for key, value in state_dict.items()}
    raise ValueError(f"{path}: expected a .pth, .pt or .safetensors file")


def _module_path(module: str) -> tuple[str, ...]:
    """'layer1.0.downsample.0' -> ('layer1_0', 'downsample_conv'); 'bn1' -> ('bn1',)."""
    parts = module.split(".")
    if len(parts) >= 2 and _BLOCK.match(".".join(parts[:2])):
        block = "_".join(parts[:2])
        rest = ".".join(parts[2:])
        return (block, _DOWNSAMPLE.get(rest, rest))
    return (module,)


def convert(state_dict: dict[str, np.ndarray]) -> Variables:
    """torchvision names and layouts -> `{'params': ..., 'batch_stats': ...}` of our ResNet.

    Convolutions `[out, in, kh, kw]` become `[kh, kw, in, out]`, linear weights are
    transposed, BatchNorm weight/bias/running stats become scale/bias/mean/var.
    """
    flat: dict[tuple[str, ...], np.ndarray] = {}
    for key, value in state_dict.items():
        module, leaf = key.rsplit(".", 1)
        if leaf == "num_batches_tracked":
            continue
        path, value = _module_path(module), np.asarray(value, np.float32)
        if value.ndim == 4:
            flat[("params", *path, "kernel")] = value.transpose(2, 3, 1, 0)
        elif value.ndim == 2:
            flat[("params", *path, "kernel")] = value.T
        elif path[-1] == models.HEAD_NAME:
            flat[("params", *path, "bias")] = value
        elif leaf in _BN_LEAVES:
            collection, name = _BN_LEAVES[leaf]
            flat[(collection, *path, name)] = value
        else:
            raise ValueError(f"unexpected entry {key!r} of shape {value.shape}")
    return traverse_util.unflatten_dict(flat)


def save(variables: Variables, path: str) -> None:
    """Writes `.npz` weights to a local or `gs://` path."""
    flat = traverse_util.flatten_dict(variables, sep="/")
    buffer = io.BytesIO()
    np.savez(buffer, **flat)
    epath.Path(path).write_bytes(buffer.getvalue())


def check_file(path: str) -> None:
    """Checks that `path` holds converted `.npz` weights, reading headers only.

    Nothing is unpickled: a `.npz` is a zip archive of `.npy` arrays, and each header is read
    with numpy's own parser, which refuses object arrays (the only kind needing pickle).

    Raises:
      ValueError: naming the file and what is wrong with it (missing, not a zip archive of
        numeric `.npy` arrays).
    """
    file = epath.Path(path)
    hint = "convert torchvision weights with `python -m lln_jax.models.pretrained`"
    if not file.exists():
        raise ValueError(f"init_from={path} does not exist; {hint}")
    try:
        with zipfile.ZipFile(io.BytesIO(file.read_bytes())) as archive:
            names = archive.namelist()
            for name in names:
                with archive.open(name) as member:
                    _check_array_header(name, member)
    except (zipfile.BadZipFile, ValueError) as error:
        raise ValueError(f"init_from={path} is not a .npz of weights ({error}); {hint}") from None
    if not names:
        raise ValueError(f"init_from={path} holds no arrays; {hint}")


def _check_array_header(name: str, member) -> None:
    if not name.endswith(".npy"):
        raise ValueError(f"member {name!r} is not a .npy array")
    version = np.lib.format.read_magic(member)
    read_header = {(1, 0): np.lib.format.read_array_header_1_0}.get(
        version, np.lib.format.read_array_header_2_0
    )
    _, _, dtype = read_header(member)
    if dtype.hasobject:
        raise ValueError(f"member {name!r} holds Python objects, not numbers")


def load(path: str) -> Variables:
    """Reads `.npz` weights from a local or `gs://` path (never unpickling)."""
    with np.load(io.BytesIO(epath.Path(path).read_bytes()), allow_pickle=False) as data:
        return traverse_util.unflatten_dict({key: data[key] for key in data.files}, sep="/")


def merge(initial: Variables, loaded: Variables, *, exclude: tuple[str, ...]) -> Variables:
    """`initial` with every leaf outside the `exclude`d top-level modules taken from `loaded`.

    Raises:
      ValueError: naming every leaf that is missing, unexpected, or of another shape.
    """
    want = traverse_util.flatten_dict(initial, sep="/")
    have = traverse_util.flatten_dict(loaded, sep="/")

    def kept(name: str) -> bool:
        return name.split("/")[1] not in exclude

    problems = [f"missing {n} {want[n].shape}" for n in want if kept(n) and n not in have]
    problems += [f"unexpected {n} {have[n].shape}" for n in have if kept(n) and n not in want]
    problems += [
        f"{n}: shape {have[n].shape}, model expects {want[n].shape}"
        for n in want
        if kept(n) and n in have and have[n].shape != want[n].shape
    ]
    if problems:
        raise ValueError("pretrained weights do not match the model: " + "; ".join(problems))
    merged = {n: (have[n].astype(want[n].dtype) if kept(n) else want[n]) for n in want}
    return traverse_util.unflatten_dict(merged, sep="/")


def main(argv):
    del argv
    source, target = flags.FLAGS.source, flags.FLAGS.target
    variables = convert(read_state_dict(source))
    save(variables, target)
    count = sum(v.size for v in traverse_util.flatten_dict(variables["params"]).values())
    logging.info("wrote %s: %d parameters from %s", target, count, source)


if __name__ == "__main__":  # The flags exist only for the command, not for importers.
    flags.DEFINE_string("source", None, "A torchvision ResNet state dict (.pth or .safetensors).")
    flags.DEFINE_string("target", None, "Where to write the converted weights (.npz).")
    flags.mark_flags_as_required(["source", "target"])
    app.run(main)
