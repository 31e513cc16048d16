"""Idle nodes for the Ray cluster tests: each prints `ON <Ray node id>` once
it runs, then waits for the stop.

  lp launch --mode=ray --ray-address=HOST:PORT tests/launch/programs/lp_ray_idlers.py \
    -- --num_idlers=2 --resource=second_node --amount=2 --strategy=STRICT_PACK
"""

from absl import app, flags

import launchpad as lp

_NUM_IDLERS = flags.DEFINE_integer("num_idlers", 2, "How many idle nodes to start.")
_RESOURCE = flags.DEFINE_string("resource", "", "A custom resource each node asks for.")
_AMOUNT = flags.DEFINE_float("amount", 1.0, "How much of --resource each node asks for.")
_STRATEGY = flags.DEFINE_string("strategy", "", "The group's placement strategy; none if empty.")
# Bound on how long a node lives: a test never leaves one behind for long.
_LIFETIME_SECONDS = 120.0


def idle() -> None:
  import ray

  print(f"ON {ray.get_runtime_context().get_node_id()}", flush=True)
  lp.wait_for_stop(_LIFETIME_SECONDS)


def make_program() -> lp.Program:
  program = lp.Program("idlers")
  with program.group("idler"):
    for _ in range(_NUM_IDLERS.value):
      program.add_node(lp.PyNode(idle))
  return program


def resources() -> lp.RayResources:
  return lp.RayResources(
    resources={_RESOURCE.value: _AMOUNT.value} if _RESOURCE.value else {},
    placement_strategy=_STRATEGY.value or None,
  )


def main(argv: list[str]) -> None:
  del argv
  lp.launch(make_program(), local_resources={"idler": resources()})


if __name__ == "__main__":
  app.run(main)
