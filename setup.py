"""elbo: the TFP blog's VAE as a small, explicit TensorFlow 2 library."""

import re

import setuptools

# One place for the version: elbo/__init__.py (read, not imported: that
# would import TensorFlow before it is installed).
with open('elbo/__init__.py', encoding='utf-8') as f:
  VERSION = re.search(r"^__version__ = '([^']+)'$", f.read(), re.M).group(1)

setuptools.setup(
    name='elbo',
    version=VERSION,
    description=('Variational autoencoders in TensorFlow 2: explicit '
                 'GradientTape training, separate ELBO terms, TensorBoard.'),
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    packages=['elbo'],
    python_requires='>=3.10',
    # Versions that install and work together (checked with Python 3.11).
    install_requires=[
        'absl-py==2.5.1',
        'numpy>=1.26,<3',
        # TF 2.21 no longer brings it; tf.summary needs it.
        'tensorboard==2.21.0',
        'tensorflow==2.21.0',
        'tensorflow-datasets==4.9.10',
        # TFDS 4.9.10 imports it (tfds.load, tfds.builder) but declares it
        # only for Python < 3.9, and etils >= 1.14 no longer brings it.
        'importlib_resources>=6.0',
        'tensorflow-probability==0.25.0',
        # TFP 0.25 imports tf_keras at import time (for tfp.layers).
        'tf-keras==2.21.0',
    ],
    extras_require={
        # nbmake runs docs/tutorial.ipynb under pytest (with nbclient and
        # ipykernel); papermill runs it with other parameters (.ci/run);
        # pdoc builds the API reference (docs/build_api.py); pytest-xdist
        # runs the suite's files on the CPU's cores (pytest.ini).
        'test': ['pytest>=8', 'pytest-xdist>=3.5', 'nbmake==1.5.5',
                 'papermill>=2.6', 'pdoc>=15'],
    },
)
