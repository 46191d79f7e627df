"""Training checkpoints: everything a resumed run needs to continue bit for bit.

A checkpoint is a folder `checkpoint-STEP` in the output folder:
- `student.safetensors`: the student's parameters (tied ones stored once);
- `optimizer.safetensors`: AdamW's per-parameter state, `{i}.exp_avg`, `{i}.exp_avg_sq`,
  `{i}.step` for parameter i in the optimizer's order;
- `state.json`: the step reached, the optimizer's param-group settings, the LR schedule's
  position, the run's identity (teacher, data fingerprint, the settings that change the
  result) and the evaluation history.
No pickle anywhere: tensors in safetensors, the rest in JSON.

Objects: `save_checkpoint(folder, step, student, optimizer, scheduler, identity, history,
keep)`, `latest_checkpoint(out)`, `load_checkpoint(path, student, optimizer, scheduler,
identity) -> (step, history)`.
"""
from __future__ import annotations

import json
import os
import re
import shutil

import torch

_NAME = re.compile(r"^checkpoint-(\d+)$")


def _checkpoints(out: str) -> list[tuple[int, str]]:
    if not os.path.isdir(out):
        return []
    found = [(int(m.group(1)), os.path.join(out, n)) for n in os.listdir(out)
             if (m := _NAME.match(n)) and os.path.isfile(os.path.join(out, n, "state.json"))]
    return sorted(found)


def latest_checkpoint(out: str) -> str | None:
    found = _checkpoints(out)
    return found[-1][1] if found else None


def save_checkpoint(out: str, step: int, student, optimizer, scheduler, identity: dict,
                    history: list, keep: int) -> str:
    """Writes checkpoint-STEP (through a temporary folder, renamed when complete) and
    removes all but the newest `keep`."""
    from safetensors.torch import save_file, save_model
    folder = os.path.join(out, f"checkpoint-{step}")
    tmp = folder + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    save_model(student, os.path.join(tmp, "student.safetensors"))
    state = optimizer.state_dict()
    tensors = {}
    for index, values in state["state"].items():
        for key, value in values.items():
            tensors[f"{index}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
    save_file(tensors, os.path.join(tmp, "optimizer.safetensors"))
    with open(os.path.join(tmp, "state.json"), "w") as f:
        json.dump({"step": step, "param_groups": state["param_groups"],
                   "scheduler": scheduler.state_dict(), "identity": identity,
                   "history": history}, f, indent=1)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    for _, old in _checkpoints(out)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return folder


def load_checkpoint(path: str, student, optimizer, scheduler, identity: dict
                    ) -> tuple[int, list]:
    """Restores the student, the optimizer and the schedule; refuses a checkpoint of
    another run (teacher, data or settings that change the result)."""
    from safetensors.torch import load_file, load_model
    with open(os.path.join(path, "state.json")) as f:
        state = json.load(f)
    differ = sorted(k for k in set(identity) | set(state["identity"])
                    if identity.get(k) != state["identity"].get(k))
    if differ:
        raise ValueError(f"cannot resume from {path}: it was made with other "
                         f"{', '.join(differ)} (e.g. {differ[0]}: "
                         f"{state['identity'].get(differ[0])!r} there, "
                         f"{identity.get(differ[0])!r} now)")
    device = next(student.parameters()).device
    load_model(student, os.path.join(path, "student.safetensors"), device=str(device))
    tensors = load_file(os.path.join(path, "optimizer.safetensors"), device=str(device))
    per_param: dict[int, dict] = {}
    for name, value in tensors.items():
        index, key = name.split(".", 1)
        per_param.setdefault(int(index), {})[key] = value.cpu() if key == "step" else value
    optimizer.load_state_dict({"state": per_param, "param_groups": state["param_groups"]})
    scheduler.load_state_dict(state["scheduler"])
    return int(state["step"]), list(state["history"])
