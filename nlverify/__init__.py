"""nlverify: sound bound propagation, branch-and-bound and certified Lipschitz bounds."""
__version__ = "0.1.0"
