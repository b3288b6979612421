"""Conformance: every case of the spec's vector file, through the package's public functions.

The file is `$LLN_SPEC_VECTORS`, by default `../shared/spec/vectors.json` beside the
repository. Any file of the same form can be run; a section this test does not know fails.
"""

import json
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lln_jax import metrics, observed_labels, schemes

DEFAULT_VECTORS = pathlib.Path(__file__).resolve().parents[2] / "shared" / "spec" / "vectors.json"
VECTORS_PATH = pathlib.Path(os.environ.get("LLN_SPEC_VECTORS", DEFAULT_VECTORS))
KNOWN_VERSIONS = {1}
RTOL, ATOL = 1e-5, 1e-6


def _load_vectors() -> dict:
    if not VECTORS_PATH.is_file():
        raise FileNotFoundError(
            f"spec vectors not found at {VECTORS_PATH}; set LLN_SPEC_VECTORS to the file"
        )
    return json.loads(VECTORS_PATH.read_text())


VECTORS = _load_vectors()


def _cases(section: str) -> list:
    cases = VECTORS.get(section, [])
    ids = [f"{section}[{i}] {case.get('name', '')}".strip() for i, case in enumerate(cases)]
    return [pytest.param(case, id=case_id) for case, case_id in zip(cases, ids, strict=True)]


def _build(scheme: str, rate: float, batch_size: int, num_classes: int, num_epochs: int):
    """The scheme as the trainer builds it, with the whole batch as the data set."""
    context = schemes.SchemeContext(
        num_examples=batch_size,
        num_classes=num_classes,
        batch_size=batch_size,
        steps_per_epoch=1,
        num_epochs=num_epochs,
    )
    hparams = {} if scheme == "an" else {"delta_rel": rate}
    return schemes.create(scheme, context=context, **hparams)


def _batch(labels_obs) -> dict:
    labels_obs = jnp.asarray(labels_obs, jnp.int8)
    num_rows = labels_obs.shape[0]
    return {
        "labels_obs": labels_obs,
        "mask": jnp.ones(num_rows, jnp.float32),
        "example_id": jnp.arange(num_rows, dtype=jnp.int32),
    }


def _loss_and_grad(scheme, logits, batch, state, rate):
    def loss_fn(x):
        loss, new_state, aux = scheme.apply(x, batch, state, rate)
        return loss, (new_state, aux)

    return jax.value_and_grad(loss_fn, has_aux=True)(logits)


HANDLED_SECTIONS = {"losses", "ll_cp_runs", "schedule", "map", "observed_labels", "splits"}


def test_every_section_is_known():
    sections = set(VECTORS) - {"version"}
    unknown = sections - HANDLED_SECTIONS
    assert not unknown, f"sections this test does not understand: {sorted(unknown)}"
    assert VECTORS.get("version") in KNOWN_VERSIONS, f"unknown version {VECTORS.get('version')}"
    assert sections, "the vector file holds no case"


@pytest.mark.parametrize("case", _cases("losses"))
def test_losses(case):
    logits = jnp.asarray(case["logits"], jnp.float32)
    batch_size, num_classes = logits.shape
    scheme = _build(case["scheme"], case["rate"], batch_size, num_classes, num_epochs=2)
    (loss, (_, aux)), grad = _loss_and_grad(
        scheme, logits, _batch(case["labels_obs"]), scheme.init(), jnp.float32(case["rate"])
    )
    expected = case["expected"]
    np.testing.assert_allclose(loss, expected["loss"], rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(grad, expected["grad"], rtol=RTOL, atol=ATOL)
    np.testing.assert_array_equal(np.asarray(aux["modified"], int), expected["modified"])
    np.testing.assert_array_equal(np.asarray(aux["flipped"], int), expected["flipped"])


@pytest.mark.parametrize("case", _cases("ll_cp_runs"))
def test_ll_cp_runs(case):
    labels_obs = np.asarray(case["labels_obs"], np.int8)
    batch_size, num_classes = labels_obs.shape
    epochs = case["epochs"]
    scheme = _build("ll_cp", case["delta"], batch_size, num_classes, num_epochs=len(epochs))
    batch, state = _batch(labels_obs), scheme.init()
    for epoch, expected in enumerate(epochs, start=1):
        rate = scheme.rate_fn(jnp.int32(epoch - 1))  # One step per epoch.
        logits = jnp.asarray(expected["logits"], jnp.float32)
        loss, state, _ = scheme.apply(logits, batch, state, rate)
        np.testing.assert_allclose(loss, expected["expected_loss"], rtol=RTOL, atol=ATOL)
        after = schemes.apply_corrections(batch["labels_obs"], state.corrected[batch["example_id"]])
        np.testing.assert_array_equal(after, expected["expected_labels_obs_after"])


@pytest.mark.parametrize("case", _cases("schedule"))
def test_schedule(case):
    batch_size, num_classes, epoch = case["batch_size"], case["num_classes"], case["epoch"]
    scheme = _build(case["scheme"], case["delta"], batch_size, num_classes, num_epochs=epoch)
    rate = scheme.rate_fn(jnp.int32(epoch - 1))  # One step per epoch: step = epoch - 1.
    k = schemes.num_selected(rate, batch_size * num_classes)
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
