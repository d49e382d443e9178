"""Profiler annotations: the same regions as NVTX ranges (Nsight Systems) or XProf trace
annotations (JAX), opened and closed with each region."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

if TYPE_CHECKING:
    from maeltrace._recording import Region
    from maeltrace.keys import Key

__all__ = ["Annotator", "annotators"]

T = TypeVar("T")


class _Backend(Protocol):
    def begin(self, name: str) -> object: ...
    def end(self, token: object) -> None: ...


class _Nvtx:
    """NVTX start/end ranges: unlike push/pop they may overlap, as regions may."""

    def __init__(self) -> None:
        from torch.cuda import nvtx

        self._nvtx = nvtx

    def begin(self, name: str) -> object:
        return self._nvtx.range_start(name)

    def end(self, token: object) -> None:
        self._nvtx.range_end(token)


class _Xprof:
    """``jax.profiler.TraceAnnotation`` entered and exited by hand."""

    def __init__(self) -> None:
        import jax.profiler

        self._annotation = jax.profiler.TraceAnnotation

    def begin(self, name: str) -> object:
        annotation = self._annotation(name)
        annotation.__enter__()
        return annotation

    def end(self, token: object) -> None:
        token.__exit__(None, None, None)  # type: ignore[attr-defined]  # a TraceAnnotation


class Annotator:
    """Opens one annotation per backend around each region, named by the region's key."""

    def __init__(self, backends: Sequence[_Backend]) -> None:
        self._backends = tuple(backends)
        self._open = threading.local()

    def begin(self, key: Key) -> tuple[object, ...]:
        name = str(key)
        return tuple(b.begin(name) for b in self._backends)

    def end(self, tokens: object) -> None:
        assert isinstance(tokens, tuple)
        for backend, token in zip(reversed(self._backends), reversed(tokens), strict=True):
            backend.end(token)

    def _tokens(self) -> dict[Key, tuple[object, ...]]:
        try:
            tokens: dict[Key, tuple[object, ...]] = self._open.tokens
        except AttributeError:
            tokens = self._open.tokens = {}
        return tokens

    def wrap(
        self, start: Callable[..., None], end: Callable[[Key], None]
    ) -> tuple[Callable[..., None], Callable[[Key], None]]:
        """Timer.start/end that also begin and end the annotation of the region."""

        def annotated_start(key: Key, gpu: bool = False) -> None:
            start(key, gpu)
            self._tokens()[key] = self.begin(key)

        def annotated_end(key: Key) -> None:
            end(key)
            self.end(self._tokens().pop(key))

        return annotated_start, annotated_end

    def region(self, inner: Region) -> Region:
        """A region that also begins and ends the annotation."""
        return _AnnotatedRegion(inner, self)


class _AnnotatedRegion:
    __slots__ = ("_annotator", "_inner", "_tokens")

    def __init__(self, inner: Region, annotator: Annotator) -> None:
        self._inner = inner
        self._annotator = annotator
        self._tokens = threading.local()

    @property
    def key(self) -> Key:
        return self._inner.key

    @property
    def gpu(self) -> bool:
        return self._inner.gpu

    def block(self, value: T) -> T:
        return self._inner.block(value)

    def __enter__(self) -> _AnnotatedRegion:
        self._inner.__enter__()
        self._tokens.value = self._annotator.begin(self._inner.key)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._annotator.end(self._tokens.value)
        self._inner.__exit__(exc_type, exc, tb)


def annotators(*, nvtx: bool, xprof: bool) -> Annotator:
    """The annotator for the chosen profilers; imports torch or jax only for those chosen."""
    backends: list[Any] = []
    if nvtx:
        backends.append(_Nvtx())
    if xprof:
        backends.append(_Xprof())
    return Annotator(backends)
