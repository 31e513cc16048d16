"""A small multilayer perceptron in numpy, its gradient, and the Adam optimizer.

CartPole needs nothing bigger than two hidden layers of 64 units, and at that
size numpy is fast enough (a forward and backward pass on a batch of 64 takes
about 100 us on one core) that no deep-learning framework is needed.

Parameters are a plain list of arrays, [W1, b1, W2, b2, ...]: they travel
between nodes as they are (numpy arrays go out of band over courier), and a
copy of the list is a target network.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

Params = list[np.ndarray]


def init_mlp(sizes: Sequence[int], rng: np.random.Generator) -> Params:
  """He-initialised weights and zero biases for layers of the given sizes (input first)."""
  params: Params = []
  for fan_in, fan_out in itertools.pairwise(sizes):
    scale = np.sqrt(2.0 / fan_in)
    params.append((rng.standard_normal((fan_in, fan_out)) * scale).astype(np.float32))
    params.append(np.zeros(fan_out, dtype=np.float32))
  return params


def forward(params: Params, x: np.ndarray) -> np.ndarray:
  """The network's output for a batch of inputs x (batch, inputs): ReLU hidden layers."""
  return forward_with_activations(params, x)[-1]


def forward_with_activations(params: Params, x: np.ndarray) -> list[np.ndarray]:
  """Every layer's output, input first and network output last: what `gradients` needs."""
  activations = [np.asarray(x, dtype=np.float32)]
  num_layers = len(params) // 2
  for layer in range(num_layers):
    weights, bias = params[2 * layer], params[2 * layer + 1]
    h = activations[-1] @ weights + bias
    if layer < num_layers - 1:
      np.maximum(h, 0.0, out=h)
    activations.append(h)
  return activations


def gradients(params: Params, activations: list[np.ndarray], output_grad: np.ndarray) -> Params:
  """Backpropagates d(loss)/d(output) through the network; returns d(loss)/d(params)."""
  grads: Params = [np.empty(0)] * len(params)
  grad = output_grad.astype(np.float32, copy=False)
  for layer in reversed(range(len(params) // 2)):
    layer_input = activations[layer]
    grads[2 * layer] = layer_input.T @ grad
    grads[2 * layer + 1] = grad.sum(axis=0)
    if layer > 0:
      grad = (grad @ params[2 * layer].T) * (layer_input > 0)
  return grads


class Adam:
  """Adam (Kingma and Ba, 2015), updating a list of parameter arrays in place.

  Args:
    params: the arrays it will update; its moment estimates take their shapes.
    learning_rate: the step size.
    max_grad_norm: gradients with a larger global norm are scaled down to it,
      so one batch of large TD errors cannot throw the network far.
  """

  def __init__(
    self,
    params: Params,
    learning_rate: float,
    max_grad_norm: float = 10.0,
    beta1: float = 0.9,
    beta2: float = 0.999,
    epsilon: float = 1e-8,
  ) -> None:
    self._learning_rate = learning_rate
    self._max_grad_norm = max_grad_norm
    self._beta1, self._beta2, self._epsilon = beta1, beta2, epsilon
    self._m = [np.zeros_like(p) for p in params]
    self._v = [np.zeros_like(p) for p in params]
    self._t = 0

  def update(self, params: Params, grads: Params) -> None:
    """One step: params -= lr * m_hat / (sqrt(v_hat) + eps), in place."""
    norm = np.sqrt(sum(float(np.sum(g * g)) for g in grads))
    clip = min(1.0, self._max_grad_norm / (norm + 1e-12))
    self._t += 1
    step = self._learning_rate * np.sqrt(1 - self._beta2**self._t) / (1 - self._beta1**self._t)
    for p, g, m, v in zip(params, grads, self._m, self._v, strict=True):
      g = g * clip
      m *= self._beta1
      m += (1 - self._beta1) * g
      v *= self._beta2
      v += (1 - self._beta2) * g * g
      p -= step * m / (np.sqrt(v) + self._epsilon)
