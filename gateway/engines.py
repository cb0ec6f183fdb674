"""The served models of one process: an Engine per model, and the lookup of a request's
``model`` field. Protocol adapters (gateway/api, gateway/http) hold this, never one Engine."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from gateway.admission import Admission
from gateway.core.errors import InvalidInput
from gateway.engine import Engine
from gateway.model_specs import ModelSpec, find_models


@dataclass(frozen=True)
class Served:
    spec: ModelSpec
    engine: Engine
    # The model's own bound on calls in flight (ModelSpec.max_in_flight); None: none.
    admission: Admission | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    def slot(self) -> contextlib.AbstractContextManager[None]:
        """A call's slot of this model, taken inside the process's own (RESOURCE_EXHAUSTED
        naming the model when it is at its limit)."""
        return self.admission.slot() if self.admission else contextlib.nullcontext()


class Engines:
    def __init__(self, served: Sequence[Served]) -> None:
        if not served:
            raise ValueError("no model to serve")
        self._served = list(served)
        self._specs = [s.spec for s in self._served]
        self._by_name = {s.name: s for s in self._served}

    @property
    def default(self) -> Served:
        return self._served[0]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._by_name)

    def __iter__(self) -> Iterator[Served]:
        return iter(self._served)

    def get(self, requested: str, field: str = "model") -> Served:
        """The model a request names (empty: the default); an unknown or ambiguous one is the
        caller's INVALID_ARGUMENT naming ``field`` and listing what is served."""
        found = find_models(self._specs, requested)
        if not found:
            raise InvalidInput(f"unknown model {_shown(requested)}; served: "
                               f"{', '.join(self.names)}", field=field)
        if len(found) > 1:
            raise InvalidInput(f"{_shown(requested)} is served under several names "
                               f"({', '.join(s.name for s in found)}): give the name",
                               field=field)
        return self._by_name[found[0].name]


def _shown(value: str) -> str:
    return repr(value if len(value) <= 80 else value[:77] + "...")
