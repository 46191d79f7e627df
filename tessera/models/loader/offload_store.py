"""Where offloaded layers live: pinned CPU memory, or a file read ahead into pinned buffers.

Objects: PinnedStore and FileStore, both holding the offloaded layers o_0 .. o_{m-1}
packed one after another (`layout[j]` = (offset, nbytes), pages aligned) and offering
what WeightStream (layers/weight_stream.py) and the packing (offload.py) ask:
`writable(j)` (where loading puts o_j's bytes), `finish_loading()`, `source(j)` (o_j's bytes
on the host, for the next copy), `release(j, event)` (the copy is queued; `event`, on a GPU,
says when it is done), `capturable` (may the copies sit in a CUDA graph), `describe()`,
`host_bytes` / `disk_bytes` (memory accounting) and `close()`. `fits_host(nbytes, what)`:
a clear error when the host has not that much memory available.
PinnedStore: one pinned buffer (plain memory on a CPU device); sources are slices of it.
FileStore: a safetensors file in the offload directory, one U8 tensor per layer
("layer.J"), its data starting on a page. Loading writes through a shared memory map of
the file; then the file is synced and dropped from the page cache, and a read-ahead thread
reads the layers, in the order steps use them (o_0, o_1, ..., o_{m-1}, o_0, ...), with
page-aligned direct reads (O_DIRECT where the file system has it; equal chunks, several at
once)
into `buffers` pinned staging buffers, each reused once the copy out of it is done. The
file is removed at close (or exit). `read_seconds` / `read_bytes` measure the disk.
"""
from __future__ import annotations

import atexit
import json
import os
import queue
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Optional

import torch

ALIGN = 4096  # every parameter and layer starts on a page (a file's aligned direct reads)
MIN_CHUNK = 2**20  # a layer is read in 4 chunks per reader thread, each at least this
GiB = 2**30


def fits_host(nbytes: int, what: str) -> None:
    """A clear error when the host has not that much memory available."""
    try:
        with open("/proc/meminfo") as f:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f}
    except OSError:
        return
    available = info.get("MemAvailable")
    if available is not None and nbytes > available:
        raise ValueError(f"{what} needs {nbytes / GiB:.2f} GiB of CPU memory; the host has "
                         f"{available / GiB:.2f} GiB available.")


def _host_buffer(nbytes: int, pinned: bool) -> torch.Tensor:
    """[nbytes] uint8 on the host, its start on a page (direct reads need it)."""
    raw = torch.empty(nbytes + ALIGN, dtype=torch.uint8, pin_memory=pinned)
    start = (-raw.data_ptr()) % ALIGN
    return raw[start:start + nbytes]


class PinnedStore:
    capturable = True

    def __init__(self, layout: list[tuple[int, int]], device: torch.device):
        self.layout = layout
        total = sum(n for _, n in layout)
        fits_host(total, "cpu_offload_gb")
        self.pinned = device.type == "cuda"
        self.tensor = torch.empty(total, dtype=torch.uint8, pin_memory=self.pinned)
        self.host_bytes, self.disk_bytes = total, 0

    def writable(self, j: int) -> torch.Tensor:
        offset, nbytes = self.layout[j]
        return self.tensor[offset:offset + nbytes]

    source = writable

    def finish_loading(self) -> None:
        pass

    def release(self, j: int, event) -> None:
        pass

    def describe(self) -> str:
        return "pinned CPU memory" if self.pinned else "CPU memory"

    def close(self) -> None:
        pass


class FileStore:
    capturable = False  # a copy waits for its read on the host: that step runs eagerly

    def __init__(self, directory: str, layout: list[tuple[int, int]], device: torch.device,
                 buffers: int = 4, readers: int = 4):
        self.layout = layout
        os.makedirs(directory, exist_ok=True)
        self.path = os.path.join(directory, f"tessera-offload-{os.getpid()}.safetensors")
        header = {f"layer.{j}": {"dtype": "U8", "shape": [n], "data_offsets": [o, o + n]}
                  for j, (o, n) in enumerate(layout)}
        header["__metadata__"] = {"format": "tessera weight offload"}
        text = json.dumps(header).encode()
        text += b" " * ((-(8 + len(text))) % ALIGN)  # the data starts on a page
        self.data_start = 8 + len(text)
        total = sum(n for _, n in layout)
        self.file_bytes = self.data_start + total
        free = shutil.disk_usage(directory).free
        if free < self.file_bytes:
            raise ValueError(f"offload_dir {directory!r} has {free / GiB:.2f} GiB free; the "
                             f"offloaded layers need {self.file_bytes / GiB:.2f} GiB.")
        with open(self.path, "wb") as f:
            f.write(len(text).to_bytes(8, "little") + text)
            f.truncate(self.file_bytes)
        atexit.register(self.close)
        self._map: Optional[torch.Tensor] = torch.from_file(
            self.path, shared=True, size=self.file_bytes, dtype=torch.uint8)
        slot = max(n for _, n in layout)
        fits_host(buffers * slot, "the offload directory's read buffers")
        self.staging = [_host_buffer(slot, device.type == "cuda") for _ in range(buffers)]
        self.host_bytes, self.disk_bytes = buffers * slot, total
        self.readers = readers
        self.read_seconds, self.read_bytes = 0.0, 0
        self._ready: queue.Queue = queue.Queue()
        self._free: queue.Queue = queue.Queue()
        self._in_use: dict[int, int] = {}  # j -> staging buffer
        self._fd: Optional[int] = None
        self._thread: Optional[threading.Thread] = None

    # -- loading -------------------------------------------------------------------------
    def writable(self, j: int) -> torch.Tensor:
        offset, nbytes = self.layout[j]
        start = self.data_start + offset
        return self._map[start:start + nbytes]

    def finish_loading(self) -> None:
        """Syncs the file, drops it from the page cache and starts the read-ahead."""
        self._map = None  # unmapped (the packing holds no view of it any more)
        fd = os.open(self.path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
        self._fd = self._open_direct()
        for b in range(len(self.staging)):
            self._free.put((b, None))
        self._thread = threading.Thread(target=self._read_ahead, name="offload-read-ahead",
                                        daemon=True)
        self._thread.start()

    def _open_direct(self) -> int:
        """The file opened for direct reads, or plain reads where O_DIRECT is refused."""
        direct = getattr(os, "O_DIRECT", 0)
        if direct:
            fd = os.open(self.path, os.O_RDONLY | direct)
            try:
                os.preadv(fd, [memoryview(self.staging[0][:ALIGN].numpy())], self.data_start)
                return fd
            except OSError:
                os.close(fd)
        return os.open(self.path, os.O_RDONLY)

    # -- reading -------------------------------------------------------------------------
    def _read_ahead(self) -> None:
        pool = ThreadPoolExecutor(self.readers, thread_name_prefix="offload-read")
        k = 0
        while True:
            item = self._free.get()
            if item is None:
                break
            b, event = item
            if event is not None:
                event.synchronize()  # the copy out of this buffer is done
            j = k % len(self.layout)
            try:
                self._read(pool, j, self.staging[b])
            except Exception as e:  # the step that needs this layer raises it
                self._ready.put((j, e))
                break
            self._ready.put((j, b))
            k += 1
        pool.shutdown(wait=False)

    def _read(self, pool: ThreadPoolExecutor, j: int, into: torch.Tensor) -> None:
        offset, nbytes = self.layout[j]
        view = memoryview(into.numpy())
        start = time.perf_counter()

        # 4 equal, page-aligned chunks per reader: no reader idles at the layer's tail
        size = max(MIN_CHUNK, -(-nbytes // (4 * self.readers * ALIGN)) * ALIGN)

        def chunk(at: int) -> None:
            end = min(at + size, nbytes)
            while at < end:
                got = os.preadv(self._fd, [view[at:end]], self.data_start + offset + at)
                if got <= 0:
                    raise OSError(f"offload file {self.path}: short read at {offset + at}")
                at += got
        for f in [pool.submit(chunk, at) for at in range(0, nbytes, size)]:
            f.result()
        self.read_seconds += time.perf_counter() - start
        self.read_bytes += nbytes

    def source(self, j: int) -> torch.Tensor:
        got, b = self._ready.get()
        if isinstance(b, Exception):
            raise b
        if got != j:
            raise RuntimeError(f"offload read-ahead out of order: read layer {got}, the step "
                               f"needs {j}")
        self._in_use[j] = b
        return self.staging[b][:self.layout[j][1]]

    def release(self, j: int, event) -> None:
        self._free.put((self._in_use.pop(j), event))

    @property
    def read_bandwidth(self) -> Optional[float]:
        return self.read_bytes / self.read_seconds if self.read_seconds else None

    def describe(self) -> str:
        return f"{self.path} (read ahead into {len(self.staging)} buffers)"

    def close(self) -> None:
        if self._thread is not None:
            self._free.put(None)  # the reader stops once its read in progress is done
            self._thread.join(timeout=60)
            self._thread = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
