"""The compression methods, one registry keyed by the step's config type.

A method is a config model in ``shared/jobs`` (its ``method`` literal is the wire name)
plus, registered here by its config type:

* ``step``: the handler that turns the running :class:`ModelState` into the next one;
* ``tag``: its part of a default variant name (``pruned-ft-int8``);
* ``recipe`` (methods that change the module's skeleton): how a stored variant is rebuilt
  from the float architecture and how its tensors go to and from a flat safetensors dict.

Adding a method means a config model and a handler registered with :meth:`MethodRegistry.step`;
the dispatcher never changes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from torch import nn

from shared.errors import CompressionError
from shared.jobs import StepSpec
from workers.artifacts import Tensors
from workers.catalog import Registry
from workers.compression.steps import ModelState, StepEnv

StepHandler = Callable[[Any, ModelState, StepEnv], ModelState]
H = TypeVar("H", bound=StepHandler)


class RecipeHandler(Protocol):
    def rebuild(self, module: nn.Module, params: dict[str, Any]) -> nn.Module: ...

    def export(self, module: nn.Module) -> Tensors: ...

    def load(self, module: nn.Module, tensors: Tensors) -> None: ...


@dataclass
class Method:
    """Everything the fleet knows about one compression method."""

    config: type[StepSpec]
    step: StepHandler
    tag: str
    recipe: RecipeHandler | None = None


def method_name(config: type[StepSpec]) -> str:
    """The wire name of a step config type (its ``method`` literal)."""
    return str(config.model_fields["method"].default)


class MethodRegistry:
    """Methods by config type (and by wire name, for manifests that name their recipe)."""

    def __init__(self) -> None:
        self._methods: Registry[Method] = Registry("compression method", CompressionError)

    def step(self, config: type[StepSpec], *, tag: str) -> Callable[[H], H]:
        """Decorator: ``handler`` runs steps of type ``config``; ``tag`` names its variants."""

        def register(handler: H) -> H:
            self._methods.add(method_name(config), Method(config, handler, tag))
            return handler

        return register

    def add_recipe(self, config: type[StepSpec], recipe: RecipeHandler) -> None:
        """How variants made by ``config``'s method are rebuilt (after its step is registered)."""
        method = self._methods.get(method_name(config))
        if method.recipe is not None:
            raise ValueError(f"recipe {method_name(config)!r} is already registered")
        method.recipe = recipe

    def handler(self, step: StepSpec) -> StepHandler:
        """The handler of ``step``, chosen by its config type."""
        method = self._methods.get(method_name(type(step)))
        if not isinstance(step, method.config):
            raise CompressionError(f"{type(step).__name__} is not a {method.config.__name__}")
        return method.step

    def apply(self, step: StepSpec, state: ModelState, env: StepEnv) -> ModelState:
        """Run ``step`` on ``state``: the one verb every compression method answers to."""
        return self.handler(step)(step, state, env)

    def recipe(self, name: str) -> RecipeHandler:
        """The recipe a manifest's step names; a method without one is an error."""
        recipe = self._methods.get(name).recipe if name in self._methods else None
        if recipe is None:
            known = ", ".join(n for n in self._methods if self._methods.get(n).recipe)
            raise CompressionError(f"unknown recipe step {name!r}; known: {known}")
        return recipe

    def tag(self, name: str) -> str:
        """The variant-name tag of a method (its own name when unknown)."""
        return self._methods.get(name).tag if name in self._methods else name

    def names(self) -> list[str]:
        return self._methods.names()


METHODS = MethodRegistry()
