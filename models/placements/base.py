"""What a placement declares; the generic block that composes those declarations is models.block.

A placement's arguments are the fields of its frozen dataclass `Args`, with types and defaults;
`Placement.parse_args` validates and coerces a mapping of them once, at the edge.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from models.block import Block, BlockBase, BlockLayout
from models.config import ConfigError, ModelConfig
from models.layers import Attention, Norm, init_normal, scaled_init_factor

_KINDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def arg(default: Any, must: str = "", check: Callable[[Any], bool] | None = None) -> Any:
    """An argument field of a placement's `Args`: its default; `check`, a test of the coerced value,
    and `must`, what an error says the value must be ("a number in [0, 1]")."""
    return dataclasses.field(default=default, metadata={"must": must, "check": check})


def coerce(value: Any, tp: Any) -> Any:
    """`value` as the declared type `tp` (bool, int, float, str or a Literal); ValueError if it is
    not one. Numbers may come as text: YAML 1.1 reads 1e-1 as a string. A bool is never a number."""
    if typing.get_origin(tp) is Literal:
        choices = typing.get_args(tp)
        if any(value == c and type(value) is type(c) for c in choices):
            return value
    elif tp not in _KINDS:
        raise TypeError(f"unsupported argument type {tp!r}; use bool, int, float, str or a Literal")
    elif tp in (bool, str):
        if isinstance(value, tp):
            return value
    elif not isinstance(value, bool):
        number = value
        if isinstance(value, str):
            try:
                number = float(value.strip())
            except ValueError:
                number = None
        if isinstance(number, (int, float)):
            if tp is float:
                return float(number)
            if math.isfinite(number) and float(number).is_integer():
                return int(number)
    raise ValueError(f"{value!r} is not {_kind(tp)}")


def _kind(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(map(repr, typing.get_args(tp)))
    return _KINDS[tp]


def _type_name(tp: Any) -> str:
    return _kind(tp) if typing.get_origin(tp) is Literal else tp.__name__


class Placement:
    """A normalization placement. Subclasses set the class attributes and override `layout`; the
    class docstring's first line is the block equation, `source` the citation, `title` the
    readable name.

    Arguments (e.g. Mix-LN's alpha) are the fields of the nested frozen dataclass `Args`, declared
    with `arg(default, must, check)`; the constructor takes them as keyword arguments, parsed by
    `parse_args`, and keeps the frozen result as `self.args`.
    """

    @dataclasses.dataclass(frozen=True)
    class Args:
        """No arguments."""

    name: ClassVar[str] = ""
    # the name tables, figure legends and the report print ("Peri-LN"); `name` stays the machine
    # key (configs, run keys, CSV columns). Declared by each class itself: `register` falls back
    # to `name` rather than let a subclass print as its parent.
    title: ClassVar[str] = ""
    source: ClassVar[str] = ""
    embed_norm: ClassVar[bool] = False  # default of ModelConfig.embed_norm=None
    final_norm: ClassVar[bool] = True
    norm_eps: ClassVar[float] = 1e-5  # default of ModelConfig.norm_eps=None (OLMo 2: 1e-6)
    # Properties a placement declares so generic checks and diagnostics know what to expect:
    # zero_init_gate: a learned gate on the residual branches starts at exactly 0 (ReZero), so the
    # weights behind it get a zero gradient until the first update opens it.
    zero_init_gate: ClassVar[bool] = False

    def __init__(self, **args: Any) -> None:
        self.args = self.parse_args(args)

    @property
    def values(self) -> dict[str, Any]:
        """The arguments as a plain dict (defaults filled in)."""
        return dataclasses.asdict(self.args)

    @classmethod
    def parse_args(cls, values: Mapping[str, Any]) -> Any:
        """`values` as this placement's frozen `Args`, validated and coerced once. Unknown names
        (with a did-you-mean), values not of the declared type and values the field's check rejects
        are one ConfigError naming each argument and what it must be."""
        if isinstance(values, cls.Args):
            return values
        where = f"placement {cls.name!r}"
        if not isinstance(values, Mapping):
            raise ConfigError(f"{where}: expected a mapping of arguments; got {values!r}")
        declared = {f.name: f for f in dataclasses.fields(cls.Args)}
        hints = typing.get_type_hints(cls.Args)
        problems, parsed = [], {}
        for key, value in values.items():
            if key not in declared:
                close = difflib.get_close_matches(str(key), declared, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                problems.append(f"has no argument {key!r}{hint} (its arguments: "
                                f"{', '.join(declared) or 'none'})")
                continue
            meta, tp = declared[key].metadata, hints[key]
            must = meta.get("must") or _kind(tp)
            try:
                parsed[key] = coerce(value, tp)
            except ValueError:
                problems.append(f"argument {key} must be {must}; got {value!r} "
                                f"(type {type(value).__name__}, expected {_type_name(tp)})")
                continue
            if meta.get("check") and not meta["check"](parsed[key]):
                problems.append(f"argument {key} must be {must}; got {value!r}")
        if problems:
            raise ConfigError(f"{where}: " + "; ".join(problems))
        return cls.Args(**parsed)

    @classmethod
    def check_declaration(cls) -> None:
        """Fail loudly, at registration, on an `Args` that parse_args could not serve: not a frozen
        dataclass, a field without a default or of an unsupported type, a default its check rejects."""
        args = cls.Args
        if not (dataclasses.is_dataclass(args) and args.__dataclass_params__.frozen):
            raise TypeError(f"{cls.__name__}.Args must be a frozen dataclass")
        hints = typing.get_type_hints(args)
        for f in dataclasses.fields(args):
            if f.default is dataclasses.MISSING:
                raise TypeError(f"{cls.__name__}.Args.{f.name} needs a default")
            try:
                coerce(f.default, hints[f.name])  # TypeError for an unsupported type
            except ValueError:
                raise TypeError(f"{cls.__name__}.Args.{f.name}: the default {f.default!r} is not "
                                f"{_kind(hints[f.name])}") from None
            if f.metadata.get("check") and not f.metadata["check"](f.default):
                raise TypeError(f"{cls.__name__}.Args.{f.name}: the default {f.default!r} fails its check")

    @classmethod
    def equation(cls) -> str:
        return (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""

    def layout(self, layer: int, n_layers: int) -> BlockLayout:
        """The layout of block `layer` (1-based) of `n_layers`."""
        raise NotImplementedError

    def make_norm(self, cfg: ModelConfig, dim: int) -> nn.Module:
        return Norm(cfg.norm, dim, cfg.norm_eps)

    def make_embed_norm(self, cfg: ModelConfig) -> nn.Module:
        """What normalizes the embedding output when embed_norm is on (DyT: a learnable scalar)."""
        return self.make_norm(cfg, cfg.d_model)

    def make_attention(self, cfg: ModelConfig, layer: int) -> nn.Module:
        """The attention sub-layer of block `layer` (OLMo 2 and HybridNorm add q/k/v norms)."""
        return Attention(cfg)

    def make_block(self, cfg: ModelConfig, layer: int) -> BlockBase:
        """Block `layer` (1-based); a placement with its own wiring returns its BlockBase subclass."""
        return Block(cfg, self.layout(layer, cfg.n_layers), lambda: self.make_norm(cfg, cfg.d_model),
                     attention=self.make_attention(cfg, layer))

    def embed_scale(self, cfg: ModelConfig) -> float:
        """Factor on the token embeddings (Gemma multiplies by sqrt(d))."""
        return 1.0

    def init_weights(self, model: nn.Module, cfg: ModelConfig) -> None:
        """Default rule: N(0, init_std) everywhere; `init_scheme="scaled"` divides the output
        projections' std by sqrt(2 n_layers). A placement with its own rule overrides this."""
        init_normal(model, cfg.init_std)
        if cfg.init_scheme == "scaled":
            factor = scaled_init_factor(cfg.n_layers)
            with torch.no_grad():
                for block in model.blocks:
                    for proj in block.residual_projections():
                        proj.weight.mul_(factor)
