"""Choosing, building and checking the network of a run folder.

``train.yaml`` builds its network from ``--attention`` / ``--genotype_path`` / ``--features`` and records what it
trained in ``RUN/network.json``; evaluation, export and inference of ``RUN/models/model.pt`` then build the same
network from that record alone (:func:`build_network` with only ``output_dir``), and check that a checkpoint holds
weights of it (:func:`check_checkpoint`). The attention names come from :mod:`monai_nasscam.networks.attentions`.
Every bad choice is an :class:`~monai_nasscam.errors.InputError` naming the file or the setting.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from monai_nasscam.data.classes import NUM_CLASSES
from monai_nasscam.errors import InputError, MissingInputError, input_check
from monai_nasscam.networks.attentions import attention_names, build_attention_network, get_attention
from monai_nasscam.networks.genotype import Genotype
from monai_nasscam.networks.nets.nasscam_unet import NASSCAMUNet
from monai_nasscam.networks.utils import unwrap_model
from monai_nasscam.networks.verdict import CONVERGED, STABILITY_UNCHECKED
from monai_nasscam.overrides import is_null, whole_number
from monai_nasscam.serialization import install_cpu_fallback, read_checkpoint

__all__ = [
    "NETWORK_RECORD_NAME",
    "DEFAULT_FEATURES",
    "read_network_record",
    "resolve_features",
    "check_network_settings",
    "resolve_network_choice",
    "build_network",
    "describe_network",
    "check_checkpoint",
    "check_trained_weights",
    "require_checkpoint_file",
    "warn_unconverged_genotype",
]

#: file name of the record of the trained network in the run folder (written by train.yaml).
NETWORK_RECORD_NAME = "network.json"
#: U-Net widths when neither the command line nor the run's record gives them.
DEFAULT_FEATURES = (16, 32, 64, 128, 256)



@input_check
def read_network_record(run_dir: str | os.PathLike | None) -> dict[str, Any] | None:
    """The network a training run recorded in ``run_dir/network.json`` (``attention``, ``genotype``: a path relative
    to ``run_dir`` or absolute, or ``null``; ``features``, ``dropout``, ...), or ``None`` if there is no record.

    Raises:
        InputError: the file is not a JSON object with an ``attention`` (naming it).
    """
    if run_dir is None:
        return None
    path = Path(run_dir) / NETWORK_RECORD_NAME
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a readable network record ({e}); delete it and pass --attention.") from None
    if not isinstance(record, Mapping) or not isinstance(record.get("attention"), str):
        raise ValueError(f"{path}: not a network record (no 'attention'); delete it and pass --attention.")
    out = dict(record)
    if out.get("genotype"):
        out["genotype"] = str(Path(run_dir) / out["genotype"])  # an absolute path stays itself
    return out


def resolve_features(features: Sequence[int] | None, output_dir: str | os.PathLike | None = None) -> list[int]:
    """The U-Net widths: ``features`` when given, else those ``output_dir/network.json`` records, else
    :data:`DEFAULT_FEATURES`."""
    if is_null(features):
        record = read_network_record(output_dir)
        features = (record or {}).get("features") or DEFAULT_FEATURES
    return list(features)  # type: ignore[arg-type]


@input_check
def check_network_settings(features: Any = None, dropout: Any = None) -> bool:
    """Check the U-Net's settings; ``None`` leaves one unchecked; ``True`` if valid.

    Args:
        features: 5 positive integers (the widths of the U-Net's input block and 4 down blocks).
        dropout: a number in ``[0, 1)``.

    Raises:
        InputError: naming the setting, its value and what it must be.
    """
    if features is not None:
        widths = list(features) if isinstance(features, (list, tuple)) else None
        if widths is None or len(widths) != 5 or any((whole_number(w) or 0) < 1 for w in widths):
            raise ValueError(
                f"features must be 5 positive integers (widths of the U-Net's input block and 4 down blocks), "
                f"got {features!r}."
            )
    if dropout is not None:
        try:
            value = float(dropout)
        except (TypeError, ValueError):
            value = float("nan")
        if not 0.0 <= value < 1.0:
            raise ValueError(f"dropout must be a number in [0, 1), got {dropout!r}.")
    return True


@input_check
def resolve_network_choice(
    attention: str | None = None,
    genotype_path: str | os.PathLike | None = None,
    output_dir: str | os.PathLike | None = None,
) -> tuple[str, Genotype | None, str | None]:
    """Which network train.yaml builds: ``(attention, genotype or None, genotype file or None)``, ``attention`` the
    registered canonical name (``none`` for ``unet``).

    - ``genotype_path`` given: the derived (searched) network; ``attention``, when also given, must be the genotype's.
    - ``attention`` a baseline (a registered attention that is not searchable: ``unet``/``none``, ``cbam``, ``scse``,
      ``deeplabv3plus``, ...): that baseline, no genotype.
    - neither given and ``output_dir/network.json`` (written by a training run into ``output_dir``): the network it
      records (so evaluation and inference of a trained run need no network settings).
    - ``attention`` a NAS attention without ``genotype_path``, or neither given: the search's genotype
      ``output_dir/genotype.json`` (so ``search.yaml`` then ``train.yaml`` with the same ``--output_dir`` chain).

    Raises:
        InputError: unknown attention, a baseline given a genotype, or a genotype of another attention (naming the
            file); ``MissingInputError`` (a ``FileNotFoundError``): no genotype where one is needed (naming the
            path looked at).
    """
    attention = None if is_null(attention, ("", "null")) else str(attention).strip().lower()
    genotype_path = None if is_null(genotype_path) else str(genotype_path)
    if attention is None and genotype_path is None:
        record = read_network_record(output_dir)
        if record is not None:
            attention = record["attention"].strip().lower()
            genotype_path = record.get("genotype") or None
    if attention is not None and attention not in attention_names():
        raise ValueError(
            f"unknown attention {attention!r}; train.yaml takes one of {list(attention_names())} "
            "(NAS attentions with --genotype_path RUN/genotype.json from search.yaml)."
        )
    if attention is not None and not get_attention(attention).searchable:
        if genotype_path is not None:
            raise ValueError(
                f"attention {attention!r} is a baseline without a searched architecture, but --genotype_path "
                f"{genotype_path} was given; pass only one of them (a genotype picks its own attention)."
            )
        return get_attention(attention).name, None, None
    if genotype_path is None:
        if output_dir is None:
            raise FileNotFoundError(_no_genotype_message(attention, None))
        candidate = Path(output_dir) / "genotype.json"
        if not candidate.is_file():
            raise FileNotFoundError(_no_genotype_message(attention, candidate))
        genotype_path = str(candidate)
    genotype = Genotype.load(genotype_path)  # FileNotFoundError / ValueError naming the file
    if attention is not None and attention != genotype.attention:
        raise ValueError(
            f"genotype file {genotype_path} was searched for attention {genotype.attention!r}, not {attention!r}; "
            f"drop --attention (the genotype sets it) or pass a {attention} genotype."
        )
    return genotype.attention, genotype, genotype_path


def _no_genotype_message(attention: str | None, looked_at: Path | None) -> str:
    what = f"attention {attention!r} needs a searched genotype" if attention else "no network chosen"
    if attention is None and looked_at is not None:
        where = (f": {looked_at.parent} has no {NETWORK_RECORD_NAME} (written by train.yaml) and there is no "
                 f"{looked_at} (written by search.yaml)")
    else:
        where = f"; there is no {looked_at}" if looked_at is not None else ""
    baselines = [entry.public_name for entry in map(get_attention, attention_names(searchable=False, aliases=False))]
    return (
        f"{what}{where}. Pass --genotype_path RUN/genotype.json (written by search.yaml), or a baseline with "
        f"--attention {'|'.join(baselines)}."
    )


@input_check
def build_network(
    attention: str | None = None,
    genotype_path: str | os.PathLike | None = None,
    output_dir: str | os.PathLike | None = None,
    spatial_dims: int = 2,
    in_channels: int = 3,
    out_channels: int = NUM_CLASSES,
    features: Sequence[int] | None = DEFAULT_FEATURES,
    dropout: float = 0.2,
    backbone: str = "resnet18",
    choice: tuple | None = None,
) -> nn.Module:
    """The network of train.yaml's ``network_def``: the choice :func:`resolve_network_choice` makes of ``attention``,
    ``genotype_path`` and ``output_dir``, or ``choice`` when it is that function's result already (train.yaml
    resolves it once, as ``network_choice``, for its checks, this network and the run's record).

    Block attentions give a :class:`~monai_nasscam.networks.NASSCAMUNet` (``features``, ``dropout``); a whole-network
    baseline (``deeplabv3plus``: :class:`~monai_nasscam.networks.DeepLabV3Plus`, ``backbone``) is built by its
    registered builder. Both return logits. ``features`` ``None``: the widths ``output_dir/network.json`` records
    (inference of a trained run), else :data:`DEFAULT_FEATURES`.

    Building a run's network also installs :func:`~monai_nasscam.serialization.install_cpu_fallback`, so that a
    checkpoint saved on a GPU loads on a machine without one whoever loads it (MONAI's ``ckpt_export`` builds its
    network here; importing the package installs nothing).

    Raises:
        InputError: a bad network choice or setting (see :func:`resolve_network_choice`), naming it.
    """
    install_cpu_fallback()
    features = resolve_features(features, output_dir)
    check_network_settings(features=features, dropout=dropout)
    attention, genotype, _ = choice if choice is not None else resolve_network_choice(attention, genotype_path, output_dir)
    if get_attention(attention).network is not None:
        return build_attention_network(attention, spatial_dims, in_channels, out_channels, backbone=backbone)
    return NASSCAMUNet(
        spatial_dims=spatial_dims,
        in_channels=in_channels,
        out_channels=out_channels,
        attention=attention,
        genotype=genotype,
        features=tuple(int(f) for f in features),
        dropout=dropout,
    )


@input_check
def describe_network(
    attention: str | None = None,
    genotype_path: str | os.PathLike | None = None,
    output_dir: str | os.PathLike | None = None,
    choice: tuple | None = None,
) -> dict[str, Any]:
    """``{"attention": ..., "genotype": path or None, "synchronous": ...}`` of the chosen network, for reports
    (``attention`` its public name: ``unet`` for ``none``); ``choice``: :func:`resolve_network_choice`'s result, when
    resolved already."""
    attention, genotype, path = choice if choice is not None else resolve_network_choice(attention, genotype_path, output_dir)
    out: dict[str, Any] = {"attention": get_attention(attention).public_name, "genotype": path}
    if genotype is not None:
        out["synchronous"] = genotype.synchronous
    return out


@input_check
def require_checkpoint_file(path: str | os.PathLike | None) -> Path:
    """``path`` as a ``Path`` if it is a file; the ``--ckpt_path`` errors otherwise.

    Raises:
        InputError: ``path`` is a folder (naming ``RUN/models/model.pt`` inside it when there is one).
        MissingInputError: no such file (also a ``FileNotFoundError``), or ``None``.
    """
    if is_null(path):
        raise MissingInputError("no checkpoint given: pass --ckpt_path RUN/models/model.pt (written by train.yaml).")
    path = Path(path)
    if path.is_dir():
        inside = next((p for p in (path / "models" / "model.pt", path / "model.pt") if p.is_file()), None)
        hint = f"; did you mean {inside}?" if inside is not None else " (train.yaml writes RUN/models/model.pt)."
        raise InputError(f"checkpoint {path} is a folder, not a weights file: pass the file as --ckpt_path{hint}")
    if not path.is_file():
        raise MissingInputError(
            f"checkpoint {path} does not exist; train first (train.yaml writes RUN/models/model.pt) "
            "or pass --ckpt_path."
        )
    return path


#: the advice after a ``--ckpt_path`` that holds no trained weights.
_TRAINED_WEIGHTS = "pass --ckpt_path RUN/models/model.pt (the weights train.yaml writes)"


def _is_search_checkpoint(state: Any) -> bool:
    """A search's resume checkpoint (``RUN/checkpoints/search_checkpoint.pt``): it has the alpha optimiser, or its
    network holds alphas (the supernet)."""
    if not isinstance(state, Mapping):
        return False
    network = state.get("network")
    return "arch_optimizer" in state or (isinstance(network, Mapping) and any(str(k).endswith(".alpha") for k in network))


def _read_weights(path: Path, advice: str, mmap: bool = False) -> Mapping:
    """The checkpoint at ``path`` as a mapping; a ``ValueError`` naming it, the cause and ``advice`` otherwise."""
    try:
        state = read_checkpoint(path, mmap=mmap)  # CPU tensors, whatever device they were saved from
    except ValueError as e:
        raise ValueError(f"{str(e).rstrip('.')}; {advice}.") from None
    if not isinstance(state, Mapping):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict; {advice}.")
    return state


@input_check
def check_trained_weights(path: str | os.PathLike | None) -> Path:
    """``path`` as a ``Path`` if it is a checkpoint of trained weights (what evaluation and inference load: a state
    dict, or one under ``model`` / ``network``); checked before the network is built, so that the message names the
    real cause first. The tensors are memory-mapped, not read.

    Raises:
        MissingInputError: no such file, or ``None`` (see :func:`require_checkpoint_file`).
        InputError: a folder; not a PyTorch checkpoint (a text file, ...), a damaged one, or one with pickled Python
            objects; a search checkpoint (the supernet: the message says to retrain the derived network).
    """
    path = require_checkpoint_file(path)
    _refuse_search_checkpoint(path, _read_weights(path, _TRAINED_WEIGHTS, mmap=True))
    return path


def _refuse_search_checkpoint(path: Path, state: Mapping) -> None:
    if _is_search_checkpoint(state):
        raise ValueError(
            f"{path} is a search checkpoint (the supernet with its alphas and every candidate operation), not trained "
            "weights: retrain the derived network (train.yaml --genotype_path RUN/genotype.json) and "
            f"{_TRAINED_WEIGHTS}."
        )


@input_check
def check_checkpoint(path: str | os.PathLike, network: nn.Module, key: str | None = None) -> bool:
    """Check that ``path`` holds weights for ``network`` (same parameter names and shapes); ``True`` if so.

    Args:
        path: a state dict saved by ``torch.save`` (e.g. ``RUN/models/model.pt``), or a dict of state dicts.
        network: the network the workflow built.
        key: the entry of a nested checkpoint holding the network (e.g. ``"network"`` in the resume checkpoint);
            ``None`` accepts a plain state dict or one under ``"model"`` / ``"network"``.

    Raises:
        MissingInputError: no such file (also a ``FileNotFoundError``).
        InputError: not a checkpoint (see :func:`check_trained_weights`; with ``key`` None a search checkpoint
            too), or weights of another architecture (which keys or shapes differ).
    """
    path = require_checkpoint_file(path)
    state = _read_weights(path, _TRAINED_WEIGHTS if key is None else "start afresh in another --output_dir")
    if key is not None:
        if key not in state:
            raise ValueError(f"{path} has no {key!r} entry (it has {sorted(state)[:8]}).")
        state = state[key]
    else:
        _refuse_search_checkpoint(path, state)
        for candidate in ("model", "network"):
            if candidate in state and isinstance(state[candidate], Mapping):
                state = state[candidate]
                break
    module = unwrap_model(network)
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and isinstance(state[k], torch.Tensor) and tuple(state[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing weights (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected weights (e.g. {', '.join(unexpected[:3])})")
        if wrong:
            parts.append(f"{len(wrong)} weights of another shape (e.g. {'; '.join(wrong[:3])})")
        searched = any(k.endswith(".alpha") for k in unexpected) and not any(k.endswith(".alpha") for k in expected)
        advice = (
            "It holds a search's supernet (alphas and every candidate op): retrain the derived network with "
            "train.yaml --genotype_path RUN/genotype.json and use its RUN/models/model.pt."
            if searched
            else "Pass the --attention / --genotype_path / --features it was trained with."
        )
        raise ValueError(
            f"checkpoint {path} was saved from another architecture than the {type(module).__name__} built here: "
            f"{', '.join(parts)}. {advice}"
        )
    return True


def warn_unconverged_genotype(genotype: Genotype | None, path: str | os.PathLike | None) -> str | None:
    """Log one warning when ``genotype`` records a search whose verdict is not ``"converged"``.

    A version-2 genotype file holds a ``search`` section (:attr:`~monai_nasscam.networks.genotype.Genotype.search`)
    with the verdict of the alphas it was derived from; retraining a genotype whose search did not converge (or
    collapsed) is allowed, but said once at the start of training, with the verdict's reasons. A genotype without
    that section (version 1, a hand-made file) or without a verdict is not warned about.

    Args:
        genotype: the genotype to be trained, or ``None`` (a baseline: nothing to say).
        path: the genotype file, named in the message.

    Returns:
        the message logged, or ``None`` when there is nothing to warn about.
    """
    if genotype is None or not genotype.search:
        return None
    verdict = genotype.search.get("verdict")
    if verdict is None or verdict == CONVERGED:
        return None
    reasons = [str(r) for r in genotype.search.get("reasons") or []]
    if reasons and all(r.startswith(STABILITY_UNCHECKED) for r in reasons):
        meaning = "the alphas decided, but the choice was not shown to hold across two validations"
    else:
        meaning = "a genotype from a search that did not converge is close to a random pick"
    because = f" ({'; '.join(reasons)})" if reasons else ""
    message = (
        f"{path}: the genotype comes from a search whose verdict is {verdict!r}{because}, not 'converged'; {meaning}; "
        "see docs/search.md"
    )
    logging.getLogger(__name__).warning(message)
    return message
