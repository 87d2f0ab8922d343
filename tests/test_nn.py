"""jax_binconv.nn: layers, weight clip, batch-norm folding, to_inference,
Bop, flip ratio. Skipped with the reason when flax/optax are missing."""

from __future__ import annotations

import numpy as np
import pytest

flax = pytest.importorskip("flax", reason="jax_binconv.nn needs flax (pip install 'jax_binconv[nn]')")
optax = pytest.importorskip("optax", reason="jax_binconv.nn needs optax (pip install 'jax_binconv[nn]')")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

import jax_binconv as jb  # noqa: E402
import jax_binconv.nn as bnn  # noqa: E402

from conftest import rand_x  # noqa: E402


def _randomize_bn(bn, seed, negative=True, zero_scale=False):
    rng = np.random.default_rng(seed)
    n = bn.mean.shape[0]
    bn.mean[...] = jnp.asarray(rng.normal(0, 3, n), jnp.float32)
    bn.var[...] = jnp.asarray(rng.uniform(0.5, 5, n), jnp.float32)
    s = rng.uniform(0.3, 2, n) * (rng.choice([-1, 1], n) if negative else 1)
    if zero_scale:
        s[0] = 0.0
    bn.scale[...] = jnp.asarray(s, jnp.float32)
    bn.bias[...] = jnp.asarray(rng.normal(0, 1, n), jnp.float32)
    return bn


def _bn(n, seed, **kw):
    bn = _randomize_bn(nnx.BatchNorm(n, rngs=nnx.Rngs(seed)), seed, **kw)
    bn.eval()
    return bn


# ---------------------------------------------------------------- layers


@pytest.mark.parametrize("kw, in_shape, out_shape", [
    (dict(), (2, 9, 9, 16), (2, 9, 9, 8)),
    (dict(strides=2, padding="VALID"), (2, 9, 9, 16), (2, 4, 4, 8)),
    (dict(dilation=2, padding=((1, 1), (0, 2))), (1, 9, 9, 16), (1, 7, 7, 8)),
    (dict(groups=4, type="and", pad_value=1.0), (1, 6, 6, 16), (1, 6, 6, 8)),
    (dict(type="binary_weights", beta_scaling=True, activation="relu"), (3, 5, 5, 16), (3, 5, 5, 8)),
    (dict(dimension_numbers=("NCHW", "OIHW", "NCHW")), (2, 16, 7, 7), (2, 8, 7, 7)),
])
def test_binary_conv_shapes_and_values(kw, in_shape, out_shape):
    layer = bnn.BinaryConv(16, 8, 3, use_bias=True, use_scale=True, rngs=nnx.Rngs(0), **kw)
    x = rand_x(1, in_shape)
    y = layer(x)
    assert y.shape == out_shape and y.dtype == jnp.float32
    rhs = (kw.get("dimension_numbers") or ("NHWC", "HWIO", "NHWC"))[1]
    expected_kernel = tuple({"H": 3, "W": 3, "I": 16 // kw.get("groups", 1), "O": 8}[c] for c in rhs)
    assert layer.kernel[...].shape == expected_kernel
    # The layer is binary_conv2d of its latent kernel with its options.
    direct = jb.binary_conv2d(x, layer.kernel[...], output_scale=layer.output_scale[...],
                              output_bias=layer.output_bias[...], **kw)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(direct))
    # ... and only bin(kernel) matters.
    layer.kernel[...] = layer.binary_kernel() * 0.25
    np.testing.assert_array_equal(np.asarray(layer(x)), np.asarray(y))


def test_binary_dense_shapes_and_values():
    layer = bnn.BinaryDense(40, 7, use_bias=True, rngs=nnx.Rngs(1))
    x = rand_x(2, (3, 5, 40))
    y = layer(x)
    assert y.shape == (3, 5, 7)
    w = np.where(np.asarray(layer.kernel[...]) < 0, -1.0, 1.0)
    xb = np.where(np.asarray(x) < 0, -1.0, 1.0)
    np.testing.assert_array_equal(np.asarray(y), xb @ w)  # bias starts at 0


def test_layer_rejects_bad_arguments():
    with pytest.raises(ValueError, match="groups"):
        bnn.BinaryConv(10, 8, 3, groups=4, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="type"):
        bnn.BinaryConv(8, 8, 3, type="ternary", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="dimension_numbers"):
        bnn.BinaryConv(8, 8, 3, dimension_numbers=("NHWC", "HWII", "NHWC"), rngs=nnx.Rngs(0))


def test_gradients_reach_latent_weights_and_biases():
    layer = bnn.BinaryConv(8, 4, 3, use_bias=True, use_scale=True, use_input_bias=True,
                           use_input_scale=True, rngs=nnx.Rngs(0))
    layer.input_bias[...] = jnp.linspace(-0.3, 0.3, 8)
    x = rand_x(3, (2, 6, 6, 8)) * 0.5
    t = rand_x(4, (2, 6, 6, 4))

    def loss(m):
        return jnp.mean((m(x) - t) ** 2)

    grads = nnx.grad(loss)(layer)
    for name in ("kernel", "output_bias", "output_scale", "input_bias", "input_scale"):
        g = np.asarray(getattr(grads, name)[...])
        assert np.all(np.isfinite(g)) and np.any(g != 0), name

    # The layer's gradients are binary_conv2d's.
    def fn(w, ib, isc, osc, ob):
        return jnp.mean((jb.binary_conv2d(x, w, input_bias=ib, input_scale=isc,
                                          output_scale=osc, output_bias=ob) - t) ** 2)
    ref = jax.grad(fn, argnums=(0, 1, 2, 3, 4))(
        layer.kernel[...], layer.input_bias[...], layer.input_scale[...],
        layer.output_scale[...], layer.output_bias[...])
    for r, name in zip(ref, ("kernel", "input_bias", "input_scale", "output_scale", "output_bias")):
        np.testing.assert_allclose(np.asarray(getattr(grads, name)[...]), np.asarray(r),
                                   rtol=1e-5, atol=1e-7)
    # output_bias gradient is the plain sum of dL/dout per channel.
    y = layer(x)
    dl_dy = 2 * (y - t) / y.size
    np.testing.assert_allclose(np.asarray(grads.output_bias[...]),
                               np.asarray(jnp.sum(dl_dy, axis=(0, 1, 2))), rtol=1e-5, atol=1e-7)


def test_weight_estimator_choice():
    x = rand_x(5, (2, 5, 5, 8))
    ste = bnn.BinaryConv(8, 4, 3, rngs=nnx.Rngs(0), kernel_init=nnx.initializers.normal(1.5))
    ident = bnn.BinaryConv(8, 4, 3, weight_estimator="identity", rngs=nnx.Rngs(0),
                           kernel_init=nnx.initializers.normal(1.5))
    w = np.asarray(ste.kernel[...])
    assert np.any(np.abs(w) > 1)
    g_ste = np.asarray(nnx.grad(lambda m: jnp.sum(m(x) ** 2))(ste).kernel[...])
    g_id = np.asarray(nnx.grad(lambda m: jnp.sum(m(x) ** 2))(ident).kernel[...])
    assert np.all(g_ste[np.abs(w) > 1] == 0)
    np.testing.assert_allclose(g_ste[np.abs(w) <= 1], g_id[np.abs(w) <= 1], rtol=1e-6)
    assert np.any(g_id[np.abs(w) > 1] != 0)


# ---------------------------------------------------------------- clip


def test_clip_weights_in_place():
    model = nnx.Sequential(
        bnn.BinaryConv(4, 4, 3, rngs=nnx.Rngs(0), kernel_init=nnx.initializers.normal(3.0)),
        bnn.BinaryDense(4, 3, weight_clip=None, rngs=nnx.Rngs(1),
                        kernel_init=nnx.initializers.normal(3.0)))
    dense_before = np.asarray(model.layers[1].kernel[...]).copy()
    conv_before = np.asarray(model.layers[0].kernel[...]).copy()
    bnn.clip_weights(model)
    conv = np.asarray(model.layers[0].kernel[...])
    assert conv.max() == 1.0 and conv.min() == -1.0
    np.testing.assert_array_equal(conv, np.clip(conv_before, -1, 1))
    np.testing.assert_array_equal(np.asarray(model.layers[1].kernel[...]), dense_before)
    bnn.clip_weights(model, clip=0.5)
    assert np.abs(np.asarray(model.layers[1].kernel[...])).max() == 0.5


def test_weight_clip_transform_keeps_params_in_range():
    tx = optax.chain(optax.sgd(0.7), bnn.weight_clip(1.0))
    rng = np.random.default_rng(0)
    params = {"w": jnp.asarray(rng.uniform(-1, 1, 4096), jnp.float32)}
    state = tx.init(params)
    for step in range(50):
        g = {"w": jnp.asarray(rng.normal(0, 1, 4096), jnp.float32)}
        updates, state = tx.update(g, state, params)
        expected = np.clip(np.asarray(params["w"]) - 0.7 * np.asarray(g["w"]), -1, 1)
        params = optax.apply_updates(params, updates)
        w = np.asarray(params["w"])
        assert w.max() <= 1.0 and w.min() >= -1.0
        np.testing.assert_allclose(w, expected, atol=3e-7)
    assert np.sum(np.abs(w) == 1.0) > 100  # the bound was hit, exactly
    with pytest.raises(ValueError, match="params"):
        tx.update(g, state)



def test_weight_clip_inside_binary_optimizer():
    rngs = nnx.Rngs(0)
    model = nnx.Sequential(bnn.BinaryDense(12, 6, use_bias=True, rngs=rngs),
                           nnx.Linear(6, 2, rngs=rngs))
    tx = bnn.binary_optimizer(model, optax.chain(optax.sgd(5.0), bnn.weight_clip()),
                              optax.sgd(5.0))
    opt = nnx.Optimizer(model, tx, wrt=nnx.Param)
    x = rand_x(16, (32, 12))
    yt = jnp.asarray(np.arange(32) % 2)
    for _ in range(5):
        grads = nnx.grad(lambda m: optax.softmax_cross_entropy_with_integer_labels(m(x), yt).mean())(model)
        opt.update(model, grads)
    w = np.asarray(model.layers[0].kernel[...])
    assert w.max() <= 1.0 and w.min() >= -1.0 and np.any(np.abs(w) == 1.0)
    assert np.abs(np.asarray(model.layers[1].kernel[...])).max() > 1.0  # float layer not clipped

# ---------------------------------------------------------------- batch norm folding


@pytest.mark.parametrize("ctype", ["xnor", "binary_weights", "and"])
def test_fold_batch_norm_after_conv(ctype):
    layer = bnn.BinaryConv(16, 8, 3, type=ctype, use_bias=True, rngs=nnx.Rngs(0))
    layer.output_bias[...] = jnp.linspace(-2, 2, 8)
    bn = _bn(8, 1)
    x = rand_x(2, (4, 7, 7, 16))
    folded = bnn.fold_batch_norm(layer, bn)
    assert layer.output_scale is None  # the input layer is unchanged
    y, yf = bn(layer(x)), folded(x)
    np.testing.assert_allclose(np.asarray(yf), np.asarray(y), rtol=1e-5, atol=1e-5)
    assert float(jnp.min(folded.output_scale[...])) < 0  # a negative BN scale folds too


def test_fold_batch_norm_after_dense_and_errors():
    layer = bnn.BinaryDense(32, 6, beta_scaling=True, rngs=nnx.Rngs(0))
    bn = _bn(6, 2)
    x = rand_x(3, (5, 32))
    np.testing.assert_allclose(np.asarray(bnn.fold_batch_norm(layer, bn)(x)),
                               np.asarray(bn(layer(x))), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="linear"):
        bnn.fold_batch_norm(bnn.BinaryDense(32, 6, activation="relu", rngs=nnx.Rngs(0)), bn)
    with pytest.raises(ValueError, match="features"):
        bnn.fold_batch_norm(bnn.BinaryDense(32, 5, rngs=nnx.Rngs(0)), bn)
    with pytest.raises(ValueError, match="position"):
        bnn.fold_batch_norm(layer, bn, position="middle")


@pytest.mark.parametrize("ctype, beta", [("xnor", False), ("binary_weights", False), ("xnor", True)])
def test_fold_batch_norm_before(ctype, beta):
    layer = bnn.BinaryConv(16, 8, 3, type=ctype, beta_scaling=beta, use_input_bias=True,
                           rngs=nnx.Rngs(0))
    layer.input_bias[...] = jnp.linspace(-1, 1, 16)
    bn = _bn(16, 3)
    x = rand_x(4, (4, 6, 6, 16))
    folded = bnn.fold_batch_norm(layer, bn, position="before")
    np.testing.assert_allclose(np.asarray(folded(x)), np.asarray(layer(bn(x))),
                               rtol=1e-5, atol=1e-4)
    with pytest.raises(ValueError, match="zero scale"):
        bnn.fold_batch_norm(layer, _bn(16, 3, zero_scale=True), position="before")


# ---------------------------------------------------------------- to_inference


def _seq_model(seed, producer_kw=None, consumer_kw=None, ctype="xnor", pool=True):
    rngs = nnx.Rngs(seed)
    producer_kw = producer_kw or {}
    consumer_kw = consumer_kw or {}
    layers = [nnx.Conv(3, 32, (3, 3), rngs=rngs), nnx.BatchNorm(32, rngs=rngs),
              bnn.BinaryConv(32, 40, 3, type=ctype, rngs=rngs, **producer_kw),
              nnx.BatchNorm(40, rngs=rngs)]
    if pool:
        layers.append(bnn.MaxPool(2, padding="SAME"))
    layers += [bnn.BinaryConv(40, 24, 3, type=ctype, rngs=rngs, **consumer_kw),
               nnx.BatchNorm(24, rngs=rngs),
               lambda v: v.reshape(v.shape[0], -1),
               nnx.Linear(24 * (4 * 4 if pool else 7 * 7), 5, rngs=rngs)]
    model = nnx.Sequential(*layers)
    for i, (_, m) in enumerate(nnx.iter_graph(model)):
        if isinstance(m, nnx.BatchNorm):
            _randomize_bn(m, seed + i)
    model.eval()
    return model


def _check_equivalent(model, inf, x):
    y, yi = jax.jit(lambda v: model(v))(x), jax.jit(lambda v: inf(v))(x)
    np.testing.assert_allclose(np.asarray(yi), np.asarray(y), rtol=1e-5, atol=2e-4)
    np.testing.assert_array_equal(np.asarray(yi.argmax(-1)), np.asarray(y.argmax(-1)))


@pytest.mark.parametrize("ctype", ["xnor", "and"])
@pytest.mark.parametrize("producer_kw, consumer_kw", [
    (dict(), dict()),
    (dict(use_bias=True, activation="hard_tanh"), dict(use_input_bias=True, use_input_scale=True)),
    (dict(use_scale=True, pad_value=1.0), dict(use_input_bias=True)),
])
def test_to_inference_packed_link_is_exact(ctype, producer_kw, consumer_kw):
    model = _seq_model(0, producer_kw, consumer_kw, ctype)
    prod, cons = model.layers[2], model.layers[5]
    if cons.input_bias is not None:
        cons.input_bias[...] = jnp.linspace(-1.5, 1.5, 40)
    if cons.input_scale is not None:  # >= 0 so that the max pool may stay packed
        cons.input_scale[...] = jnp.linspace(0.0, 2.0, 40)
    if prod.output_bias is not None:
        prod.output_bias[...] = jnp.linspace(-3, 3, 40)
    x = rand_x(7, (16, 7, 7, 3))
    inf = bnn.to_inference(model)
    kinds = [(type(layer).__name__, getattr(layer, "output", None)) for layer in inf.layers]
    assert kinds[1] == ("PackedBinaryConv", "packed"), kinds
    assert kinds[3] == ("PackedBinaryConv", "float"), kinds
    assert inf.layers[1].input_bias is not None  # the first BN was folded into the input
    assert not any(isinstance(layer, nnx.BatchNorm) for layer in inf.layers)
    _check_equivalent(model, inf, x)

    # The packed bits are exactly the training model's binarized consumer input.
    h = x
    for layer in model.layers[:5]:
        h = layer(h)
    xprime = h
    if cons.input_bias is not None or cons.input_scale is not None:
        ib = cons.input_bias[...] if cons.input_bias is not None else 0.0
        isc = cons.input_scale[...] if cons.input_scale is not None else 1.0
        xprime = (h + ib) * isc
    p = x
    for layer in inf.layers[:3]:
        p = layer(p)
    assert isinstance(p, jb.PackedActivations)
    np.testing.assert_array_equal(np.asarray(p.words),
                                  np.asarray(jb.pack_activations(xprime).words))


def test_to_inference_exact_at_ties():
    """BN means on integer accumulator values make x' exactly 0: bin(0) = +1 kept."""
    model = _seq_model(1, pool=False)
    bn = model.layers[3]
    bn.mean[...] = jnp.asarray(np.arange(-20, 20, dtype=np.float32))
    bn.var[...] = jnp.ones(40) - bn.epsilon
    bn.scale[...] = jnp.where(jnp.arange(40) % 2 == 0, 1.0, -1.0)  # both signs
    bn.bias[...] = jnp.zeros(40)
    x = rand_x(8, (32, 7, 7, 3))
    inf = bnn.to_inference(model)
    assert inf.layers[1].output == "packed"
    h = x
    for layer in model.layers[:4]:
        h = layer(h)
    assert np.any(np.asarray(h) == 0)
    p = inf.layers[1](inf.layers[0](x))
    np.testing.assert_array_equal(np.asarray(p.words), np.asarray(jb.pack_activations(h).words))
    # Also against the jitted training model (XLA may fuse the batch norm differently).
    first4 = nnx.Sequential(*model.layers[:4])
    h_jit = jax.jit(lambda v: first4(v))(x)
    p_jit = jax.jit(lambda v: inf.layers[1](inf.layers[0](v)))(x)
    np.testing.assert_array_equal(np.asarray(p_jit.words),
                                  np.asarray(jb.pack_activations(h_jit).words))
    _check_equivalent(model, inf, x)


def test_to_inference_float_link_fallbacks():
    # beta-scaling producer feeding an input-affine consumer: float link, still equivalent.
    model = _seq_model(2, dict(beta_scaling=True), dict(use_input_bias=True))
    model.layers[5].input_bias[...] = jnp.linspace(-1, 1, 40)
    inf = bnn.to_inference(model)
    assert inf.layers[1].output == "float"
    _check_equivalent(model, inf, rand_x(9, (8, 7, 7, 3)))
    # Negative input scale after a max pool: pooling would not commute with bin.
    model = _seq_model(3, dict(), dict(use_input_scale=True))
    model.layers[5].input_scale[...] = -jnp.ones(40)
    inf = bnn.to_inference(model)
    assert inf.layers[1].output == "float"
    _check_equivalent(model, inf, rand_x(10, (8, 7, 7, 3)))


def test_to_inference_dense_chain_and_generic_module():
    rngs = nnx.Rngs(0)
    seq = nnx.Sequential(bnn.BinaryDense(48, 40, rngs=rngs), nnx.BatchNorm(40, rngs=rngs),
                         bnn.BinaryDense(40, 33, type="xnor", rngs=rngs),
                         nnx.BatchNorm(33, rngs=rngs), nnx.Linear(33, 4, rngs=rngs))
    _randomize_bn(seq.layers[1], 5)
    _randomize_bn(seq.layers[3], 6)
    seq.eval()
    inf = bnn.to_inference(seq)
    assert isinstance(inf.layers[0], bnn.PackedBinaryDense) and inf.layers[0].output == "packed"
    x = rand_x(11, (20, 48))
    _check_equivalent(seq, inf, x)
    x3 = rand_x(15, (4, 5, 48))  # leading dims survive the packed link
    assert inf(x3).shape == (4, 5, 4)
    np.testing.assert_allclose(np.asarray(inf(x3)), np.asarray(seq(x3)), rtol=1e-5, atol=2e-4)

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.a = bnn.BinaryConv(8, 16, 3, rngs=rngs, use_bias=True)
            self.b = bnn.BinaryDense(16, 3, type="and", rngs=rngs)

        def __call__(self, v):
            return self.b(jnp.mean(self.a(v), axis=(1, 2)))

    net = Net(nnx.Rngs(1))
    inf_net = bnn.to_inference(net)
    assert isinstance(inf_net.a, bnn.PackedBinaryConv) and isinstance(inf_net.b, bnn.PackedBinaryDense)
    assert isinstance(net.a, bnn.BinaryConv)  # the original is untouched
    xs = rand_x(12, (2, 6, 6, 8))
    np.testing.assert_array_equal(np.asarray(inf_net(xs)), np.asarray(net(xs)))


def test_to_inference_needs_eval_mode():
    model = _seq_model(4)
    model.train()
    with pytest.raises(ValueError, match="eval"):
        bnn.to_inference(model)


def test_max_pool_packed_is_or():
    x = rand_x(13, (2, 7, 7, 70))
    for pool in (bnn.MaxPool(2), bnn.MaxPool(3, strides=2, padding="SAME")):
        packed = pool(jb.pack_activations(x))
        assert packed.channels == 70
        np.testing.assert_array_equal(np.asarray(packed.words),
                                      np.asarray(jb.pack_activations(pool(x)).words))


# ---------------------------------------------------------------- Bop, flip ratio, labels


def test_bop_hand_computed():
    tx = bnn.bop(threshold=0.15, gamma=0.5)
    w = jnp.asarray([1.0, -1.0, 1.0, 1.0, 1.0])
    state = tx.init(w)
    # step 1: m = 0.5 * g = [0.2, -0.2, -0.2, 0.05, 0]
    u, state = tx.update(jnp.asarray([0.4, -0.4, -0.4, 0.1, 0.0]), state, w)
    np.testing.assert_allclose(np.asarray(state.momentum), [0.2, -0.2, -0.2, 0.05, 0.0])
    w = optax.apply_updates(w, u)
    # |m| > 0.15 and sign(m) == sign(w): entries 0 and 1 flip; 2 has the wrong sign,
    # 3 is below the threshold, 4 has m = 0.
    np.testing.assert_array_equal(np.asarray(w), [-1.0, 1.0, 1.0, 1.0, 1.0])
    # step 2: m = 0.5 m + 0.5 g = [0.1, -0.1, -0.1, 0.175, 0]
    u, state = tx.update(jnp.asarray([0.0, 0.0, 0.0, 0.3, 0.0]), state, w)
    np.testing.assert_allclose(np.asarray(state.momentum), [0.1, -0.1, -0.1, 0.175, 0.0])
    w = optax.apply_updates(w, u)
    np.testing.assert_array_equal(np.asarray(w), [-1.0, 1.0, 1.0, -1.0, 1.0])
    with pytest.raises(ValueError, match="params"):
        tx.update(w, state)


def test_bop_with_adam_through_multi_transform():
    rngs = nnx.Rngs(0)
    model = nnx.Sequential(bnn.BinaryDense(16, 8, use_bias=True, rngs=rngs),
                           nnx.Linear(8, 2, rngs=rngs))
    bnn.binarize_weights(model)
    labels = bnn.param_labels(model)
    assert labels["layers"][0]["kernel"] == "binary"
    assert labels["layers"][0]["output_bias"] == "float"
    assert labels["layers"][1]["kernel"] == "float"
    opt = nnx.Optimizer(model, bnn.binary_optimizer(model, bnn.bop(1e-6, 0.5),
                                                    optax.adam(1e-2)), wrt=nnx.Param)
    x = rand_x(14, (32, 16))
    yt = jax.random.randint(jax.random.key(0), (32,), 0, 2)
    before = bnn.latent_weights(model)
    lin_before = np.asarray(model.layers[1].kernel[...]).copy()
    grads = nnx.grad(lambda m: optax.softmax_cross_entropy_with_integer_labels(m(x), yt).mean())(model)
    opt.update(model, grads)
    w = np.asarray(model.layers[0].kernel[...])
    assert set(np.unique(w)) <= {-1.0, 1.0}
    # Exactly the Bop rule on this step (m = 0.5 g, tau = 1e-6).
    g = np.asarray(grads.layers[0].kernel[...])
    w0 = np.asarray(before["layers"][0]["kernel"])
    m = 0.5 * g
    flip = (np.abs(m) > 1e-6) & (np.sign(m) == np.sign(w0))
    np.testing.assert_array_equal(w, np.where(flip, -w0, w0))
    assert flip.any()
    assert np.any(np.asarray(model.layers[1].kernel[...]) != lin_before)  # Adam moved the float layer
    assert float(bnn.flip_ratio(before, bnn.latent_weights(model))) == pytest.approx(flip.mean())


def test_flip_ratio():
    before = jnp.asarray([0.5, -0.2, 0.0, -0.0])
    after = jnp.asarray([-0.1, -0.3, -1e-3, 0.7])
    # flips: 0 (+ -> -), 2 (+0 -> -); not 1 (- -> -), not 3 (-0.0 is +1 -> +)
    assert float(bnn.flip_ratio(before, after)) == 0.5
    tree_a = {"a": before, "b": jnp.ones((2, 3))}
    tree_b = {"a": after, "b": -jnp.ones((2, 3))}
    assert float(bnn.flip_ratio(tree_a, tree_b)) == pytest.approx(8 / 10)
    assert float(bnn.flip_ratio(tree_a, tree_a)) == 0.0
    # On models: snapshots of the latent weights.
    layer = bnn.BinaryDense(10, 10, rngs=nnx.Rngs(0))
    snap = bnn.latent_weights(layer)
    layer.kernel[...] = layer.kernel[...].at[0, :5].multiply(-1)
    w0 = np.asarray(snap["kernel"])[0, :5]
    expected = np.sum((w0 < 0) != (-w0 < 0)) / 100
    assert float(bnn.flip_ratio(snap, layer)) == pytest.approx(expected)
    with pytest.raises(ValueError):
        bnn.flip_ratio({"a": before}, {"a": before, "b": before})


def test_training_step_jits_and_learns():
    rngs = nnx.Rngs(0)
    model = nnx.Sequential(nnx.Linear(6, 32, rngs=rngs), nnx.BatchNorm(32, rngs=rngs),
                           bnn.BinaryDense(32, 32, rngs=rngs), nnx.BatchNorm(32, rngs=rngs),
                           nnx.Linear(32, 2, rngs=rngs))
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(256, 6)), jnp.float32)
    yt = jnp.asarray((x[:, 0] + 0.5 * x[:, 1] > 0).astype(np.int32))
    opt = nnx.Optimizer(model, optax.chain(optax.adam(1e-2)), wrt=nnx.Param)

    @nnx.jit
    def step(model, opt):
        before = bnn.latent_weights(model)
        loss, grads = nnx.value_and_grad(
            lambda m: optax.softmax_cross_entropy_with_integer_labels(m(x), yt).mean())(model)
        opt.update(model, grads)
        bnn.clip_weights(model)
        return loss, bnn.flip_ratio(before, bnn.latent_weights(model))

    losses, flips = zip(*[step(model, opt) for _ in range(60)])
    assert float(losses[-1]) < 0.5 * float(losses[0])
    assert max(float(f) for f in flips) > 0
    assert float(jnp.max(jnp.abs(model.layers[2].kernel[...]))) <= 1.0


def test_docs_training_examples_run():
    """docs/training.md's code blocks run as written (they assert their own results)."""
    import pathlib
    import re
    text = (pathlib.Path(__file__).resolve().parent.parent / "docs" / "training.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) == 2
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "docs/training.md", "exec"), namespace)
    assert namespace["accuracy"] > 0.9
