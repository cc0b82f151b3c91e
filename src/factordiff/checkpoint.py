"""Weights and training state on disk: safetensors + JSON, written atomically, never pickle.

A checkpoint is a folder ``RUN/checkpoints/<stage>-<step>/`` holding ``weights.safetensors``
(every module's state, keys prefixed by module name), ``state.safetensors`` (optimizer, EMA and
random-number-generator tensors) and ``state.json`` (step, stage and every non-tensor value). It is
written into ``<name>.tmp`` and renamed when complete, so a kill during a save leaves the previous
checkpoint as the newest complete one.
"""

from __future__ import annotations

import json
import os
import shutil
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from factordiff.errors import FactordiffError

WEIGHTS = "weights.safetensors"
STATE_TENSORS = "state.safetensors"
STATE_JSON = "state.json"


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file in the same folder and an atomic rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(Path(path), json.dumps(obj, indent=2) + "\n")


def atomic_save_tensors(
    tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None
) -> None:
    """``safetensors.torch.save_file`` through a temporary file and an atomic rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    os.replace(tmp, path)


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Load a safetensors file; anything else (a pickle, a truncated file) is refused with a message."""
    path = Path(path)
    if not path.is_file():
        raise FactordiffError(f"{path}: no such file; expected a safetensors file")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise FactordiffError(
            f"{path}: not a valid safetensors file ({str(e).splitlines()[0][:120]})"
        ) from None


def read_json(path: Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FactordiffError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FactordiffError(f"{path}: not valid JSON ({e.__class__.__name__}: {str(e)[:80]})") from None


def module_tensors(modules: dict[str, torch.nn.Module]) -> dict[str, torch.Tensor]:
    """Flatten the state dicts of named modules into one dict with ``name.`` prefixes."""
    return {f"{name}.{k}": v for name, m in modules.items() for k, v in m.state_dict().items()}


def load_modules(modules: dict[str, torch.nn.Module], tensors: dict[str, torch.Tensor], where: str) -> None:
    """Load prefixed tensors into named modules, strictly: missing or unexpected keys are errors."""
    for name, m in modules.items():
        prefix = name + "."
        sub = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        try:
            m.load_state_dict(sub, strict=True)
        except RuntimeError as e:
            raise FactordiffError(
                f"{where}: weights for {name!r} do not fit the model ({str(e).splitlines()[0][:160]})"
            ) from None


def flatten_state(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Split a nested structure into tensors (moved to ``tensors``) and a JSON skeleton that names them."""
    if isinstance(obj, torch.Tensor):
        tensors[prefix] = obj
        return {"__tensor__": prefix}
    if isinstance(obj, dict):
        return {
            "__dict__": [
                [flatten_state(k, f"{prefix}.k{i}", tensors), flatten_state(v, f"{prefix}.{i}", tensors)]
                for i, (k, v) in enumerate(obj.items())
            ]
        }
    if isinstance(obj, (list, tuple)):
        return {
            "__list__" if isinstance(obj, list) else "__tuple__": [
                flatten_state(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)
            ]
        }
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} in a checkpoint")


def unflatten_state(skeleton: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of ``flatten_state``."""
    if isinstance(skeleton, dict):
        if "__tensor__" in skeleton:
            return tensors[skeleton["__tensor__"]]
        if "__dict__" in skeleton:
            return {unflatten_state(k, tensors): unflatten_state(v, tensors) for k, v in skeleton["__dict__"]}
        if "__list__" in skeleton:
            return [unflatten_state(v, tensors) for v in skeleton["__list__"]]
        if "__tuple__" in skeleton:
            return tuple(unflatten_state(v, tensors) for v in skeleton["__tuple__"])
    return skeleton


def save_checkpoint(
    folder: Path, weights: dict[str, torch.Tensor], state: dict[str, Any], keep_last: int | None = None
) -> Path:
    """Write a complete checkpoint folder atomically, then prune old ones of the same stage."""
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    tensors: dict[str, torch.Tensor] = {}
    skeleton = flatten_state(state, "s", tensors)
    save_file({k: v.detach().contiguous().cpu() for k, v in weights.items()}, str(tmp / WEIGHTS))
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp / STATE_TENSORS))
    (tmp / STATE_JSON).write_text(json.dumps(skeleton))
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)
    if keep_last:
        stage = folder.name.rsplit("-", 1)[0]
        done = sorted(p for p in folder.parent.glob(f"{stage}-*") if not p.name.endswith(".tmp"))
        for old in done[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    return folder


def load_checkpoint(folder: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a checkpoint folder: (weights, state)."""
    folder = Path(folder)
    weights = load_tensors(folder / WEIGHTS)
    state = unflatten_state(read_json(folder / STATE_JSON), load_tensors(folder / STATE_TENSORS))
    return weights, state


def latest_checkpoint(checkpoints: Path, stage: str) -> Path | None:
    """Newest complete checkpoint of ``stage`` (folders named ``<stage>-<step:08d>``), or None."""
    found = sorted(
        p
        for p in Path(checkpoints).glob(f"{stage}-*")
        if p.is_dir() and not p.name.endswith(".tmp") and (p / STATE_JSON).exists()
    )
    return found[-1] if found else None


def model_meta(extra: dict | None = None) -> dict:
    """What every model's ``config.json`` records beside its own entries: the factordiff version."""
    try:
        ours = version("factordiff")
    except PackageNotFoundError:  # run from a source tree that was never installed
        ours = "unknown"
    return {"factordiff_version": ours, **(extra or {})}
