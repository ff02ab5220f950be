"""nlverify: sound bound propagation, branch-and-bound and certified Lipschitz bounds.

Quick use::

    import nlverify
    model = nlverify.load_onnx("net.onnx")
    lower, upper = model.bounds(x_low, x_high, method="alpha-crown")
"""
__version__ = "0.1.0"


def load_onnx(path):
    """Load an ONNX model; see :func:`nlverify.model.load_onnx`."""
    from nlverify.model import load_onnx as _load

    return _load(path)


def lipschitz_bound(model, *args, **kwargs):
    """Certified Lipschitz upper bound; see :func:`nlverify.sdp.api.lipschitz_bound`."""
    from nlverify.sdp.api import lipschitz_bound as _bound

    return _bound(model, *args, **kwargs)
