"""Node parameters declared from typed config dataclasses (docs/design.md §2: one config source).

Every node builds its config dataclass from ROS parameters declared here, with the field's
type, default and docstring (shown by `ros2 param describe`), so parameter files, the code's
defaults and the documentation cannot drift apart.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
import typing
from collections.abc import Collection
from typing import Any

from rcl_interfaces.msg import ParameterDescriptor, ParameterType
from rclpy.exceptions import ParameterUninitializedException
from rclpy.node import Node
from rclpy.parameter import Parameter

__all__ = ["declare_config", "field_docs"]

_PARAM_TYPES = {
    bool: ParameterType.PARAMETER_BOOL,
    int: ParameterType.PARAMETER_INTEGER,
    float: ParameterType.PARAMETER_DOUBLE,
    str: ParameterType.PARAMETER_STRING,
    tuple[str, ...]: ParameterType.PARAMETER_STRING_ARRAY,
    tuple[float, ...]: ParameterType.PARAMETER_DOUBLE_ARRAY,
    tuple[int, ...]: ParameterType.PARAMETER_INTEGER_ARRAY,
}


def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings of a dataclass (the string right after each field), by field name;
    fields inherited from a dataclass base keep their base's docstrings."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if klass is cls or dataclasses.is_dataclass(klass):
            docs.update(_own_field_docs(klass))
    return docs


def _own_field_docs(cls: type) -> dict[str, str]:
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError, SyntaxError):
        return {}  # source not shipped: parameters just lack descriptions
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    docs = {}
    for node, following in zip(body, body[1:], strict=False):
        if (
            isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
            and isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)
        ):
            docs[node.target.id] = inspect.cleandoc(following.value.value)
    return docs


def declare_config(node: Node, cls: type, dynamic: Collection[str] = ()) -> Any:
    """Declare one ROS parameter per dataclass field (default, type and description from the
    dataclass) and build the config from the parameter values (validated there).

    Parameters are read-only except those named in ``dynamic`` (the node reads those again
    when it uses them, e.g. a reset layout chosen at run time)."""
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    values = {}
    for f in dataclasses.fields(cls):
        param_type = _PARAM_TYPES[hints[f.name]]
        default = f.default
        descriptor = ParameterDescriptor(
            name=f.name, type=param_type, description=docs.get(f.name, ""),
            read_only=f.name not in dynamic,
        )
        if default == ():
            # rclpy takes the type of an empty-list default to be a byte array; declare the
            # type alone instead (the parameter stays unset unless a value is given).
            node.declare_parameter(f.name, Parameter.Type(param_type), descriptor)
            try:
                value = node.get_parameter(f.name).value
            except ParameterUninitializedException:
                value = default
        else:
            value = node.declare_parameter(
                f.name, list(default) if isinstance(default, tuple) else default, descriptor
            ).value
        values[f.name] = tuple(value) if isinstance(default, tuple) else value
    return cls(**values)
