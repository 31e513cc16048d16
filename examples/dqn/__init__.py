"""A distributed DQN that learns CartPole: actors, a learner, prioritized replay, an evaluator.

Run it with `lp launch --mode=multiprocess examples/dqn/launch.py -- --num_actors=4`;
docs/examples.md describes the nodes and the learning curve it draws.

The modules import each other as the package `dqn` (the folder `examples/`
on the import path): launch.py puts it there when run as a file.
"""
