"""The attention registry: every attention name of the package, defined once (like DARTS' ``OPS`` table or MONAI's
layer factories).

An entry says how to build the attention -- a *block* put at the 8 positions of the U-Net
(:class:`~monai_nasscam.networks.NASSCAMUNet`, :func:`~monai_nasscam.networks.add_attention`), or a whole *network*
for baselines that are not a U-Net (``deeplabv3plus``) -- which cell kinds it searches (none for a fixed baseline),
the label of tables and figures, and its aliases (``unet`` for ``none``). Everything that lists attentions derives
from it: the choices of ``train.yaml`` / ``search.yaml`` and their error messages, the models of ``nasscam compare``
and of the demo, genotype validation.

Adding a baseline is one registration::

    import torch
    import torch.nn as nn
    from monai_nasscam.networks import register_attention

    class ChannelGate(nn.Module):  # (B, C, *spatial) -> same shape, built as (spatial_dims, in_channels)
        def __init__(self, spatial_dims: int, in_channels: int) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.zeros(in_channels))

        def forward(self, x):
            return x * torch.sigmoid(self.weight).view(1, -1, *([1] * (x.ndim - 2)))

    register_attention("channel-gate", label="U-Net + channel gate", block=ChannelGate)

A bundle run sees it when the module that registers it is imported by the config (``+imports`` in a second config
file, see docs/architecture.md "Where to change what").

A *searchable* block (``cells`` not empty) is built as ``block(spatial_dims, in_channels, genotype=entry)``, with
``entry`` ``None`` for the supernet or the genotype's op lists ``{"sam": [...], "cam": [...]}`` for the derived
network; it exposes its cells with a ``cells()`` method yielding ``(kind, NASAttentionCell)`` pairs and its
registered name as ``attention_name``. That is all genotype derivation, alpha sharing and the search figures use.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch.nn as nn

from monai_nasscam.networks.blocks import CBAMBlock, NASCAMBlock, NASSAMBlock, NASSCAMBlock, SCSEBlock
from monai_nasscam.networks.cell import NASAttentionCell
from monai_nasscam.networks.nets.deeplabv3plus import DeepLabV3Plus

__all__ = [
    "Attention",
    "register_attention",
    "get_attention",
    "registered_attentions",
    "attention_names",
    "check_attention",
    "attention_block",
    "build_attention_network",
    "block_cells",
    "share_alphas",
]


@dataclass(frozen=True)
class Attention:
    """One registered attention.

    Args:
        name: the canonical name (lower case), e.g. ``"cbam"``.
        label: the name in tables and figures, e.g. ``"U-Net + CBAM"``.
        block: builds the block of one U-Net position: ``block(spatial_dims, in_channels)`` for a fixed attention,
            ``block(spatial_dims, in_channels, genotype=entry or None)`` for a searchable one; maps
            ``(B, C, *spatial)`` to the same shape. ``None`` for a whole-network baseline.
        network: builds a whole network instead of a U-Net with blocks: ``network(spatial_dims, in_channels,
            out_channels)``, plus ``backbone=`` (train.yaml's setting) when its signature names it; it returns logits.
        cells: the cell kinds a searchable block searches (``("sam",)``, ``("cam",)``, ``("sam", "cam")``); empty
            for a fixed attention (a baseline).
        aliases: further names accepted for it (``"unet"`` for ``"none"``); the first is the name run records and
            reports use (:attr:`public_name`).
        compare: whether ``nasscam compare`` runs it by default (the paper's Table 2).
    """

    name: str
    label: str
    block: Callable[..., nn.Module] | None = None
    network: Callable[..., nn.Module] | None = None
    cells: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()
    compare: bool = True

    @property
    def searchable(self) -> bool:
        """Whether the attention has an architecture to search (needs a genotype to retrain)."""
        return bool(self.cells)

    @property
    def public_name(self) -> str:
        """The name run records (``RUN/network.json``) and reports use: the first alias, else :attr:`name`."""
        return self.aliases[0] if self.aliases else self.name


_REGISTRY: dict[str, Attention] = {}
_ALIASES: dict[str, str] = {}


def register_attention(
    name: str,
    label: str,
    block: Callable[..., nn.Module] | None = None,
    network: Callable[..., nn.Module] | None = None,
    cells: Sequence[str] = (),
    aliases: Sequence[str] = (),
    compare: bool = True,
    replace: bool = False,
) -> Attention:
    """Register an attention under ``name`` (see :class:`Attention` for the arguments); returns its entry.

    Args:
        replace: allow replacing an entry of the same name (re-importing a plugin module).

    Raises:
        ValueError: the name (or an alias) is taken, or not exactly one of ``block`` / ``network`` is given, or a
            whole network is declared searchable, or an unknown cell kind.
        TypeError: ``block`` / ``network`` is not callable.
    """
    name = str(name).strip().lower()
    names = [name, *(str(a).strip().lower() for a in aliases)]
    if not name or any(not n or any(c.isspace() for c in n) for n in names):
        raise ValueError(f"attention names must be non-empty words without spaces, got {names}.")
    if (block is None) == (network is None):
        raise ValueError(f"attention {name!r}: give exactly one of block (a U-Net attention) or network (a whole network).")
    builder = block if block is not None else network
    if not callable(builder):
        raise TypeError(f"attention {name!r}: the builder must be callable, got {type(builder).__name__}.")
    cells = tuple(str(k) for k in cells)
    unknown = [k for k in cells if k not in ("sam", "cam")]
    if unknown:
        raise ValueError(f"attention {name!r}: unknown cell kind(s) {unknown}; cells are 'sam' and/or 'cam'.")
    if cells and network is not None:
        raise ValueError(f"attention {name!r}: a whole-network baseline cannot be searchable (cells {list(cells)}).")
    if not replace:
        taken = [n for n in names if n in _REGISTRY or n in _ALIASES]
        if taken:
            raise ValueError(f"attention name(s) {taken} already registered; pass replace=True to replace.")
    entry = Attention(name, str(label), block, network, cells, tuple(names[1:]), bool(compare))
    old = _REGISTRY.pop(name, None)
    for alias in old.aliases if old is not None else ():
        _ALIASES.pop(alias, None)
    _REGISTRY[name] = entry
    _ALIASES.update({alias: name for alias in entry.aliases})
    return entry


def registered_attentions() -> tuple[Attention, ...]:
    """Every registered attention, in registration order."""
    return tuple(_REGISTRY.values())


def attention_names(
    searchable: bool | None = None, aliases: bool = True, blocks_only: bool = False
) -> tuple[str, ...]:
    """Registered attention names, in registration order.

    Args:
        searchable: ``True``: only searchable attentions; ``False``: only fixed ones (the baselines); ``None``: all.
        aliases: list each public name (``unet``) before the canonical one (``none``), as the command line takes both.
        blocks_only: only attentions built as a block (those :class:`~monai_nasscam.networks.NASSCAMUNet` takes).
    """
    out: list[str] = []
    for entry in _REGISTRY.values():
        if searchable is not None and entry.searchable != searchable:
            continue
        if blocks_only and entry.block is None:
            continue
        out += [*entry.aliases, entry.name] if aliases else [entry.name]
    return tuple(out)


def get_attention(name: str) -> Attention:
    """The registered attention called ``name`` (an alias, or any case and surrounding spaces).

    Raises:
        ValueError: an unknown name, listing the registered ones.
    """
    key = str(name).strip().lower()
    key = _ALIASES.get(key, key)
    if key not in _REGISTRY:
        raise ValueError(f"unknown attention {name!r}, expected one of {list(attention_names())}.")
    return _REGISTRY[key]


def check_attention(name: str) -> str:
    """The canonical name of ``name`` if it is an attention built as a block, else a ``ValueError`` naming the choices."""
    entry = get_attention(name)
    if entry.block is None:
        raise ValueError(
            f"attention {name!r} is a whole network, not a block; the U-Net takes one of "
            f"{list(attention_names(aliases=False, blocks_only=True))}."
        )
    return entry.name


def attention_block(
    name: str, spatial_dims: int, in_channels: int, genotype: Mapping[str, Sequence[str]] | None = None
) -> nn.Module:
    """Build the block of the attention called ``name`` for one U-Net position.

    Args:
        name: a registered block attention (or alias); ``"none"`` gives ``nn.Identity``.
        spatial_dims: 2 or 3.
        in_channels: channels of the feature map it weights.
        genotype: for a searchable attention, a mapping with the 6 op names of each searched cell
            (``{"sam": [...], "cam": [...]}``, only the kinds the attention uses); ``None`` for a searchable block.

    Raises:
        ValueError: unknown attention, a whole-network one, or a genotype entry without the attention's cell kinds.
        TypeError: a searchable attention's block without ``cells()`` or with another ``attention_name``.
    """
    entry = get_attention(check_attention(name))
    if not entry.searchable:
        return entry.block(spatial_dims, in_channels)
    if genotype is not None:
        missing = [k for k in entry.cells if k not in genotype]
        if missing:
            raise ValueError(f"a {entry.name} genotype entry needs op lists for {list(entry.cells)}, missing {missing}.")
    block = entry.block(spatial_dims, in_channels, genotype=genotype)
    if not callable(getattr(block, "cells", None)) or getattr(block, "attention_name", None) != entry.name:
        raise TypeError(
            f"the block of searchable attention {entry.name!r} ({type(block).__name__}) needs a cells() method and "
            f"attention_name {entry.name!r}."
        )
    return block


def build_attention_network(name: str, spatial_dims: int, in_channels: int, out_channels: int, **settings) -> nn.Module:
    """Build a whole-network baseline (an entry with ``network``), passing the ``settings`` its builder names.

    Raises:
        ValueError: ``name`` is not a whole-network attention.
    """
    entry = get_attention(name)
    if entry.network is None:
        raise ValueError(f"attention {name!r} is a U-Net block, not a whole network.")
    try:
        params = inspect.signature(entry.network).parameters
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        settings = {k: v for k, v in settings.items() if takes_any or k in params}
    except (TypeError, ValueError):  # a builder without an inspectable signature gets none of them
        settings = {}
    return entry.network(spatial_dims, in_channels, out_channels, **settings)


def block_cells(block: nn.Module, searchable: bool = False) -> dict[str, NASAttentionCell]:
    """The cells of an attention block by kind (``block.cells()``); empty for a block without cells (a baseline).
    ``searchable``: only the searchable ones (those with alphas)."""
    cells = getattr(block, "cells", None)
    found = dict(cells()) if callable(cells) else {}
    return {kind: cell for kind, cell in found.items() if cell.searchable} if searchable else found


def share_alphas(blocks: Sequence[nn.Module] | Iterator[nn.Module]) -> None:
    """Make every searchable cell of ``blocks`` use the alphas of the first cell of its kind (the non-synchronous
    search: one set of alphas for all 8 modules)."""
    first: dict[str, NASAttentionCell] = {}
    for block in blocks:
        for kind, cell in block_cells(block, searchable=True).items():
            if kind in first:
                cell.alpha = first[kind].alpha
            else:
                first[kind] = cell


# ------------------------------------------------------------------------------------------ the package's attentions
def _identity(spatial_dims: int, in_channels: int) -> nn.Module:
    return nn.Identity()


def _nas_sam(spatial_dims: int, in_channels: int, genotype: Mapping[str, Sequence[str]] | None = None) -> nn.Module:
    return NASSAMBlock(spatial_dims, in_channels, None if genotype is None else genotype["sam"])


def _nas_cam(spatial_dims: int, in_channels: int, genotype: Mapping[str, Sequence[str]] | None = None) -> nn.Module:
    return NASCAMBlock(spatial_dims, in_channels, None if genotype is None else genotype["cam"])


def _nas_scam(mode: str) -> Callable[..., nn.Module]:
    def build(spatial_dims: int, in_channels: int, genotype: Mapping[str, Sequence[str]] | None = None) -> nn.Module:
        return NASSCAMBlock(spatial_dims, in_channels, mode, genotype)

    return build


register_attention("none", "U-Net", block=_identity, aliases=("unet",))
register_attention("deeplabv3plus", "DeepLab V3+", network=DeepLabV3Plus)
register_attention("cbam", "U-Net + CBAM", block=CBAMBlock)
register_attention("scse", "U-Net + scSE", block=SCSEBlock)
register_attention("nas-sam", "NAS-SAM", block=_nas_sam, cells=("sam",), compare=False)
register_attention("nas-cam", "NAS-CAM", block=_nas_cam, cells=("cam",), compare=False)
register_attention("nas-scam-s", "NAS-SCAM-S", block=_nas_scam("serial"), cells=("sam", "cam"))
register_attention("nas-scam-p", "NAS-SCAM-P", block=_nas_scam("parallel"), cells=("sam", "cam"))
