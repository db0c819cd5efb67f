"""What every model kind's config shares, and the interface a kind implements.

A kind module subclasses ``ModelBase`` with ``kind: Literal[...]`` and its own
fields. A model that runs in shadowd's process subclasses ``LocalModelBase``
and implements ``load()`` (a synchronous batch function); a model served
elsewhere implements ``connect()`` (an asynchronous one). Heavy imports
(torch, numpy, httpx) happen inside those, so the config tree loads with
pydantic alone.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol, Self

from pydantic import Field

from shadowd.configbase import Strict

__all__ = ["LocalModelBase", "ModelBase", "Predict", "RemotePredict"]

# One batch (a numpy array of n examples) in, n outputs out (anything numpy can read).
Predict = Callable[[Any], Any]


class RemotePredict(Protocol):
    """A model served elsewhere: awaited on the caller's event loop, never blocking it."""

    def __call__(self, batch: Any) -> Awaitable[Any]: ...

    async def aclose(self) -> None: ...


class ModelBase(Strict):
    """How to load one model and what its inputs and outputs look like (fields every kind has)."""

    name: str = Field(description="Model name shown in reports and metrics labels' help.", min_length=1)
    input_shape: list[Annotated[int, Field(gt=0)]] = Field(
        description="Shape of one example's inputs, e.g. [64]; requests with another shape get a 422."
    )
    output: Literal["probabilities", "logits", "values"] = Field(
        "probabilities",
        description="What the model returns per example: class probabilities, logits (softmaxed by shadowd), "
        "or regression values.",
    )
    max_batch_size: int = Field(1, ge=1, le=1024, description="Ray Serve batching: examples per model call.")
    batch_wait_timeout_s: float = Field(
        0.002, ge=0, le=1, description="Ray Serve batching: longest wait to fill a batch."
    )
    sample_share: float | None = Field(
        None,
        ge=0,
        le=1,
        description="As a candidate: the share of requests mirrored to it, decided by the same hash of the request "
        "id for every candidate (a smaller share's requests are a subset of a larger one's, so candidates are "
        "compared on common requests); none: shadow.sample_share.",
    )
    candidate_timeout_s: float | None = Field(
        None, gt=0, le=600, description="As a candidate: longest wait for one batch; none: shadow.candidate_timeout_s."
    )

    def load(self, torch_threads: int) -> Predict:
        """The model's batch function; raises ModelError naming the model and the cause."""
        raise NotImplementedError(f"model kind of {self.name!r} is not loaded in process; see connect()")

    def connect(self) -> RemotePredict | None:
        """For a model served elsewhere: its asynchronous batch function (ModelError names the model and the
        cause of a setup that cannot work, e.g. a missing credential). None for a model loaded in process."""
        return None

    def with_base_dir(self, base_dir: Path) -> Self:
        """This config with its relative paths resolved against the config file's folder."""
        return self


class LocalModelBase(ModelBase):
    """A model that runs in shadowd's own process (TorchScript, a Python object)."""

    run_in_thread: bool = Field(
        False,
        description="Where an event loop calls this model (the ingress runs production there): false runs each "
        "call inline on the loop, the fastest path for a model of a few milliseconds; true runs it in a thread "
        "of the replica's pool (run_threads), so the loop keeps answering other requests and /healthz while a "
        "slow model works. The shadow worker always runs local models in its own bounded threads.",
    )
    run_threads: int = Field(
        1,
        ge=1,
        le=64,
        description="With run_in_thread: model calls one replica runs at once (torch releases the GIL, so up to "
        "the cores' worth run in parallel); more wait for a free thread.",
    )
