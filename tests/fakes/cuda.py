"""FakeCudaDevice: a fake of ``torch.cuda``'s events for machines without a GPU.

The fake models one stream: events complete in the order they were recorded, and only as far
as the test lets the "GPU" run (`FakeCudaDevice.run`). A blocking call (``synchronize``) runs it
up to that event and is counted as a host synchronisation, which is what the tests check.
Event ``i`` (in recording order) completes at ``i`` milliseconds of device time.
"""

from __future__ import annotations


class FakeCudaEvent:
    """Stands in for ``torch.cuda.Event(enable_timing=True)``."""

    def __init__(self, device: FakeCudaDevice) -> None:
        self._device = device
        self.index = -1

    def record(self) -> None:
        self.index = self._device.enqueue()

    def query(self) -> bool:
        self._device.queries += 1
        return 0 <= self.index < self._device.completed

    def synchronize(self) -> None:
        self._device.host_syncs += 1
        self._device.completed = max(self._device.completed, self.index + 1)

    def elapsed_time(self, end_event: FakeCudaEvent) -> float:
        if not (self.query() and end_event.query()):
            raise RuntimeError("elapsed_time() needs both events completed")  # as torch does
        return float(end_event.index - self.index)


class FakeCudaDevice:
    """Stands in for the ``torch.cuda`` module: ``Event`` plus the counters tests read.

    Attributes:
        recorded: events recorded so far (the stream's length).
        completed: events the device has finished.
        host_syncs: blocking waits the host made.
        created: event objects created.
        queries: non-blocking completion queries made.
    """

    def __init__(self) -> None:
        self.recorded = 0
        self.completed = 0
        self.host_syncs = 0
        self.created = 0
        self.queries = 0

    def Event(self, enable_timing: bool = True) -> FakeCudaEvent:  # torch's name
        assert enable_timing
        self.created += 1
        return FakeCudaEvent(self)

    def enqueue(self) -> int:
        self.recorded += 1
        return self.recorded - 1

    def run(self, events: int | None = None) -> None:
        """Lets the device finish ``events`` more events (all recorded ones by default)."""
        target = self.recorded if events is None else self.completed + events
        self.completed = min(self.recorded, target)
