"""The IWAE paper's schedule presets build its exact schedule."""

import dataclasses

import pytest

from elbo import config as config_lib
from elbo import factory

# Burda et al. (2015), section 5: 3^i epochs at 0.001 * 10^(-i/7),
# i = 0..7, batch 20, Adam epsilon 1e-4.
_PAPER_STAGE_EPOCHS = [1, 3, 9, 27, 81, 243, 729, 2187]
_STEPS_PER_EPOCH = 60_000 // 20


@pytest.mark.parametrize('name,objective,samples', [
    ('iwae_paper_vae', 'elbo', 1), ('iwae_paper_k5', 'iwae', 5)])
def test_paper_presets_have_the_papers_settings(name, objective, samples):
  config = config_lib.Config(**config_lib.PRESETS[name])
  assert config.epochs == sum(_PAPER_STAGE_EPOCHS) == 3280
  assert (config.model, config.batch_size, config.adam_epsilon) == (
      'iwae_mlp', 20, 1e-4)
  assert (config.objective, config.num_samples) == (objective, samples)
  assert config.learning_rate == 1e-3
  assert config.lr_schedule == 'iwae_stages'


def test_paper_schedule_changes_rate_exactly_at_the_stage_boundaries():
  config = config_lib.Config(**config_lib.PRESETS['iwae_paper_vae'])
  schedule = factory.learning_rate(config, _STEPS_PER_EPOCH)
  first_steps = [0]
  for epochs in _PAPER_STAGE_EPOCHS:
    first_steps.append(first_steps[-1] + epochs * _STEPS_PER_EPOCH)
  assert first_steps[-1] == 9_840_000
  for stage in range(8):
    rate = 1e-3 * 10 ** (-stage / 7)
    start, end = first_steps[stage], first_steps[stage + 1]
    for step in (start, end - 1):
      assert float(schedule(step)) == pytest.approx(rate, rel=1e-6), step
    if stage:  # The step before a stage still has the previous rate.
      previous = 1e-3 * 10 ** (-(stage - 1) / 7)
      assert float(schedule(start - 1)) == pytest.approx(previous, rel=1e-6)


def test_compressed_presets_keep_their_100_epochs():
  for name in ('iwae_vae', 'iwae_k5'):
    config = config_lib.Config(**config_lib.PRESETS[name])
    paper = config_lib.Config(**config_lib.PRESETS[
        name.replace('iwae_', 'iwae_paper_')])
    assert config.epochs == 100
    assert dataclasses.replace(
        paper, epochs=100, steps_per_call=config.steps_per_call) == config
