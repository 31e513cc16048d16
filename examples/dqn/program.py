"""The DQN program: which nodes there are and which handles each one receives."""

from __future__ import annotations

import launchpad as lp
from dqn.actor import Actor
from dqn.config import DQNConfig
from dqn.counter import Counter
from dqn.evaluator import Evaluator
from dqn.learner import Learner
from dqn.replay_table import make_table


def make_program(
  config: DQNConfig, num_actors: int = 4, output_dir: str | None = None
) -> lp.Program:
  """replay, counter, the parameter broadcast, learner, `num_actors` actors and an evaluator.

  `output_dir` is where the evaluator writes its results; None: the run
  directory of a multiprocess launch, else the current directory.
  """
  program = lp.Program("dqn")
  replay = program.add_node(lp.ReplayNode([make_table(config)]), label="replay")
  counter = program.add_node(lp.CourierNode(Counter), label="counter")
  params = program.add_node(lp.BroadcastNode(), label="params")
  learner = program.add_node(lp.CourierNode(Learner, replay, params, config), label="learner")
  with program.group("actor"):
    for actor_id in range(num_actors):
      program.add_node(lp.PyClassNode(Actor, replay, params, counter, config, actor_id))
  # The evaluator asks the learner itself: it evaluates the network of the moment.
  evaluator = lp.CourierNode(Evaluator, learner, counter, config, output_dir)
  program.add_node(evaluator, label="evaluator")
  return program
