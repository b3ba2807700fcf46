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
