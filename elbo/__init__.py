"""elbo: the TFP blog's VAE as a small, explicit TensorFlow 2 library.

`import elbo` gives `elbo.losses`, which needs only TensorFlow and TFP; the
other modules (data, models, train, ...) are imported by name.
"""

from elbo import losses

__version__ = '0.1.0'
