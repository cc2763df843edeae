"""vLLM's own block-manager modules for differential tests: fetch them from PyPI, import them without torch.

Only a few pure-Python modules of two vLLM wheels are used (never vendored into this repository):
vLLM 0.7.3's v0 block manager (vllm/core/block_manager.py, vllm/core/block/*, evictor, interfaces)
and vLLM 0.34.0's v1 BlockPool (vllm/v1/core/block_pool.py, kv_cache_utils.py, utils/math_utils.py).
`fetch` runs `pip download vllm==X --no-deps` and unzips just those files into a cache directory;
`load_v0` / `load_v1` import them with small stand-ins for the modules they import (torch, configs,
loggers, platform probes), then take the stand-ins out of sys.modules again.
"""

from __future__ import annotations

import enum
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import logging
import os
import subprocess
import sys
import tempfile
import types
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

V0_VERSION = "0.7.3"
V1_VERSION = "0.34.0"
MEMBERS = {  # wheel members each check needs (prefixes)
    V0_VERSION: ("vllm/core/block_manager.py", "vllm/core/block/", "vllm/core/evictor.py",
                 "vllm/core/interfaces.py"),
    V1_VERSION: ("vllm/v1/core/block_pool.py", "vllm/v1/core/kv_cache_utils.py", "vllm/utils/math_utils.py"),
}
ENV = "PAGESIM_VLLM_SRC"


def cache_root() -> Path:
    """$PAGESIM_VLLM_SRC, else ~/.cache/pagesim/vllm; holds one directory per vLLM version."""
    env = os.environ.get(ENV)
    return Path(env) if env else Path.home() / ".cache" / "pagesim" / "vllm"


def source_dir(version: str) -> Path | None:
    """The unpacked modules of a version, or None if they are not there."""
    d = cache_root() / version
    return d if all((d / m).exists() for m in MEMBERS[version]) else None


def fetch(version: str, root: Path | None = None) -> Path:
    """pip download the wheel (no dependencies) and unzip only MEMBERS[version] into root/version."""
    root = root or cache_root()
    dest = root / version
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", f"vllm=={version}", "--no-deps",
                        "--only-binary", ":all:", "-d", tmp, "-q"], check=True)
        (wheel,) = Path(tmp).glob("vllm-*.whl")
        with zipfile.ZipFile(wheel) as z:
            for name in z.namelist():
                if name.startswith(MEMBERS[version]) and name.endswith(".py"):
                    z.extract(name, dest)
    return dest


class _Anything(type):
    """A stand-in class for any name a stubbed module is asked for (types, enums, decorators)."""

    def __getattr__(cls, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return _Anything(name, (object,), {})

    def __getitem__(cls, item: Any) -> Any:
        return cls

    def __or__(cls, other: Any) -> Any:
        return cls

    def __ror__(cls, other: Any) -> Any:
        return cls

    def __call__(cls, *a: Any, **k: Any) -> Any:
        return a[0] if len(a) == 1 and callable(a[0]) and not k else type.__call__(cls)


class _StubModule(types.ModuleType):
    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        v = _Anything(name, (object,), {})
        setattr(self, name, v)
        return v


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """vllm.* from the unpacked files where present, else an empty stub module."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname != "vllm" and not fullname.startswith("vllm."):
            return None
        f = self.root.joinpath(*fullname.split(".")).with_suffix(".py")
        if f.is_file():
            return importlib.util.spec_from_file_location(fullname, f)
        return importlib.machinery.ModuleSpec(fullname, self, is_package=True)

    def create_module(self, spec: Any) -> types.ModuleType:
        m = _StubModule(spec.name)
        m.__path__ = []
        return m

    def exec_module(self, module: types.ModuleType) -> None:
        return None


@contextmanager
def _isolated(root: Path, stubs: dict[str, dict[str, Any]]) -> Iterator[None]:
    """Import from root with stubs; afterwards no vllm module stays in sys.modules."""
    def clear() -> None:
        for k in [k for k in sys.modules if k == "vllm" or k.startswith("vllm.")]:
            del sys.modules[k]
    clear()
    finder = _Finder(root)
    sys.meta_path.insert(0, finder)
    try:
        for name, attrs in stubs.items():
            importlib.import_module(name).__dict__.update(attrs)
        yield
    finally:
        sys.meta_path.remove(finder)
        clear()


class Device(enum.Enum):
    GPU = enum.auto()
    CPU = enum.auto()


class SequenceStatus(enum.IntEnum):
    WAITING = 0
    RUNNING = 1


class Sequence:
    """What vLLM 0.7.3's block manager reads of a sequence: id, token ids, status, no extra hash."""

    def __init__(self, seq_id: Any, tokens: list[int]) -> None:
        self.seq_id, self.tokens, self.status = seq_id, tokens, SequenceStatus.WAITING
        self.data = self

    def get_token_ids(self) -> list[int]:
        return self.tokens

    def extra_hash(self) -> None:
        return None

    def is_prefill(self) -> bool:
        return False

    def get_num_computed_tokens(self) -> int:
        return len(self.tokens)


class SequenceGroup:
    """A group of one sequence (the ops replayed here never allocate several at once)."""

    def __init__(self, seq: Sequence) -> None:
        self.request_id, self.seqs = str(seq.seq_id), [seq]

    def get_seqs(self, status: Any = None) -> list[Sequence]:
        return [s for s in self.seqs if status is None or s.status == status]

    def is_encoder_decoder(self) -> bool:
        return False

    def get_encoder_seq(self) -> None:
        return None


def _chunks(lst: list[int], n: int) -> Iterator[list[int]]:
    for i in range(0, len(lst), n):
        yield lst[i:i + n]


def load_v0(root: Path) -> Any:
    """vLLM 0.7.3's vllm.core.block_manager module (SelfAttnBlockSpaceManager, AllocStatus)."""
    platform = types.SimpleNamespace(is_hpu=lambda: False)
    stubs: dict[str, dict[str, Any]] = {
        "vllm.utils": {"Device": Device, "cdiv": lambda a, b: -(a // -b), "chunk_list": _chunks,
                       "STR_NOT_IMPL_ENC_DEC_SWA": "", "STR_NOT_IMPL_ENC_DEC_PREFIX_CACHE": ""},
        "vllm.platforms": {"current_platform": platform},
        "vllm.logger": {"init_logger": logging.getLogger},
        "vllm.sequence": {"Sequence": Sequence, "SequenceGroup": SequenceGroup,
                          "SequenceStatus": SequenceStatus},
    }
    with _isolated(root, stubs):
        return importlib.import_module("vllm.core.block_manager")


def load_v1(root: Path) -> tuple[Any, Any]:
    """vLLM 0.34.0's (vllm.v1.core.block_pool, vllm.v1.core.kv_cache_utils) modules."""
    stubs: dict[str, dict[str, Any]] = {
        "vllm.logger": {"init_logger": logging.getLogger},
        "vllm.utils.gc_utils": {"gc_untrack": lambda x: x},
        "vllm.envs": {"VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES": False},
    }
    with _isolated(root, stubs):
        return (importlib.import_module("vllm.v1.core.block_pool"),
                importlib.import_module("vllm.v1.core.kv_cache_utils"))
