"""WeightStream: the offloaded decoder layers' weights, copied onto the device as each
step needs them, while other layers compute.

Objects: WeightStream. The offloaded layers o_0 .. o_{m-1} (m even; in the order a forward
runs them) live packed in a host store (models/loader/offload.py: pinned CPU memory, or a
file read ahead into pinned buffers); on the device there are two slot buffers, and every
parameter of o_j is, for good, a view into slot j % 2 at its place in the packing. Between
steps slot 0 holds o_0 and slot 1 holds o_1. The model's `run_layers` calls `begin()`,
then `before(i)` / `after(i)` around each layer (i: its position in the stage) and `end()`:
- before(o_j): the compute stream waits for the event that o_j's copy recorded;
- after(o_j): the compute stream records that slot j % 2 is free, and the copy stream,
  once it is, copies o_{j+2 mod m} into it (the last two copies of a step bring o_0 and
  o_1 back for the next one), so the copy of the next offloaded layers overlaps the
  compute of the layers between;
- end(): in a CUDA-graph capture, the compute stream joins the copy stream (the graph
  then holds the copies; a replay ends with o_0 and o_1 in place). A capture records
  events of its own: an event recorded in a capture may not be waited on outside it.
No host synchronization happens in a step (a file store's reads are waited for on the
host before their copy is queued, so that mode runs eagerly: `capturable` is False).
`join()` makes the compute stream wait for the step before's last copies (before a graph
replay that follows an eager step). On the CPU every copy is a plain, immediate copy.
`copy_seconds` / `bytes_per_step`: the measured host-to-device bandwidth and the bytes a
step moves, for the transfer bound that `tessera bench` reports.
"""
from __future__ import annotations

import time
from typing import Optional

import torch


class WeightStream:
    def __init__(self, store, positions: dict[int, int], slots: list[torch.Tensor],
                 device: torch.device):
        """store: the packed layers (models/loader/offload.py `PinnedStore` / `FileStore`):
        `layout[j]` (offset, nbytes) of o_j, `source(j)` its bytes on the host,
        `release(j)` once its copy is queued. positions: stage position -> j.
        slots: the two device buffers the layers' parameters view."""
        self.store, self.positions, self.slots, self.device = store, positions, slots, device
        self.count = len(store.layout)
        self.cuda = device.type == "cuda"
        self.capturable = self.cuda and store.capturable
        self.copy_stream = torch.cuda.Stream(device) if self.cuda else None
        # (ready, free) events per slot: eager steps', and captures' (an event recorded in
        # a capture is part of that graph and may not be waited on outside it)
        self._eager = self._events(2) if self.cuda else ([None] * 2, [None] * 2)
        self._captured = self._events(2) if self.cuda else self._eager
        self.ready, self.free = self._eager
        self._fresh = [False, False]  # slot's ready event recorded in this forward
        self.bytes_per_step = sum(nbytes for _, nbytes in store.layout)
        for j in range(min(2, self.count)):  # slot 0 holds o_0, slot 1 holds o_1
            self._copy(j)
        self.copy_seconds = self._time_copies()

    # -- the hooks run_layers calls ------------------------------------------------------
    @staticmethod
    def _events(n: int):
        return [torch.cuda.Event() for _ in range(n)], [torch.cuda.Event() for _ in range(n)]

    def begin(self) -> None:
        self._fresh = [False, False]
        capturing = self.cuda and torch.cuda.is_current_stream_capturing()
        self.ready, self.free = self._captured if capturing else self._eager

    def before(self, position: int) -> None:
        j = self.positions.get(position)
        if j is None or not self.cuda:
            return
        slot = j % 2
        if self._fresh[slot] or not torch.cuda.is_current_stream_capturing():
            torch.cuda.current_stream().wait_event(self.ready[slot])

    def after(self, position: int) -> None:
        j = self.positions.get(position)
        if j is None:
            return
        if self.cuda:
            self.free[j % 2].record()
        self._copy((j + 2) % self.count)

    def end(self) -> None:
        if self.cuda and torch.cuda.is_current_stream_capturing():
            for slot, fresh in enumerate(self._fresh):
                if fresh:
                    torch.cuda.current_stream().wait_event(self.ready[slot])
        self.ready, self.free = self._eager

    def join(self) -> None:
        """The compute stream waits for the copies the last eager step queued."""
        if self.cuda:
            for event in self._eager[0]:
                torch.cuda.current_stream().wait_event(event)

    # -- copies ------------------------------------------------------------------------------
    def _copy(self, j: int) -> None:
        """o_j from the store into slot j % 2, after the slot's last reader is done."""
        slot = j % 2
        nbytes = self.store.layout[j][1]
        source = self.store.source(j)  # [nbytes] uint8 on the host
        if not self.cuda:
            self.slots[slot][:nbytes].copy_(source)
            self.store.release(j, None)
            return
        with torch.cuda.stream(self.copy_stream):
            self.copy_stream.wait_event(self.free[slot])
            self.slots[slot][:nbytes].copy_(source, non_blocking=True)
            self.ready[slot].record()
            self.store.release(j, self.ready[slot])
        self._fresh[slot] = True

    def _time_copies(self, rounds: int = 2) -> Optional[float]:
        """Seconds to copy every offloaded layer once (a full cycle, so the slots end as
        they began): the host-to-device rate a step's transfer runs at."""
        if self.count < 2:
            return None
        if self.cuda:
            torch.cuda.synchronize(self.device)
        start = time.perf_counter()
        for _ in range(rounds):
            for j in range(self.count):
                self._copy((j + 2) % self.count)
        if self.cuda:
            torch.cuda.synchronize(self.device)
        return (time.perf_counter() - start) / rounds

    @property
    def bandwidth(self) -> Optional[float]:
        """Measured host-to-device bytes per second of the offloaded layers' copies."""
        return self.bytes_per_step / self.copy_seconds if self.copy_seconds else None
