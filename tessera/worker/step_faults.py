"""Which exceptions in a step cost its requests, and which the engine (issue 17).

Objects: `is_device_failure(exc)` (the device, its driver or a collective failed: the
process cannot trust its CUDA context or its peers, and the engine must stop), and
`request_failures(request_ids, exc, what)` (anything else: a fault of the code around these
requests; it is logged once with an incident id, and each request gets a message that
names the incident and no internals). The model runner (worker/model_runner.py) isolates
per-request work (a new request's state) and whole steps with them: a failed step's
requests end with an error (HTTP 500 for them alone), and the step loop goes on;
`without_requests(sched, dropped)` is a later step without the requests already failed.
"""
from __future__ import annotations

import dataclasses
import logging
import uuid

import torch

from tessera.engine.protocol import SchedulerOutput

logger = logging.getLogger(__name__)

# words of the errors that torch raises for a failed kernel, driver or library call
_DEVICE_WORDS = ("CUDA error", "CUDA driver", "CUBLAS_STATUS", "CUDNN_STATUS", "cuDNN error",
                 "device-side assert", "NCCL", "HIP error", "an illegal memory access",
                 "unspecified launch failure", "Triton Error [CUDA]")


def _fatal_types() -> tuple[type, ...]:
    names = ("AcceleratorError", "OutOfMemoryError")
    types = [getattr(torch, n) for n in names if isinstance(getattr(torch, n, None), type)]
    dist = getattr(torch, "distributed", None)
    for n in ("DistError", "DistBackendError"):  # a collective failed or timed out
        t = getattr(dist, n, None) if dist is not None else None
        if isinstance(t, type):
            types.append(t)
    return tuple(types)


_FATAL_TYPES = _fatal_types()


def is_device_failure(exc: BaseException) -> bool:
    """True for errors of the device, its memory, or the collectives between ranks: the
    engine stops (its workers' state cannot be trusted). Everything else is the request's."""
    if not isinstance(exc, Exception):  # KeyboardInterrupt, SystemExit
        return True
    if isinstance(exc, _FATAL_TYPES):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and any(w in text for w in _DEVICE_WORDS)


def request_failures(request_ids, exc: Exception, what: str) -> dict[str, str]:
    """Logs exc once (with its traceback and an incident id); returns, per request id, the
    message its client gets (the incident id, no internals)."""
    incident = uuid.uuid4().hex[:12]
    ids = sorted(request_ids)
    logger.error("%s failed for %d request(s) %s (incident %s); they end with an error, "
                 "the engine goes on", what, len(ids), ids[:8], incident, exc_info=exc)
    message = (f"Internal error while generating (incident {incident}; the server's log has "
               f"the details).")
    return {rid: message for rid in ids}


def without_requests(sched: SchedulerOutput, dropped: set[str]) -> SchedulerOutput:
    """sched without the requests a runner dropped (failed there, not yet finished)."""
    def keep(d: dict) -> dict:
        return {rid: v for rid, v in d.items() if rid not in dropped}
    return dataclasses.replace(sched, num_scheduled_tokens=keep(sched.num_scheduled_tokens),
                               scheduled_spec_token_ids=keep(sched.scheduled_spec_token_ids),
                               num_drafts=keep(sched.num_drafts))
