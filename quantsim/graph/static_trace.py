"""torch.fx tracing with sizes specialised to one example input: capture's fallback for Python
control flow on shapes.

Plain torch.fx keeps ``x.shape`` symbolic, so ``if x.shape[-1] % 2:`` or ``math.ceil(H / p)`` in a
model's forward cannot be traced. Capture only ever needs the graph at one static input shape, so
``StaticShapes`` (a mixin for an fx.Tracer) runs every traced call on real tensors as it records
it (the example input, parameters and buffers), and its proxies answer ``shape``, ``size()``,
``dim()``, ``ndim``, ``numel()`` and ``len()`` with those tensors' plain Python ints. Branches on
sizes are then decided in Python and sizes enter the graph as constants: the same specialisation
torch.export makes for static shapes. Control flow on tensor values (``if x.sum() > 0``) stays
untraceable, as it should. The example's batch size is baked into any size the forward computes
from ``x.shape[0]``: capture's shape run uses the same batch (2), and its batch-first check refuses
a graph that does not keep the batch axis first.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.fx as fx
from torch.fx.node import map_aggregate


class _ShapeProxy(fx.Proxy):
    """A proxy that also holds the real value its node computes at the example input."""

    value: Any = None

    @property
    def shape(self) -> torch.Size:
        return self._tensor("shape").shape

    @property
    def ndim(self) -> int:
        return self._tensor("ndim").dim()

    def size(self, dim: int | None = None):
        t = self._tensor("size")
        return t.size() if dim is None else t.size(dim)

    def dim(self) -> int:
        return self._tensor("dim").dim()

    def numel(self) -> int:
        return self._tensor("numel").numel()

    def __len__(self) -> int:
        return len(self._tensor("len"))

    def _tensor(self, query: str) -> torch.Tensor:
        if not isinstance(self.value, torch.Tensor):
            raise fx.proxy.TraceError(f"{query} of {self.node.name}, which is not a tensor at the example input")
        return self.value


def _value(a: Any) -> Any:
    """`a` with every proxy replaced by its value (an attribute not yet a node: read from its owner's)."""
    def one(v):
        if isinstance(v, fx.proxy.Attribute):
            return getattr(_value(v.root), v.attr)
        return v.value if isinstance(v, _ShapeProxy) else v
    return map_aggregate(a, one)


class StaticShapes:
    """Mixin for an fx.Tracer (list it first): proxies carry their real values at `example`."""

    def __init__(self, example: torch.Tensor, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._example = example
        self._placeholders = 0
        self._evaluating = False  # while a value is computed, modules and attributes are plain again

    def call_module(self, m, forward, args, kwargs):
        if self._evaluating:
            return forward(*args, **kwargs)
        return super().call_module(m, forward, args, kwargs)

    def getattr(self, attr, attr_val, parameter_proxy_cache):
        if self._evaluating:
            return attr_val
        return super().getattr(attr, attr_val, parameter_proxy_cache)

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return _ShapeProxy(node, self)

    def create_proxy(self, kind, target, args, kwargs, name=None, type_expr=None, proxy_factory_fn=None):
        proxy = super().create_proxy(kind, target, args, kwargs, name, type_expr, proxy_factory_fn)
        if isinstance(proxy, _ShapeProxy) and not self._evaluating:
            self._evaluating = True
            try:
                with torch.no_grad():
                    proxy.value = self._evaluate(kind, target, _value(args), _value(kwargs))
            finally:
                self._evaluating = False
        return proxy

    def _evaluate(self, kind: str, target, args: tuple, kwargs: dict) -> Any:
        if kind == "placeholder":  # the model's input, then arguments traced at their defaults
            self._placeholders += 1
            return self._example if self._placeholders == 1 else (args[0] if args else None)
        if kind == "get_attr":
            value = self.root
            for part in target.split("."):
                value = getattr(value, part)
            return value
        if kind == "call_module":
            return self.root.get_submodule(target)(*args, **kwargs)
        if kind == "call_method":
            return getattr(args[0], target)(*args[1:], **kwargs)
        if kind == "call_function":
            return target(*args, **kwargs)
        return None  # output
