"""Launches the distributed DQN on CartPole-v1.

  lp launch --mode=multiprocess examples/dqn/launch.py -- --num_actors=4
  python examples/dqn/launch.py --num_actors=2        # every node a thread

It runs until an evaluation reaches --target_return (195: the mean of 10
greedy episodes), or until the actors have taken --max_env_steps steps and
the evaluator has evaluated the network once more, and leaves
dqn_curve.png and dqn_evaluations.csv in --output_dir (default: the run
directory of a multiprocess launch, else the current directory).
"""

from __future__ import annotations

import os
import pathlib
import sys

from absl import app, flags

if not __package__:
  # Run as a file: make the package `dqn` importable, here and in node processes
  # (which inherit this process's import path).
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import launchpad as lp
from dqn.config import DQNConfig
from dqn.program import make_program

_DEFAULTS = DQNConfig()
_NUM_ACTORS = flags.DEFINE_integer("num_actors", 4, "How many actor nodes.")
_MAX_ENV_STEPS = flags.DEFINE_integer(
  "max_env_steps",
  _DEFAULTS.max_env_steps,
  "Stop, after one last evaluation, once the actors have taken this many steps.",
)
_TARGET_RETURN = flags.DEFINE_float(
  "target_return", _DEFAULTS.target_return, "Stop once an evaluation's mean return reaches this."
)
_MIN_REPLAY_SIZE = flags.DEFINE_integer(
  "min_replay_size", _DEFAULTS.min_replay_size, "Transitions in replay before learning starts."
)
_EVAL_PERIOD = flags.DEFINE_integer(
  "eval_period", _DEFAULTS.eval_period, "Environment steps between two evaluations."
)
_SEED = flags.DEFINE_integer("seed", _DEFAULTS.seed, "Seeds the network, actors and evaluator.")
_OUTPUT_DIR = flags.DEFINE_string(
  "output_dir", None, "Where the learning curve goes (default: the run directory, else here)."
)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError("Too many command-line arguments.")
  # The nodes multiply small matrices: BLAS threads would only fight over the
  # cores. Node processes start from a fresh interpreter with this environment.
  os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
  config = DQNConfig(
    seed=_SEED.value,
    max_env_steps=_MAX_ENV_STEPS.value,
    target_return=_TARGET_RETURN.value,
    min_replay_size=_MIN_REPLAY_SIZE.value,
    eval_period=_EVAL_PERIOD.value,
  )
  program = make_program(config, num_actors=_NUM_ACTORS.value, output_dir=_OUTPUT_DIR.value)
  lp.launch(program).wait()  # raises lp.NodeFailedError if a node failed


if __name__ == "__main__":
  app.run(main)
