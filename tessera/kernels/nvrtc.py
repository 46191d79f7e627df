"""CUDA C++ compiled at run time (NVRTC) and launched on PyTorch's stream (the driver API).

Objects: `available()` (whether NVRTC and the driver can be loaded here), `compile_cubin(
source, options, arch)` (NVRTC -> a cubin, kept on disk under CACHE_DIR by a hash of the
source, options, arch and NVRTC's version), `Kernel` (one loaded function: `launch(grid,
block, args, stream, pdl)`, each arg a ctypes value), `load(source, name, options, device)`
(compiled and loaded once per device and options), `pointer(tensor)`.
No C++ build step and no toolkit are needed: NVRTC ships with PyTorch's CUDA wheels
(nvidia-cuda-nvrtc), and the driver with the GPU. A launch with `pdl=True` carries the
programmatic-stream-serialization attribute (kernels/pdl.py: the kernel may start while
the one before it finishes, and waits with `griddepcontrol.wait`). Launches under CUDA
graph capture are captured like any other.
"""
from __future__ import annotations

import ctypes
import glob
import hashlib
import os
import site
import threading
from typing import Optional, Sequence

import torch

CACHE_DIR = os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")),
                         "tessera", "cuda")
_PDL_ATTRIBUTE = 6  # CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION
_lock = threading.Lock()
_libs: dict = {}
_loaded: dict = {}


class _Attribute(ctypes.Structure):  # CUlaunchAttribute: id, padding, a 64-byte union
    _fields_ = [("id", ctypes.c_uint), ("pad", ctypes.c_char * 4),
                ("value", ctypes.c_char * 64)]


class _LaunchConfig(ctypes.Structure):  # CUlaunchConfig
    _fields_ = [("grid", ctypes.c_uint * 3), ("block", ctypes.c_uint * 3),
                ("shared", ctypes.c_uint), ("stream", ctypes.c_void_p),
                ("attrs", ctypes.POINTER(_Attribute)), ("num_attrs", ctypes.c_uint)]


def _nvrtc_candidates() -> list[str]:
    major = (torch.version.cuda or "12").split(".")[0]
    names = [f"libnvrtc.so.{major}", "libnvrtc.so"]
    roots = site.getsitepackages() + [site.getusersitepackages()]
    for root in roots:  # the pip packages' copies (nvidia-cuda-nvrtc-cu12, nvidia/cu13)
        names += sorted(glob.glob(os.path.join(root, "nvidia", "*", "lib", f"libnvrtc.so.{major}*")))
    return names


def _library(kind: str) -> ctypes.CDLL:
    """NVRTC ("nvrtc") or the driver ("cuda"), loaded once; OSError where neither is."""
    with _lock:
        if kind not in _libs:
            names = _nvrtc_candidates() if kind == "nvrtc" else ["libcuda.so.1", "libcuda.so"]
            errors = []
            for name in names:
                try:
                    _libs[kind] = ctypes.CDLL(name)
                    break
                except OSError as e:
                    errors.append(str(e))
            else:
                raise OSError(f"cannot load {kind}: " + "; ".join(errors))
        return _libs[kind]


def available() -> bool:
    """NVRTC and the CUDA driver both load, and PyTorch sees a CUDA GPU."""
    if not torch.cuda.is_available() or torch.version.cuda is None:
        return False
    try:
        _library("nvrtc")
        _library("cuda")
    except OSError:
        return False
    return True


def _check_driver(result: int, what: str) -> None:
    if result:
        text = ctypes.c_char_p()
        _library("cuda").cuGetErrorString(result, ctypes.byref(text))
        raise RuntimeError(f"{what}: CUDA error {result}: "
                           f"{text.value.decode() if text.value else 'unknown'}")


def _nvrtc_version() -> str:
    major, minor = ctypes.c_int(), ctypes.c_int()
    _library("nvrtc").nvrtcVersion(ctypes.byref(major), ctypes.byref(minor))
    return f"{major.value}.{minor.value}"


def compile_cubin(source: str, options: Sequence[str], arch: str) -> bytes:
    """source compiled by NVRTC for arch ("sm_90") with options (-D...): the cubin, from
    CACHE_DIR where an earlier process compiled the same; RuntimeError with NVRTC's log
    where it does not compile."""
    opts = [f"--gpu-architecture={arch}", "-std=c++17", *options]
    key = hashlib.sha256("\0".join([source, *opts, _nvrtc_version()]).encode()).hexdigest()
    path = os.path.join(CACHE_DIR, f"{key}.cubin")
    if os.path.exists(path):
        with open(path, "rb") as f:
            return f.read()
    lib = _library("nvrtc")
    prog = ctypes.c_void_p()
    if lib.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), b"tessera.cu", 0, None, None):
        raise RuntimeError("NVRTC could not create a program")
    try:
        raw = [o.encode() for o in opts]
        if lib.nvrtcCompileProgram(prog, len(raw), (ctypes.c_char_p * len(raw))(*raw)):
            size = ctypes.c_size_t()
            lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
            log = ctypes.create_string_buffer(size.value)
            lib.nvrtcGetProgramLog(prog, log)
            raise RuntimeError(f"NVRTC failed ({' '.join(opts)}):\n{log.value.decode()}")
        size = ctypes.c_size_t()
        lib.nvrtcGetCUBINSize(prog, ctypes.byref(size))
        cubin = ctypes.create_string_buffer(size.value)
        lib.nvrtcGetCUBIN(prog, cubin)
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))
    try:  # the cache is an optimization: a read-only home costs a compile, not a failure
        os.makedirs(CACHE_DIR, exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "wb") as f:
            f.write(cubin.raw)
        os.replace(tmp, path)
    except OSError:
        pass
    return cubin.raw


class Kernel:
    """One function of a loaded cubin."""

    def __init__(self, cubin: bytes, name: str):
        driver = _library("cuda")
        self.module, self.function = ctypes.c_void_p(), ctypes.c_void_p()
        self._cubin = ctypes.create_string_buffer(cubin)  # alive while the module is
        _check_driver(driver.cuModuleLoadData(ctypes.byref(self.module), self._cubin),
                      "cuModuleLoadData")
        _check_driver(driver.cuModuleGetFunction(ctypes.byref(self.function), self.module,
                                                 name.encode()), f"cuModuleGetFunction({name})")
        self._attribute = _Attribute(id=_PDL_ATTRIBUTE)
        ctypes.memmove(ctypes.addressof(self._attribute) + _Attribute.value.offset,
                       ctypes.byref(ctypes.c_int(1)), 4)

    def launch(self, grid: tuple[int, int, int], block: tuple[int, int, int],
               args: Sequence, stream: int, pdl: bool = False, shared: int = 0) -> None:
        """args: ctypes values in the kernel's parameter order; stream: a CUstream handle
        (torch.cuda.Stream.cuda_stream)."""
        params = (ctypes.c_void_p * len(args))(
            *[ctypes.cast(ctypes.byref(a), ctypes.c_void_p) for a in args])
        config = _LaunchConfig((ctypes.c_uint * 3)(*grid), (ctypes.c_uint * 3)(*block), shared,
                               ctypes.c_void_p(stream),
                               ctypes.pointer(self._attribute) if pdl else None, int(pdl))
        _check_driver(_library("cuda").cuLaunchKernelEx(ctypes.byref(config), self.function,
                                                        params, None), "cuLaunchKernelEx")


def _make_current(index: int) -> None:
    """Make device `index`'s primary context (the one PyTorch's runtime uses) current on
    this thread, as the module's load needs."""
    driver = _library("cuda")
    ctx, dev = ctypes.c_void_p(), ctypes.c_int()
    _check_driver(driver.cuCtxGetCurrent(ctypes.byref(ctx)), "cuCtxGetCurrent")
    if ctx.value:
        _check_driver(driver.cuCtxGetDevice(ctypes.byref(dev)), "cuCtxGetDevice")
        if dev.value == index:
            return
    _check_driver(driver.cuDeviceGet(ctypes.byref(dev), index), "cuDeviceGet")
    _check_driver(driver.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), dev),
                  "cuDevicePrimaryCtxRetain")
    _check_driver(driver.cuCtxSetCurrent(ctx), "cuCtxSetCurrent")


def load(source: str, name: str, options: Sequence[str], device: torch.device) -> Kernel:
    """The kernel `name` of source compiled with options for the device's architecture,
    loaded into its context: compiled and loaded once per (device, options)."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    key = (index, name, tuple(options), hash(source))
    kernel = _loaded.get(key)
    if kernel is None:
        major, minor = torch.cuda.get_device_capability(index)
        cubin = compile_cubin(source, options, f"sm_{major}{minor}")
        _make_current(index)  # PyTorch's context: no stream op, so safe under graph capture
        kernel = Kernel(cubin, name)
        with _lock:
            kernel = _loaded.setdefault(key, kernel)
    return kernel


def pointer(t: Optional[torch.Tensor]) -> ctypes.c_void_p:
    """A tensor's data as a kernel's pointer argument (None: a null pointer)."""
    return ctypes.c_void_p(t.data_ptr() if t is not None else 0)
