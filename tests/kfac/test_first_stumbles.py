"""The three first stumbles of a new K-FAC user fail where they happen, saying what to do."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from jaxnum import kfac


class Classifier(nn.Module):
    dense: type = kfac.Dense

    @nn.compact
    def __call__(self, x):
        return self.dense(3)(jnp.tanh(self.dense(8)(x)))


X, LABELS = jnp.ones((16, 4)), jnp.arange(16) % 3
KEY = jax.random.key(0)


def test_the_whole_init_dict_as_params_says_to_pass_its_inside():
    variables = Classifier().init(KEY, X)  # {"params": ..., and the capture collections}
    f = kfac.value_grad_and_stats(Classifier(), "softmax_cross_entropy")
    with pytest.raises(ValueError, match=r'pass its inside, model.init\(...\)\["params"\]'):
        f(variables, X, LABELS, KEY)
    loss, _, stats = f(variables["params"], X, LABELS, KEY)  # the inside works
    assert jnp.isfinite(loss) and len(stats) == 2


def test_one_hot_labels_are_refused_with_the_fix():
    params = Classifier().init(KEY, X)["params"]
    f = kfac.value_grad_and_stats(Classifier(), "softmax_cross_entropy")
    with pytest.raises(ValueError, match=r"integer class labels.*labels\.argmax\(-1\)"):
        f(params, X, jax.nn.one_hot(LABELS, 3), KEY)


def test_a_plain_flax_dense_is_named_with_its_replacement():
    plain = Classifier(dense=nn.Dense)
    params = plain.init(KEY, X)["params"]
    f = kfac.value_grad_and_stats(plain, "softmax_cross_entropy")
    with pytest.raises(ValueError, match=r"jaxnum\.kfac\.Dense"):
        f(params, X, LABELS, KEY)


def _grads_and_stats(model):
    variables = model.init(KEY, X)
    f = kfac.value_grad_and_stats(model, "softmax_cross_entropy")
    _, grads, stats = f(variables["params"], X, LABELS, KEY)
    return variables, grads, stats


def test_the_whole_init_dict_given_to_tx_init_is_named_at_the_first_update():
    variables, grads, stats = _grads_and_stats(Classifier())
    tx = kfac.optimizer(0.1)
    with pytest.raises(ValueError, match=r'pass its inside, tx.init\(variables\["params"\]\)'):
        tx.update(grads, tx.init(variables), variables["params"], curvature=stats)
    tx.update(grads, tx.init(variables["params"]), variables["params"], curvature=stats)


def test_an_update_without_curvature_says_where_the_statistics_come_from():
    variables, grads, _ = _grads_and_stats(Classifier())
    tx = kfac.optimizer(0.1)
    with pytest.raises(TypeError, match=r"update needs curvature=stats.*value_grad_and_stats"):
        tx.update(grads, tx.init(variables["params"]), variables["params"])


class Mixed(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(3)(jnp.tanh(kfac.Dense(8)(x)))  # the outer plain layer is Dense_0


def test_a_plain_dense_beside_kfac_layers_is_named_with_its_replacement():
    variables, grads, stats = _grads_and_stats(Mixed())
    tx = kfac.optimizer(0.1)
    with pytest.raises(ValueError, match=r"layer Dense_0.*build it with jaxnum\.kfac\.Dense"):
        tx.update(grads, tx.init(variables["params"]), variables["params"], curvature=stats)
