"""Safe serialisation of saved attributes: plain data, arrays, DataFrames and allowed dataclasses as JSON.

Only dataclasses registered with :func:`persistable` are rebuilt on loading, so a saved file cannot name an
arbitrary class to construct; nothing is ever unpickled.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pandas as pd
import torch

__all__ = ["from_jsonable", "persistable", "to_jsonable"]


#: dataclasses that may be saved, by the name saved files know them by; loading builds only these (never an arbitrary
#: class)
_PERSISTABLE: dict[str, type] = {}
#: that name, by class
_NAMES: dict[type, str] = {}


def persistable(cls: type | None = None, *, name: str | None = None):
    """Allow instances of the dataclass ``cls`` in saved attributes (fields are saved as plain data).

    Parameters
    ----------
    cls
        The dataclass (``@persistable``), or ``None`` when called with ``name`` (``@persistable(name=...)``).
    name
        The name saved files know the class by; its qualified name (module and class) by default. A class that
        moves to another module keeps its old name here, so that saved files keep loading.

    Returns
    -------
    The class itself (or, with only ``name``, the decorator).
    """

    def register(c: type) -> type:
        key = name or f"{c.__module__}.{c.__qualname__}"
        _PERSISTABLE[key] = c
        _NAMES[c] = key
        return c

    return register if cls is None else register(cls)


def to_jsonable(obj: Any) -> Any:
    """Encode nested plain data with numpy arrays, tuples, DataFrames and allowed dataclasses as tagged JSON."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        name = _NAMES.get(type(obj))
        if name is None:
            msg = (
                f"Cannot save an attribute of type {type(obj).__module__}.{type(obj).__qualname__}: it is not "
                "registered with @persistable."
            )
            raise TypeError(msg)
        fields = {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
        return {"__dataclass__": name, "fields": fields}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            return {k: to_jsonable(v) for k, v in obj.items()}
        # keys that are not strings (tuples, numbers, None) keep their type
        return {"__items__": [[to_jsonable(k), to_jsonable(v)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [to_jsonable(v) for v in obj]}
    if isinstance(obj, list):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, pd.DataFrame):
        split = obj.to_dict(orient="split")
        split["index_name"] = obj.index.name
        return {"__dataframe__": to_jsonable(split)}
    if isinstance(obj, pd.Index | pd.Series):
        return to_jsonable(obj.to_numpy())
    if isinstance(obj, np.ndarray):
        if obj.dtype == object or obj.dtype.kind in "USO":
            return {"__ndarray__": [to_jsonable(v) for v in obj.tolist()], "dtype": "object"}
        return {"__ndarray__": obj.tolist(), "dtype": str(obj.dtype)}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, torch.Tensor):
        return to_jsonable(obj.detach().cpu().numpy())
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    msg = f"Cannot save an attribute of type {type(obj).__name__} as plain data."
    raise TypeError(msg)


def from_jsonable(obj: Any) -> Any:
    """Decode :func:`to_jsonable` output."""
    if isinstance(obj, dict):
        if "__dataclass__" in obj:
            cls = _PERSISTABLE.get(obj["__dataclass__"])
            if cls is None:
                msg = f"The saved model holds an object of unknown type {obj['__dataclass__']!r}; it is not loaded."
                raise ValueError(msg)
            return cls(**{k: from_jsonable(v) for k, v in obj["fields"].items()})
        if "__items__" in obj:
            return {from_jsonable(k): from_jsonable(v) for k, v in obj["__items__"]}
        if "__tuple__" in obj:
            return tuple(from_jsonable(v) for v in obj["__tuple__"])
        if "__ndarray__" in obj:
            data = from_jsonable(obj["__ndarray__"])
            return np.array(data, dtype=object if obj["dtype"] == "object" else obj["dtype"])
        if "__dataframe__" in obj:
            split = from_jsonable(obj["__dataframe__"])
            frame = pd.DataFrame(split["data"], index=split["index"], columns=split["columns"])
            frame.index.name = split.get("index_name")
            return frame
        return {k: from_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [from_jsonable(v) for v in obj]
    return obj
