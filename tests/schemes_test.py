"""Loss schemes: properties, padding, errors, sharding over 8 devices, and no recompiles."""

import chex
import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import NUM_DEVICES
from hypothesis import given, settings
from hypothesis import strategies as st

from lln_jax import schemes
from lln_jax.run import sharding

LARGE_LOSS = ("ll_r", "ll_ct", "ll_cp")
ALL = ("an", *LARGE_LOSS)
FEW = settings(max_examples=25, deadline=None)


def _context(batch_size, num_classes, num_examples=None, steps_per_epoch=1, num_epochs=10):
    return schemes.SchemeContext(
        num_examples=batch_size if num_examples is None else num_examples,
        num_classes=num_classes,
        batch_size=batch_size,
        steps_per_epoch=steps_per_epoch,
        num_epochs=num_epochs,
    )


def _scheme(name, context, delta_rel=0.5):
    return schemes.create(
        name, context=context, **({} if name == "an" else {"delta_rel": delta_rel})
    )


def _batch(labels_obs, mask=None, example_id=None):
    labels_obs = jnp.asarray(labels_obs, jnp.int8)
    rows = labels_obs.shape[0]
    return {
        "labels_obs": labels_obs,
        "mask": jnp.ones(rows) if mask is None else jnp.asarray(mask, jnp.float32),
        "example_id": jnp.arange(rows) if example_id is None else jnp.asarray(example_id),
    }


def _apply_with_grad(scheme, logits, batch, state, rate):
    def loss_fn(x):
        loss, new_state, aux = scheme.apply(x, batch, state, schemes.SelectionRate(rate))
        return loss, (new_state, aux)

    (loss, (new_state, aux)), grad = jax.value_and_grad(loss_fn, has_aux=True)(logits)
    return loss, grad, new_state, aux


@st.composite
def problems(draw):
    """A batch with distinct logits (so no loss ties), random weak labels and a rate.

    Few shapes, so that each compiles once and the many contents run fast.
    """
    rows = draw(st.sampled_from([1, 2, 5]))
    classes = draw(st.sampled_from([1, 3, 6]))
    order = draw(st.permutations(range(rows * classes)))
    logits = (np.asarray(order, np.float32).reshape(rows, classes) - rows * classes / 2) * 0.7
    labels_obs = draw(hnp.arrays(np.int8, (rows, classes), elements=st.sampled_from([-1, 0, 0, 1])))
    rate = draw(st.sampled_from([0.0, 0.05, 0.1, 0.25, 0.5, 0.8, 1.0]))
    return jnp.asarray(logits), labels_obs, rate


# ----------------------------------------------------------------------------- the table


LOGITS_2X3 = jnp.array([[2.0, -1.0, 0.5], [-0.5, 1.5, -2.0]])
LABELS_2X3 = jnp.array([[1, 0, 0], [0, 0, -1]], jnp.int8)


@pytest.mark.parametrize("name", LARGE_LOSS)
def test_rate_zero_equals_assume_negative(name):
    context = _context(2, 3)
    an = _scheme("an", context)
    scheme = _scheme(name, context)
    batch = _batch(LABELS_2X3)
    an_loss, an_grad, _, _ = _apply_with_grad(an, LOGITS_2X3, batch, an.init(), 0.0)
    loss, grad, _, aux = _apply_with_grad(scheme, LOGITS_2X3, batch, scheme.init(), 0.0)
    np.testing.assert_allclose(loss, an_loss, rtol=1e-6)
    np.testing.assert_allclose(grad, an_grad, rtol=1e-6)
    assert not aux.modified.any()


@pytest.mark.parametrize(
    ("name", "expected_loss_on_m"),
    [
        ("ll_r", 0.0),
        ("ll_ct", float(jax.nn.softplus(-1.5))),
        ("ll_cp", float(jax.nn.softplus(-1.5))),
    ],
)
def test_one_selected_entry_is_rejected_or_corrected(name, expected_loss_on_m):
    # rate 1/6 -> k = 1: the largest unobserved loss is softplus(1.5), entry (1, 1).
    scheme = _scheme(name, _context(2, 3), delta_rel=1 / 6)
    _, _, _, aux = _apply_with_grad(scheme, LOGITS_2X3, _batch(LABELS_2X3), scheme.init(), 1 / 6)
    expected_modified = np.zeros((2, 3), bool)
    expected_modified[1, 1] = True
    np.testing.assert_array_equal(aux.modified, expected_modified)
    an = _scheme("an", _context(2, 3))
    an_loss, _, _, _ = _apply_with_grad(an, LOGITS_2X3, _batch(LABELS_2X3), an.init(), 0.0)
    loss, _, _, _ = _apply_with_grad(scheme, LOGITS_2X3, _batch(LABELS_2X3), scheme.init(), 1 / 6)
    shift = (expected_loss_on_m - float(jax.nn.softplus(1.5))) / 6
    np.testing.assert_allclose(loss, an_loss + shift, rtol=1e-6)


# ----------------------------------------------------------------------------- properties


@pytest.mark.slow  # Property tests over many compiles: kept out of the 4-minute default tier.
@pytest.mark.parametrize("name", ALL)
@FEW
@given(problem=problems())
def test_observed_entries_are_never_modified(name, problem):
    logits, labels_obs, rate = problem
    scheme = _scheme(name, _context(*labels_obs.shape), delta_rel=rate)
    _, state, aux = scheme.apply(
        logits, _batch(labels_obs), scheme.init(), schemes.SelectionRate(rate)
    )
    assert not np.asarray(aux.modified)[labels_obs != 0].any()
    if name == "ll_cp":
        assert not np.asarray(state.corrected)[labels_obs != 0].any()


@pytest.mark.parametrize("name", LARGE_LOSS)
@FEW
@given(problem=problems())
def test_without_ties_exactly_k_entries_are_modified(name, problem):
    logits, labels_obs, rate = problem
    rows, classes = labels_obs.shape
    scheme = _scheme(name, _context(rows, classes), delta_rel=rate)
    _, _, aux = scheme.apply(logits, _batch(labels_obs), scheme.init(), schemes.SelectionRate(rate))
    k = int(schemes.num_selected(rate, rows * classes))
    assert int(aux.modified.sum()) == min(k, int((labels_obs == 0).sum()))
    modified, unobserved = np.asarray(aux.modified), labels_obs == 0
    losses = np.asarray(jax.nn.softplus(logits))  # The AN loss of an unobserved entry.
    assert losses[modified].min(initial=np.inf) > losses[unobserved & ~modified].max(initial=-1)


@pytest.mark.slow  # Property tests over many compiles: kept out of the 4-minute default tier.
@FEW
@given(problem=problems())
def test_ll_ct_and_ll_cp_give_identical_losses(problem):
    logits, labels_obs, rate = problem
    context = _context(*labels_obs.shape)
    ct, cp = _scheme("ll_ct", context, rate), _scheme("ll_cp", context, rate)
    batch = _batch(labels_obs)
    ct_loss, ct_grad, _, _ = _apply_with_grad(ct, logits, batch, ct.init(), rate)
    cp_loss, cp_grad, _, _ = _apply_with_grad(cp, logits, batch, cp.init(), rate)
    np.testing.assert_array_equal(ct_loss, cp_loss)
    np.testing.assert_array_equal(ct_grad, cp_grad)


@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    steps=st.integers(2, 6),
    rate=st.sampled_from([0.1, 0.3, 0.6]),
)
def test_ll_cp_table_only_gains_entries(seed, steps, rate):
    rng = np.random.default_rng(seed)
    num_examples, batch_size, classes = 12, 4, 5
    labels_obs = np.where(rng.random((num_examples, classes)) < 0.2, 1, 0).astype(np.int8)
    scheme = _scheme("ll_cp", _context(batch_size, classes, num_examples=num_examples), rate)
    state = scheme.init()
    for _ in range(steps):
        ids = rng.choice(num_examples, batch_size, replace=False)
        logits = jnp.asarray(rng.normal(size=(batch_size, classes)) * 3, jnp.float32)
        batch = _batch(labels_obs[ids], example_id=ids)
        _, new_state, aux = scheme.apply(logits, batch, state, schemes.SelectionRate(rate))
        before, after = np.asarray(state.corrected), np.asarray(new_state.corrected)
        assert np.all(after >= before), "a correction was undone"
        gained = np.zeros_like(before)
        gained[ids] = np.asarray(aux.flipped)
        np.testing.assert_array_equal(after, before | gained)
        state = new_state
    assert not np.asarray(state.corrected)[labels_obs == 1].any()


# ----------------------------------------------------------------------------- padding


@pytest.mark.parametrize("name", ALL)
def test_padding_rows_change_nothing(name):
    rng = np.random.default_rng(1)
    logits = jnp.asarray(rng.normal(size=(6, 4)) * 2, jnp.float32)
    labels_obs = np.zeros((6, 4), np.int8)
    labels_obs[np.arange(6), rng.integers(0, 4, 6)] = 1
    real = _context(4, 4, num_examples=4)
    padded = _context(6, 4, num_examples=4)
    real_scheme, padded_scheme = _scheme(name, real, 0.3), _scheme(name, padded, 0.3)
    real_out = _apply_with_grad(
        real_scheme, logits[:4], _batch(labels_obs[:4]), real_scheme.init(), 0.3
    )
    # Padding rows reuse example ids 0 and 1: they must not write into those rows.
    padded_batch = _batch(labels_obs, mask=[1, 1, 1, 1, 0, 0], example_id=[0, 1, 2, 3, 0, 1])
    loss, grad, state, aux = _apply_with_grad(
        padded_scheme, logits, padded_batch, padded_scheme.init(), 0.3
    )
    np.testing.assert_allclose(loss, real_out[0], rtol=1e-6)
    np.testing.assert_allclose(grad[:4], real_out[1], rtol=1e-6)
    np.testing.assert_array_equal(grad[4:], 0.0)
    np.testing.assert_array_equal(aux.modified[:4], real_out[3].modified)
    assert not aux.modified[4:].any()
    if name == "ll_cp":
        np.testing.assert_array_equal(state.corrected, real_out[2].corrected)


# ----------------------------------------------------------------------------- schedules


def test_k_is_exact_for_integer_products():
    assert int(schemes.num_selected(0.025, 16 * 20)) == 8
    assert int(schemes.num_selected(5 * 0.005, 320)) == 8
    assert int(schemes.num_selected(0.0251, 320)) == 9
    assert int(schemes.num_selected(0.0, 320)) == 0
    assert int(schemes.num_selected(1e-4, 320)) == 1


def test_schedules_follow_the_spec():
    context = _context(16, 20, steps_per_epoch=3)
    ll_r, ll_cp = _scheme("ll_r", context, 0.1), _scheme("ll_cp", context, 0.1)
    steps = jnp.arange(12)  # Epochs 1, 1, 1, 2, 2, 2, 3, ...
    ll_r_rates, ll_cp_rates = jax.vmap(ll_r.schedule)(steps), jax.vmap(ll_cp.schedule)(steps)
    np.testing.assert_allclose(ll_r_rates.rate, np.repeat([0, 0.1, 0.2, 0.3], 3))
    np.testing.assert_allclose(ll_cp_rates.rate, np.repeat([0, 0.1, 0.1, 0.1], 3))
    assert _scheme("an", context).schedule(steps) == schemes.Unscheduled()


def test_growing_rate_saturates_at_one():
    assert float(schemes.growing_rate(0.3)(jnp.int32(10))) == 1.0


def test_k_max_bounds_every_epoch():
    rate_fn = schemes.growing_rate(0.002)
    assert schemes.max_num_selected(rate_fn, num_entries=16 * 80, num_epochs=10) == 24


# ----------------------------------------------------------------------------- errors


def test_unknown_scheme_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"'ll_x'.*\['an', 'an_ls', 'em', 'epr', 'gr', 'll_cp'"):
        schemes.create("ll_x", context=_context(2, 3))


@pytest.mark.parametrize("delta_rel", [-0.1, 1.5, 20.0])
@pytest.mark.parametrize("name", LARGE_LOSS)
def test_rate_outside_unit_interval_is_refused(name, delta_rel):
    with pytest.raises(ValueError, match=r"delta_rel.*\[0, 1\]"):
        schemes.create(name, context=_context(2, 3), delta_rel=delta_rel)


def test_wrong_hyperparameters_fail_loudly():
    with pytest.raises(
        ValueError, match=r"'ll_r' takes the hyperparameters \['delta_rel'\], got \[\]"
    ):
        schemes.create("ll_r", context=_context(2, 3))
    with pytest.raises(ValueError, match=r"\['delta_rel'\], got \['delta'\]"):
        schemes.create("ll_r", context=_context(2, 3), delta=0.1)
    with pytest.raises(
        ValueError, match=r"'an' takes the hyperparameters \[\], got \['delta_rel'\]"
    ):
        schemes.create("an", context=_context(2, 3), delta_rel=0.002)


@pytest.mark.parametrize("name", ALL)
def test_labels_outside_the_three_values_are_refused(name):
    scheme = _scheme(name, _context(2, 3))
    bad = {"labels_obs": jnp.array([[2, 0, 0], [0, 1, 0]], jnp.int8), "example_id": jnp.arange(2)}
    with pytest.raises(ValueError, match=r"labels_obs must be in \{-1, 0, 1\}; found \[2\]"):
        scheme.apply(LOGITS_2X3, bad, scheme.init(), schemes.SelectionRate(0.1))


@pytest.mark.parametrize("name", ALL)
def test_shape_mismatches_are_refused(name):
    scheme = _scheme(name, _context(2, 3))
    with pytest.raises(ValueError, match="labels_obs shape"):
        scheme.apply(
            LOGITS_2X3, _batch(np.zeros((2, 4))), scheme.init(), schemes.SelectionRate(0.1)
        )
    with pytest.raises(ValueError, match=r"logits must be \[B, 3\]"):
        scheme.apply(
            jnp.zeros((2, 4)), _batch(np.zeros((2, 4))), scheme.init(), schemes.SelectionRate(0.1)
        )
    with pytest.raises(ValueError, match="mask"):
        scheme.apply(
            LOGITS_2X3,
            _batch(LABELS_2X3, mask=[1, 1, 1]),
            scheme.init(),
            schemes.SelectionRate(0.1),
        )


# ----------------------------------------------------------------------------- sharding


def _global_problem(rows=32, classes=5, seed=0):
    rng = np.random.default_rng(seed)
    logits = jnp.asarray(rng.normal(size=(rows, classes)) * 3, jnp.float32)
    labels_obs = np.zeros((rows, classes), np.int8)
    labels_obs[np.arange(rows), rng.integers(0, classes, rows)] = 1
    mask = np.ones(rows, np.float32)
    mask[-3:] = 0  # A padded last batch.
    return logits, _batch(labels_obs, mask=mask, example_id=np.arange(rows, dtype=np.int32))


@pytest.mark.parametrize("name", ALL)
def test_sharded_selection_and_loss_equal_the_single_device_ones(name):
    assert jax.device_count() == NUM_DEVICES
    logits, batch = _global_problem()
    scheme = _scheme(name, _context(32, 5, num_examples=32), delta_rel=0.15)
    state, rate = scheme.init(), jnp.float32(0.15)

    def run(logits, batch, state, rate):
        loss, new_state, aux = scheme.apply(logits, batch, state, schemes.SelectionRate(rate))
        return loss, new_state, aux.modified, aux.k

    on_one_device = jax.device_put((logits, batch, state), jax.devices()[0])
    single = jax.jit(run)(*on_one_device, rate)
    mesh = sharding.create_mesh()
    data, repl = sharding.data_sharding(mesh), sharding.replicated(mesh)
    sharded_logits, sharded_batch = jax.device_put((logits, batch), data)
    assert len(sharded_logits.sharding.device_set) == NUM_DEVICES
    sharded = jax.jit(run, out_shardings=(repl, repl, data, repl))(
        sharded_logits, sharded_batch, jax.device_put(state, repl), rate
    )
    np.testing.assert_allclose(sharded[0], single[0], rtol=1e-6)
    np.testing.assert_array_equal(sharded[2], single[2])
    expected_k = 0 if name == "an" else int(np.ceil(29 * 5 * 0.15))  # 29 real rows.
    assert int(sharded[3]) == int(single[3]) == expected_k
    chex.assert_trees_all_equal(sharded[1], single[1])


def test_changing_k_across_epochs_does_not_retrace():
    steps_per_epoch = 2
    context = _context(32, 5, num_examples=32, steps_per_epoch=steps_per_epoch, num_epochs=6)
    scheme = _scheme("ll_cp", context, delta_rel=0.05)
    growing = _scheme("ll_r", context, delta_rel=0.05)
    mesh = sharding.create_mesh()
    logits, batch = jax.device_put(_global_problem(), sharding.data_sharding(mesh))

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step_fn(logits, batch, state, step):
        loss, state, aux = scheme.apply(logits, batch, state, scheme.schedule(step))
        _, _, growing_aux = growing.apply(logits, batch, growing.init(), growing.schedule(step))
        return loss, state, aux.k, growing_aux.k

    state, ks, growing_ks = jax.device_put(scheme.init(), sharding.replicated(mesh)), set(), set()
    for step in range(6 * steps_per_epoch):
        _, state, k, growing_k = step_fn(logits, batch, state, jnp.int32(step))
        ks.add(int(k))
        growing_ks.add(int(growing_k))
    assert ks == {0, 8}, ks  # ceil(29 real rows * 5 * 0.05), from epoch 2 on.
    assert growing_ks == {0, 8, 15, 22, 29, 37}, growing_ks  # ceil(145 * 0.05 * (epoch - 1)).
