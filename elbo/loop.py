"""The host loop: one compiled call up to the next event, then the actions.

    next event -> one compiled call -> accumulate -> health -> due actions
    -> stop check

Everything a run does between training calls is an `Action`: an object
with its own state (checkpointed through `trackables`) and its own schedule
(`every`, `at_end`), testable without a training run. The loop knows only
when actions are due; what they do is theirs (CommonLoopUtils'
`periodic_actions`, Orbit's controller). A call never runs past a step at
which an action is due, so every action happens at exactly the step it
would with one step per call, and a resumed run matches an uninterrupted
one.
"""

import dataclasses
from typing import Any, Callable, Dict, Optional, Sequence

import tensorflow as tf

from elbo import faults

__all__ = ['Action', 'LoopState', 'run', 'steps_to_next_event']

class Action:
  """A periodic piece of a run. Subclasses set `every` (steps; the action
  runs after the call that ends at a multiple of any of them) and `at_end`
  (it also runs at the last step), and override what they use."""

  every: Sequence[int] = ()
  at_end: bool = False

  def is_due(self, step: int, total_steps: int) -> bool:
    return (any(step % every == 0 for every in self.every) or
            (self.at_end and step == total_steps))

  def accumulate(self, outputs: tf.Tensor, first_step: int,
                 num_steps: int) -> None:
    """Sees the summed step outputs of each call (`elbo.step.STEP_OUTPUTS`)
    of `num_steps` steps from `first_step`."""

  def __call__(self, step: int) -> None:
    """Runs at `step`, when due."""

  def reset(self, step: int) -> None:
    """The run was rewound to `step` (its checkpoint restored)."""

  def trackables(self) -> Dict[str, Any]:
    """State saved in the run's checkpoint, by checkpoint key."""
    return {}


@dataclasses.dataclass
class LoopState:
  """Where the run is: read by the signal handler's save."""
  step: int
  total_steps: int


def steps_to_next_event(step: int, intervals: Sequence[int], total_steps: int,
                        steps_per_call: int,
                        also_at: Sequence[Optional[int]] = ()) -> int:
  """How many steps one call may run: up to `steps_per_call`, but never
  past the next multiple of any of `intervals` (the periodic actions' and
  the epoch's), a step in `also_at`, or the end of training, so that every
  action happens at exactly the step it would with one step per call."""
  boundaries = [step + steps_per_call, total_steps]
  boundaries += [(step // every + 1) * every for every in intervals]
  boundaries += [s for s in also_at if s is not None and s > step]
  return min(boundaries) - step


def run(state: LoopState,
        train_steps: Callable[[tf.Tensor, tf.Tensor, tf.Tensor], tf.Tensor],
        actions: Sequence[Action], recovery, steps_per_call: int,
        check_stop: Callable[[], None] = lambda: None) -> None:
  """Trains from `state.step` to `state.total_steps`.

  Args:
    state: advanced in place.
    train_steps: `(first_step, num_steps, data_offset) -> summed outputs`
      (`elbo.step.make_train_loop`).
    actions: run in this order when due.
    recovery: `elbo.recovery.Recovery`: the remedies in force, the health
      check before any action, the rewind after a divergence.
    steps_per_call: the most steps one call runs.
    check_stop: after each call's actions; saves and raises on a signal.
  """
  intervals = sorted({every for action in actions for every in action.every})
  kill_at = faults.point(faults.KILL_AT_STEP)
  while state.step < state.total_steps:
    step = state.step
    data_offset = recovery.apply_remedies(step)
    num_steps = steps_to_next_event(
        step, intervals, state.total_steps, steps_per_call,
        [recovery.next_change(step), kill_at])
    outputs = train_steps(tf.constant(step, tf.int64),
                          tf.constant(num_steps, tf.int64), data_offset)
    if step + num_steps == kill_at:
      outputs.numpy()  # The call has run.
      faults.die()
    for action in actions:
      action.accumulate(outputs, step, num_steps)
    state.step = step = step + num_steps
    due = [a for a in actions if a.is_due(step, state.total_steps)]
    if due:
      bad_step = recovery.check()  # A NaN raises; a divergence is returned.
      if bad_step is not None:
        state.step = recovery.rewind(bad_step)
        for action in actions:
          action.reset(state.step)
        continue
    for action in due:
      action(step)
    check_stop()
