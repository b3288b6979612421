"""Conformance: every case of the spec's vector files, through the package's public functions.

The files are `$LLN_SPEC_VECTORS` (one path, or several joined by the OS path separator),
by default the copies vendored in `tests/data/`: `vectors.json` (version 1, SPEC.md section
8), `method_vectors.json` (version 2, section 10) and `gr_openimages_vectors.json` (version 3,
section 13). A file of any version may hold any known section; a section this test does not
know fails.
"""

import io
import json
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lln_jax import schemes
from lln_jax.data import observed_labels
from lln_jax.data.datasets import openimages_labels
from lln_jax.evaluation import metrics
from lln_jax.models import resnet

DATA_DIR = pathlib.Path(__file__).resolve().parent / "data"
VENDORED = ("vectors.json", "method_vectors.json", "gr_openimages_vectors.json")
# The spec's own copies, where the repository sits beside them; a fresh clone has none.
SPEC_DIR = pathlib.Path(__file__).resolve().parents[2] / "shared" / "spec"
KNOWN_VERSIONS = {1, 2, 3}
RTOL, ATOL = 1e-5, 1e-6


def _vector_paths() -> list[pathlib.Path]:
    given = os.environ.get("LLN_SPEC_VECTORS")
    if not given:
        return [DATA_DIR / name for name in VENDORED]
    return [pathlib.Path(p) for p in given.split(os.pathsep) if p]


def _load(path: pathlib.Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"spec vectors not found at {path} (LLN_SPEC_VECTORS)")
    return json.loads(path.read_text())


VECTORS = {path: _load(path) for path in _vector_paths()}


def _cases(section: str) -> list:
    params = []
    for path, vectors in VECTORS.items():
        for i, case in enumerate(vectors.get(section, [])):
            case_id = f"{path.name}:{section}[{i}] {case.get('name', '')}".strip()
            params.append(pytest.param(case, id=case_id))
    return params


def _build(scheme: str, batch_size: int, num_classes: int, num_epochs: int, **hparams):
    """The scheme as the trainer builds it, with the whole batch as the data set."""
    context = schemes.SchemeContext(
        num_examples=batch_size,
        num_classes=num_classes,
        batch_size=batch_size,
        steps_per_epoch=1,
        num_epochs=num_epochs,
    )
    return schemes.create(scheme, context=context, **hparams)


def _large_loss_hparams(scheme: str, rate: float) -> dict:
    return {} if scheme == "an" else {"delta_rel": rate}


def _batch(labels_obs) -> dict:
    labels_obs = jnp.asarray(labels_obs, jnp.int8)
    num_rows = labels_obs.shape[0]
    return {
        "labels_obs": labels_obs,
        "mask": jnp.ones(num_rows, jnp.float32),
        "example_id": jnp.arange(num_rows, dtype=jnp.int32),
    }


def _loss_and_grad(scheme, logits, batch, state, scheduled, params=()):
    """The loss, its aux, and the gradients w.r.t. the logits and the scheme's params."""

    def loss_fn(x, p):
        loss, new_state, aux = scheme.apply(x, batch, state, scheduled, params=p)
        return loss, (new_state, aux)

    return jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)(logits, params)


HANDLED_SECTIONS = {
    # Version 1 (SPEC.md section 8).
    "losses", "ll_cp_runs", "schedule", "map", "observed_labels", "splits",
    # Version 2 (SPEC.md section 10).
    "baseline_losses", "boostlu",
    # Version 3 (SPEC.md section 13).
    "gr_losses", "observed_map", "grouped_map", "openimages_labels",
}  # fmt: skip


@pytest.mark.parametrize("path", list(VECTORS), ids=lambda p: p.name)
def test_every_section_is_known(path):
    vectors = VECTORS[path]
    sections = set(vectors) - {"version"}
    unknown = sections - HANDLED_SECTIONS
    assert not unknown, f"{path}: sections this test does not understand: {sorted(unknown)}"
    assert vectors.get("version") in KNOWN_VERSIONS, f"{path}: version {vectors.get('version')}"
    assert sections, f"{path} holds no case"


@pytest.mark.parametrize("name", VENDORED)
def test_the_vendored_copies_equal_the_spec_where_it_is_beside_the_repository(name):
    spec_copy = SPEC_DIR / name
    if not spec_copy.is_file():
        pytest.skip(f"no {spec_copy} beside this checkout (a fresh clone): nothing to compare")
    vendored = json.loads((DATA_DIR / name).read_text())
    assert vendored == json.loads(spec_copy.read_text()), f"tests/data/{name} is stale"


# ----------------------------------------------------------------------------- version 1


@pytest.mark.parametrize("case", _cases("losses"))
def test_losses(case):
    logits = jnp.asarray(case["logits"], jnp.float32)
    batch_size, num_classes = logits.shape
    hparams = _large_loss_hparams(case["scheme"], case["rate"])
    scheme = _build(case["scheme"], batch_size, num_classes, num_epochs=2, **hparams)
    (loss, (_, aux)), (grad, _) = _loss_and_grad(
        scheme,
        logits,
        _batch(case["labels_obs"]),
        scheme.init(),
        schemes.SelectionRate(jnp.float32(case["rate"])),
    )
    expected = case["expected"]
    np.testing.assert_allclose(loss, expected["loss"], rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(grad, expected["grad"], rtol=RTOL, atol=ATOL)
    np.testing.assert_array_equal(np.asarray(aux.modified, int), expected["modified"])
    np.testing.assert_array_equal(np.asarray(aux.flipped, int), expected["flipped"])


@pytest.mark.parametrize("case", _cases("ll_cp_runs"))
def test_ll_cp_runs(case):
    labels_obs = np.asarray(case["labels_obs"], np.int8)
    batch_size, num_classes = labels_obs.shape
    epochs = case["epochs"]
    scheme = _build(
        "ll_cp", batch_size, num_classes, num_epochs=len(epochs), delta_rel=case["delta"]
    )
    batch, state = _batch(labels_obs), scheme.init()
    for epoch, expected in enumerate(epochs, start=1):
        scheduled = scheme.schedule(jnp.int32(epoch - 1))  # One step per epoch.
        logits = jnp.asarray(expected["logits"], jnp.float32)
        loss, state, _ = scheme.apply(logits, batch, state, scheduled)
        np.testing.assert_allclose(loss, expected["expected_loss"], rtol=RTOL, atol=ATOL)
        after = schemes.apply_corrections(batch["labels_obs"], state.corrected[batch["example_id"]])
        np.testing.assert_array_equal(after, expected["expected_labels_obs_after"])


@pytest.mark.parametrize("case", _cases("schedule"))
def test_schedule(case):
    batch_size, num_classes, epoch = case["batch_size"], case["num_classes"], case["epoch"]
    hparams = _large_loss_hparams(case["scheme"], case["delta"])
    scheme = _build(case["scheme"], batch_size, num_classes, num_epochs=epoch, **hparams)
    scheduled = scheme.schedule(jnp.int32(epoch - 1))  # One step per epoch: step = epoch - 1.
    k = schemes.num_selected(scheduled.rate, batch_size * num_classes)
    assert int(k) == case["expected_k"]


@pytest.mark.parametrize("case", _cases("map"))
def test_map(case):
    got = metrics.mean_average_precision(np.asarray(case["scores"]), np.asarray(case["labels"]))
    np.testing.assert_allclose(got, case["expected_map"], rtol=0, atol=1e-6)


@pytest.mark.parametrize("case", _cases("observed_labels"))
def test_observed_labels(case):
    got = observed_labels.single_positive(np.asarray(case["labels"]), seed=case["seed"])
    np.testing.assert_array_equal(got, case["expected_labels_obs"])


@pytest.mark.parametrize("case", _cases("splits"))
def test_splits(case):
    train, val = observed_labels.train_val_split(
        case["num_examples"], val_frac=case["val_frac"], seed=case["seed"]
    )
    assert train.tolist() == case["expected_train"]
    assert val.tolist() == case["expected_val"]


# ----------------------------------------------------------------------------- version 2


@pytest.mark.parametrize("case", _cases("baseline_losses"))
def test_baseline_losses(case):
    logits = jnp.asarray(case["logits"], jnp.float32)
    batch_size, num_classes = logits.shape
    scheme = _build(case["scheme"], batch_size, num_classes, num_epochs=1, **case["hparams"])
    params = scheme.init_params(jax.random.PRNGKey(0), jnp.asarray(case["labels_obs"], jnp.int8))
    if "estimator_logits" in case:  # ROLE: the estimator rows of the batch, as given.
        params = params._replace(logits=jnp.asarray(case["estimator_logits"], jnp.float32))
    (loss, _), (grad, grad_params) = _loss_and_grad(
        scheme,
        logits,
        _batch(case["labels_obs"]),
        scheme.init(),
        scheme.schedule(jnp.int32(0)),
        params,
    )
    expected = case["expected"]
    np.testing.assert_allclose(loss, expected["loss"], rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(grad, expected["grad"], rtol=RTOL, atol=ATOL)
    if "grad_estimator" in expected:
        np.testing.assert_allclose(
            grad_params.logits, expected["grad_estimator"], rtol=RTOL, atol=ATOL
        )


@pytest.mark.parametrize("case", _cases("boostlu"))
def test_boostlu(case):
    features = jnp.asarray(case["features"], jnp.float32)
    kernel = jnp.asarray(case["kernel"], jnp.float32)
    head = resnet.BoostedHead(num_classes=kernel.shape[1], alpha=case["alpha"])
    variables = {"params": {"kernel": kernel, "bias": jnp.asarray(case["bias"], jnp.float32)}}
    logits = head.apply(variables, features)
    np.testing.assert_allclose(logits, case["expected_logits"], rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- version 3

MAP_ATOL = 1e-6


@pytest.mark.parametrize("case", _cases("gr_losses"))
def test_gr_losses(case):
    logits = jnp.asarray(case["logits"], jnp.float32)
    batch_size, num_classes = logits.shape
    hparams = case["hparams"]
    # A batch per epoch: step e - 1 is in epoch e.
    steps_per_epoch, step = 1, case["epoch"] - 1
    context = schemes.SchemeContext(
        num_examples=batch_size, num_classes=num_classes, batch_size=batch_size,
        steps_per_epoch=steps_per_epoch, num_epochs=case["num_epochs"],
    )  # fmt: skip
    scheme = schemes.create("gr", context=context, **hparams)
    scheduled = scheme.schedule(jnp.int32(step))
    expected = case["expected"]
    for name, value in expected["schedule"].items():
        np.testing.assert_allclose(getattr(scheduled, name), value, rtol=RTOL, atol=ATOL)
    (loss, _), (grad, _) = _loss_and_grad(
        scheme, logits, _batch(case["labels_obs"]), scheme.init(), scheduled
    )
    np.testing.assert_allclose(loss, expected["loss"], rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(grad, expected["grad"], rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("case", _cases("observed_map"))
def test_observed_map(case):
    value = metrics.observed_mean_average_precision(
        np.asarray(case["scores"]), np.asarray(case["labels_obs"]), case["convention"]
    )
    np.testing.assert_allclose(value, case["expected_map"], rtol=0, atol=MAP_ATOL)


@pytest.mark.parametrize("case", _cases("grouped_map"))
def test_grouped_map(case):
    groups = metrics.frequency_groups(np.asarray(case["train_labels_obs"]), case["num_groups"])
    assert [group.tolist() for group in groups] == case["expected_groups"]
    scores, labels_obs = np.asarray(case["scores"]), np.asarray(case["labels_obs"])
    group_maps = metrics.grouped_observed_map(scores, labels_obs, groups, case["convention"])
    np.testing.assert_allclose(group_maps, case["expected_group_maps"], rtol=0, atol=MAP_ATOL)
    overall = metrics.observed_mean_average_precision(scores, labels_obs, case["convention"])
    np.testing.assert_allclose(overall, case["expected_map"], rtol=0, atol=MAP_ATOL)


@pytest.mark.parametrize("case", _cases("openimages_labels"))
def test_openimages_labels(case):
    rows = openimages_labels.read_annotations(io.StringIO(case["annotations_csv"]))
    labels = openimages_labels.observed_labels(
        case["trainable"], rows, require_trainable=case["require_trainable"]
    )
    assert labels.image_ids.tolist() == case["expected_image_ids"]
    dense = labels.dense_rows(np.arange(len(labels.image_ids)))
    np.testing.assert_array_equal(dense, case["expected_labels_obs"])
