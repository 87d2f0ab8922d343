"""Gradients of the primitive (its STE JVP rule) against gradients of the
reference surrogate, under jit, vmap and checkpoint; jvp; batching."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import rand_vec, rand_x

import jax_binconv as jb

ESTIMATORS = ["ste", ("ste", 1.5), "identity", "approx_sign", "swish"]
TYPES = ["binary_weights", "xnor", "and"]


def _inputs(c=12, o=8, seed=0, hw=(6, 5)):
    x = rand_x(seed, (2,) + hw + (c,)) * 0.8
    w = rand_x(seed + 1, (3, 3, c, o)) * 0.8
    params = dict(input_bias=rand_vec(seed + 2, c, -0.2, 0.2),
                  input_scale=rand_vec(seed + 3, c, 0.5, 1.5, signed=True),
                  output_scale=rand_vec(seed + 4, o, 0.05, 0.2, signed=True),
                  output_bias=rand_vec(seed + 5, o, -0.5, 0.5))
    return x, w, params


def _loss(conv, **static):
    def f(x, w, p):
        y = conv(x, w, **p, **static)
        # A non-uniform cotangent so every output position matters differently.
        return jnp.sum(y * jnp.cos(jnp.arange(y.size, dtype=jnp.float32).reshape(y.shape)))
    return f


def _assert_grads_close(g1, g2):
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
        scale = max(1.0, float(np.max(np.abs(b))))
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * scale)


@pytest.mark.parametrize("t", TYPES)
@pytest.mark.parametrize("est", ESTIMATORS)
def test_grad_matches_reference_surrogate(t, est):
    x, w, p = _inputs(seed=len(str(est)))
    static = dict(type=t, input_estimator=est, weight_estimator=est, beta_scaling=True,
                  activation="tanh", padding=((1, 0), (0, 2)),
                  pad_value={"binary_weights": 0.5, "xnor": -1.0, "and": 1.0}[t])
    g = jax.jit(jax.grad(_loss(jb.binary_conv2d, **static), argnums=(0, 1, 2)))(x, w, p)
    r = jax.grad(_loss(jb.reference.binary_conv2d, **static), argnums=(0, 1, 2))(x, w, p)
    _assert_grads_close(g, r)
    # The gradient really flows through every operand.
    for leaf in jax.tree.leaves(g):
        assert np.any(np.asarray(leaf) != 0)


@pytest.mark.parametrize("activation", ["relu", "relu6", "leaky_relu", "sigmoid", "hard_tanh",
                                        "sign", None])
def test_grad_through_each_activation(activation):
    x, w, p = _inputs(seed=7)
    static = dict(type="xnor", activation=activation, negative_slope=0.3, strides=2, dilation=(1, 2))
    g = jax.grad(_loss(jb.binary_conv2d, **static), argnums=(0, 1, 2))(x, w, p)
    r = jax.grad(_loss(jb.reference.binary_conv2d, **static), argnums=(0, 1, 2))(x, w, p)
    _assert_grads_close(g, r)


def test_different_estimators_for_input_and_weights():
    x, w, p = _inputs(seed=9)
    static = dict(type="xnor", input_estimator="approx_sign", weight_estimator=("ste", 0.5))
    g = jax.grad(_loss(jb.binary_conv2d, **static), argnums=(0, 1))(x, w, p)
    r = jax.grad(_loss(jb.reference.binary_conv2d, **static), argnums=(0, 1))(x, w, p)
    _assert_grads_close(g, r)
    # The weight clip is honoured: latent weights beyond 0.5 get no gradient.
    gw = np.asarray(g[1])
    assert np.all(gw[np.abs(np.asarray(w)) > 0.5] == 0)
    assert np.any(gw[np.abs(np.asarray(w)) <= 0.5] != 0)


def test_grad_groups_and_nchw():
    c, o = 8, 6
    x = rand_x(1, (2, c, 5, 5))
    w = rand_x(2, (o, c // 2, 3, 3))
    static = dict(type="and", groups=2, dimension_numbers=("NCHW", "OIHW", "NCHW"),
                  beta_scaling=True)
    f = lambda conv: lambda x, w: jnp.sum(jnp.sin(conv(x, w, **static)))  # noqa: E731
    _assert_grads_close(jax.grad(f(jb.binary_conv2d), (0, 1))(x, w),
                        jax.grad(f(jb.reference.binary_conv2d), (0, 1))(x, w))


def test_grad_under_vmap_and_checkpoint():
    x, w, p = _inputs(seed=11)
    loss = _loss(jb.binary_conv2d, type="xnor", beta_scaling=True, activation="hard_tanh")
    rloss = _loss(jb.reference.binary_conv2d, type="xnor", beta_scaling=True, activation="hard_tanh")
    xs = jnp.stack([x, -x, 0.5 * x])
    g = jax.jit(jax.vmap(jax.grad(loss, argnums=(0, 1)), in_axes=(0, None, None)))(xs, w, p)
    r = jax.vmap(jax.grad(rloss, argnums=(0, 1)), in_axes=(0, None, None))(xs, w, p)
    _assert_grads_close(g, r)
    gc = jax.jit(jax.grad(jax.checkpoint(loss), argnums=(0, 1)))(x, w, p)
    _assert_grads_close(gc, jax.grad(rloss, argnums=(0, 1))(x, w, p))


def test_jvp_and_linearize():
    x, w, p = _inputs(seed=13)
    f = functools.partial(jb.binary_conv2d, type="xnor", beta_scaling=True, activation="sigmoid")
    fr = functools.partial(jb.reference.binary_conv2d, type="xnor", beta_scaling=True,
                           activation="sigmoid")
    dx, dw = rand_x(14, x.shape), rand_x(15, w.shape)
    y, dy = jax.jvp(lambda x, w: f(x, w, **p), (x, w), (dx, dw))
    yr, dyr = jax.jvp(lambda x, w: fr(x, w, **p), (x, w), (dx, dw))
    _assert_grads_close((y, dy), (yr, dyr))
    y2, lin = jax.linearize(lambda x: f(x, w, **p), x)
    _assert_grads_close(lin(dx), jax.jvp(lambda x: fr(x, w, **p), (x,), (dx,))[1])
    # Forward-over-reverse (a Hessian-vector product) runs.
    hvp = jax.jvp(jax.grad(lambda x: jnp.sum(f(x, w, **p) ** 2)), (x,), (dx,))[1]
    assert hvp.shape == x.shape


def test_vmap_over_leading_axes_equals_loop():
    x = rand_x(16, (3, 2, 2, 6, 6, 10))
    w = rand_x(17, (3, 3, 10, 5))
    f = functools.partial(jb.binary_conv2d, type="xnor", beta_scaling=True, output_scale=0.1)
    y = jax.vmap(jax.vmap(lambda x: f(x, w)))(x)
    loop = np.stack([np.stack([np.asarray(f(x[i, j], w)) for j in range(2)]) for i in range(3)])
    np.testing.assert_allclose(np.asarray(y), loop, rtol=1e-6, atol=1e-6)
    # Integer outputs are exactly equal.
    g = functools.partial(jb.binary_conv2d, type="xnor")
    yi = jax.vmap(jax.vmap(lambda x: g(x, w)))(x)
    np.testing.assert_array_equal(np.asarray(yi), np.stack(
        [np.stack([np.asarray(g(x[i, j], w)) for j in range(2)]) for i in range(3)]))
    # vmap with the batch axis elsewhere.
    y2 = jax.vmap(lambda x: f(x, w), in_axes=1)(x[0])
    np.testing.assert_allclose(np.asarray(y2), np.stack([np.asarray(f(x[0, :, j], w))
                                                         for j in range(2)]), rtol=1e-6, atol=1e-6)


def test_vmap_over_weights_and_scales():
    x = rand_x(18, (2, 6, 6, 10))
    ws = rand_x(19, (4, 3, 3, 10, 5))
    ss = rand_vec(20, 4 * 5, 0.1, 1.0).reshape(4, 5)
    f = lambda w, s: jb.binary_conv2d(x, w, type="and", output_scale=s)  # noqa: E731
    y = jax.jit(jax.vmap(f))(ws, ss)
    loop = np.stack([np.asarray(f(ws[i], ss[i])) for i in range(4)])
    np.testing.assert_allclose(np.asarray(y), loop, rtol=1e-6)


def test_eager_equals_jit():
    x, w, p = _inputs(seed=21)
    f = functools.partial(jb.binary_conv2d, type="xnor", beta_scaling=True, activation="relu6", **p)
    np.testing.assert_array_equal(np.asarray(f(x, w)), np.asarray(jax.jit(f)(x, w)))
    prim_eager = jb.binary_conv2d_p.bind  # the eager impl is the primitive's own
    assert callable(prim_eager)


def test_packed_output_has_no_gradient():
    x, w, _ = _inputs(seed=23)
    with pytest.raises(ValueError, match="packed"):
        jax.grad(lambda x: jnp.sum(jb.binary_conv2d(x, w, output="packed").words.astype(jnp.float32)))(x)


def test_packed_weights_carry_no_gradient_but_input_does():
    x, w, _ = _inputs(seed=25)
    pw = jb.pack_weights(w)
    gx = jax.grad(lambda x: jnp.sum(jb.binary_conv2d(x, pw, type="xnor") ** 2))(x)
    gr = jax.grad(lambda x: jnp.sum(jb.reference.binary_conv2d(x, w, type="xnor") ** 2))(x)
    _assert_grads_close(gx, gr)


def test_grad_with_packed_input_flows_to_weights():
    x, w, _ = _inputs(seed=27)
    px = jb.pack_activations(x)
    g = jax.grad(lambda w: jnp.sum(jnp.sin(jb.binary_conv2d(px, w, type="xnor"))))(w)
    r = jax.grad(lambda w: jnp.sum(jnp.sin(jb.reference.binary_conv2d(x, w, type="xnor"))))(w)
    _assert_grads_close(g, r)
