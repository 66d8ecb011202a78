"""Training objectives as a table: `OBJECTIVES[config.objective]`.

An objective maps `(model, batch, config, seed, step)` to the per-example
ELBO terms, for logging, and the per-example value the loop maximizes. A new
bound is one function and one entry:

```python
def my_bound(model, batch, config, seed, step):
  ...
  return terms, value  # losses.ElboTerms of [N] tensors, and [N]
objectives.OBJECTIVES['my_bound'] = my_bound   # then Config(objective=...)
```

`seed` is a stateless `[2]` seed that differs per step and replica; `step`
is the global step (an int64 scalar), e.g. for annealing.
"""

from typing import Any, Callable, Dict, Tuple

import tensorflow as tf

from elbo import losses
from elbo import models

__all__ = ['OBJECTIVES', 'Objective', 'batch_elbo', 'elbo_objective',
           'iwae_dreg_objective', 'iwae_objective']

Objective = Callable[[models.Model, tf.Tensor, Any, tf.Tensor, tf.Tensor],
                     Tuple[losses.ElboTerms, tf.Tensor]]


def batch_elbo(model: models.Model, batch: tf.Tensor, config: Any,
               seed: tf.Tensor) -> losses.ElboTerms:
  """The ELBO terms of `batch` with the config's samples and KL method."""
  return losses.elbo(batch, model.approx_posterior(batch),
                     model.decoder_likelihood,
                     latent_prior=model.latent_prior(),
                     num_samples=config.num_samples, kl_method=config.kl,
                     seed=seed)


def elbo_objective(model: models.Model, batch: tf.Tensor, config: Any,
                   seed: tf.Tensor, step: tf.Tensor
                   ) -> Tuple[losses.ElboTerms, tf.Tensor]:
  """reconstruction - beta * kl, beta from `kl_weight` and its warm-up."""
  terms = batch_elbo(model, batch, config, seed)
  beta = losses.kl_weight(step, final_weight=config.kl_weight,
                          warmup_steps=config.kl_warmup_steps)
  return terms, terms.reconstruction - beta * terms.kl


def iwae_objective(model: models.Model, batch: tf.Tensor, config: Any,
                   seed: tf.Tensor, step: tf.Tensor
                   ) -> Tuple[losses.ElboTerms, tf.Tensor]:
  """L_k with k = num_samples; the ELBO terms from the same samples."""
  del step  # Unused.
  return losses.elbo_and_importance_weighted_bound(
      batch, model.approx_posterior(batch), model.decoder_likelihood,
      latent_prior=model.latent_prior(), num_samples=config.num_samples,
      seed=seed)


def iwae_dreg_objective(model: models.Model, batch: tf.Tensor, config: Any,
                        seed: tf.Tensor, step: tf.Tensor
                        ) -> Tuple[losses.ElboTerms, tf.Tensor]:
  """L_k as `iwae_objective`, with the doubly reparameterized gradient
  for the encoder (Tucker et al. 2018): same value and decoder gradient,
  lower-variance encoder gradient."""
  del step  # Unused.
  return losses.elbo_and_importance_weighted_bound(
      batch, model.approx_posterior(batch), model.decoder_likelihood,
      latent_prior=model.latent_prior(), num_samples=config.num_samples,
      gradient_estimator='dreg', seed=seed)


OBJECTIVES: Dict[str, Objective] = {
    'elbo': elbo_objective,
    'iwae': iwae_objective,
    'iwae_dreg': iwae_dreg_objective,
}
