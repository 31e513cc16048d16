"""dm-reverb's one-item insert, `client.insert(data, priorities)`: the call
our `replay.Client.insert` mirrors, one item per RPC. Runs in the reference
environment (bench/replay.py starts it); same table and items as the
anchor script reverb_bench.py.
"""

import time

import numpy as np
import reverb


def run(label, shape, dtype, n):
  server = reverb.Server(
    tables=[
      reverb.Table(
        "t",
        reverb.selectors.Uniform(),
        reverb.selectors.Fifo(),
        max_size=100_000,
        rate_limiter=reverb.rate_limiters.MinSize(1),
      )
    ]
  )
  client = reverb.Client(f"localhost:{server.port}")
  x = np.ones(shape, dtype)
  start = time.perf_counter()
  for _ in range(n):
    client.insert(x, {"t": 1.0})
  inserts = n / (time.perf_counter() - start)
  print(f"ANCHOR reverb_client_insert_{label} {inserts:.0f} items/s", flush=True)
  server.stop()


if __name__ == "__main__":
  run("small", (4,), np.float32, 5_000)
  run("atari", (84, 84, 4), np.uint8, 1_000)
