"""The 4-node NAS-SCAM attention cell (SPEC §1.1), searchable or fixed.

Nodes: ``n0`` is the input, ``n1`` and ``n2`` have ``hidden_channels`` channels, ``n3`` has one channel.
Every earlier node feeds every later one (:data:`EDGES`). An edge is a mixed operation
``sum_o softmax(alpha_edge)[o] * act(BN(op_o(x)))`` with ReLU into ``n1``/``n2`` and sigmoid into ``n3``;
``n1``/``n2`` sum their inputs and ``n3`` is the mean of its three edges, so it lies in (0, 1). A fixed
cell has one operation per edge and computes only those.

All candidates that read the same node and share a kernel shape run as one convolution whose output
channels are the concatenation of the edges' outputs; batch normalisation is per channel, so this is
exactly the per-edge computation, with fewer and larger kernels. On ReLU edges the positive mixing
weight is folded into the batch-norm affine (``w * relu(y) == relu(w * y)`` for ``w > 0``).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from monai_nasscam.networks.ops import OPS, build_op, op_names

__all__ = ["EDGES", "NASAttentionCell", "arch_parameters", "weight_parameters"]

#: the 6 edges of the cell as (source node, target node), in genotype order.
EDGES: tuple[tuple[int, int], ...] = ((0, 1), (0, 2), (1, 2), (0, 3), (1, 3), (2, 3))
OUTPUT_NODE = 3
_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


class NASAttentionCell(nn.Module):
    """The attention cell: input ``(B, in_channels, *spatial)`` -> attention map ``(B, 1, *spatial)`` in (0, 1).

    Args:
        kind: "sam" (spatial candidates) or "cam" (1-D channel candidates), see :mod:`.ops`.
        spatial_dims: dimensions of the convolutions (1 for channel attention, 2 or 3 for spatial).
        in_channels: channels of the input node ``n0``.
        ops: the 6 operation names, one per edge in :data:`EDGES` order, for a fixed cell; ``None`` builds
            a searchable cell with every candidate on every edge and architecture weights ``alpha`` of shape
            ``(6, n_candidates)`` initialised ``1e-3 * N(0, 1)``.
        hidden_channels: channels of the inner nodes ``n1`` and ``n2``.
    """

    def __init__(
        self, kind: str, spatial_dims: int, in_channels: int, ops: list[str] | None = None, hidden_channels: int = 32
    ) -> None:
        super().__init__()
        self.kind = kind
        self.candidates = op_names(kind)
        if spatial_dims not in _CONV:
            raise ValueError(f"spatial_dims must be 1, 2 or 3, got {spatial_dims}.")
        if ops is not None:
            ops = list(ops)
            if len(ops) != len(EDGES):
                raise ValueError(f"a fixed {kind} cell needs {len(EDGES)} operation names, one per edge, got {len(ops)}.")
            unknown = [o for o in ops if o not in OPS[kind]]
            if unknown:
                raise ValueError(f"unknown {kind} operation(s) {unknown}, expected names from {list(self.candidates)}.")
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.hidden_channels = hidden_channels
        self.ops = ops
        node_channels = (in_channels, hidden_channels, hidden_channels, 1)
        self.node_channels = node_channels

        self.edges = nn.ModuleList()
        for e, (s, t) in enumerate(EDGES):
            names = self.candidates if ops is None else (ops[e],)
            edge = nn.ModuleDict()
            for name in names:
                op = build_op(kind, name, spatial_dims, node_channels[s], node_channels[t])
                if op is not None:
                    edge[name] = op
            self.edges.append(edge)
        self.alpha = nn.Parameter(1e-3 * torch.randn(len(EDGES), len(self.candidates))) if ops is None else None
        self._plan = self._make_plan()

    @property
    def searchable(self) -> bool:
        return self.alpha is not None

    def _make_plan(self) -> list[tuple[list[tuple[str, list[int]]], list[int]]]:
        """Per source node: the fused groups (op name, edges using it) and the edges that are ``none``."""
        plan = []
        for s in range(OUTPUT_NODE):
            out_edges = [e for e, (src, _) in enumerate(EDGES) if src == s]
            groups = []
            for name in self.candidates:
                users = [e for e in out_edges if name in self.edges[e]]
                if users:
                    groups.append((name, users))
            nones = [e for e in out_edges if (self.ops is None or self.ops[e] == "none")]
            plan.append((groups, nones))
        return plan

    def op_weights(self) -> torch.Tensor | None:
        """``softmax(alpha)`` per edge, ``(6, n_candidates)``; ``None`` for a fixed cell."""
        return None if self.alpha is None else self.alpha.softmax(dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != self.in_channels:
            raise ValueError(f"expected {self.in_channels} input channels, got {x.shape[1]} (input shape {tuple(x.shape)}).")
        weights = self.op_weights()
        none_index = self.candidates.index("none")
        acc: list = [None, None, None, None]
        nodes = [x]
        for s, (groups, nones) in enumerate(self._plan):
            for name, users in groups:
                self._run_group(nodes[s], name, users, weights, acc)
            for e in nones:
                t = EDGES[e][1]
                if t == OUTPUT_NODE:  # sigmoid(0) = 0.5; a ReLU edge's none adds nothing
                    half = 0.5 if weights is None else 0.5 * weights[e, none_index]
                    acc[t] = half if acc[t] is None else acc[t] + half
            t = s + 1
            shape = (x.shape[0], self.node_channels[t], *x.shape[2:])
            node = acc[t]
            if node is None:
                node = x.new_zeros(shape)
            elif not isinstance(node, torch.Tensor) or node.shape != shape:
                node = x.new_zeros(shape) + node
            nodes.append(node / len([e for e in EDGES if e[1] == OUTPUT_NODE]) if t == OUTPUT_NODE else node)
        return nodes[OUTPUT_NODE]

    def _run_group(self, src: torch.Tensor, name: str, users: list[int], weights, acc: list) -> None:
        """One fused convolution + batch norm for every edge in ``users`` that applies ``name`` to ``src``."""
        index = self.candidates.index(name)
        convs = [self.edges[e][name][0] for e in users]
        norms = [self.edges[e][name][1] for e in users]
        spec = OPS[self.kind][name]
        w = convs[0].weight if len(users) == 1 else torch.cat([c.weight for c in convs])
        b = convs[0].bias if len(users) == 1 else torch.cat([c.bias for c in convs])
        y = _CONV[self.spatial_dims](src, w, b, padding=spec.padding, dilation=spec.dilation)

        gammas, betas = [], []
        for e, bn in zip(users, norms):
            fold = weights is not None and EDGES[e][1] != OUTPUT_NODE
            gammas.append(bn.weight * weights[e, index] if fold else bn.weight)
            betas.append(bn.bias * weights[e, index] if fold else bn.bias)
        y = self._batch_norm(y, norms, torch.cat(gammas), torch.cat(betas))

        start = 0
        for e, bn in zip(users, norms):
            t = EDGES[e][1]
            part = y[:, start : start + bn.num_features]
            start += bn.num_features
            if t == OUTPUT_NODE:
                part = torch.sigmoid(part)
                if weights is not None:
                    part = part * weights[e, index]
            else:
                part = torch.relu(part)
            acc[t] = part if acc[t] is None else acc[t] + part

    def _batch_norm(self, y: torch.Tensor, norms: list[nn.Module], gamma: torch.Tensor, beta: torch.Tensor):
        """Batch norm of the fused channels, keeping each edge's running statistics up to date."""
        first = norms[0]
        use_batch_stats = self.training or first.running_mean is None
        if len(norms) == 1:
            running_mean, running_var = first.running_mean, first.running_var
        else:
            running_mean = torch.cat([n.running_mean for n in norms]) if first.running_mean is not None else None
            running_var = torch.cat([n.running_var for n in norms]) if first.running_var is not None else None
        update = self.training and running_mean is not None
        if update:
            first.num_batches_tracked.add_(1)
        momentum = first.momentum if first.momentum is not None else 1.0 / float(first.num_batches_tracked)
        out = F.batch_norm(y, running_mean, running_var, gamma, beta, use_batch_stats, momentum, first.eps)
        if update and len(norms) > 1:
            with torch.no_grad():
                start = 0
                for n in norms:
                    stop = start + n.num_features
                    n.running_mean.copy_(running_mean[start:stop])
                    n.running_var.copy_(running_var[start:stop])
                    if n is not first:
                        n.num_batches_tracked.add_(1)
                    start = stop
        return out


def arch_parameters(module: nn.Module) -> list[nn.Parameter]:
    """The architecture weights (``alpha``) of every searchable cell in ``module``, each shared one once."""
    seen: dict[int, nn.Parameter] = {}
    for m in module.modules():
        if isinstance(m, NASAttentionCell) and m.alpha is not None:
            seen.setdefault(id(m.alpha), m.alpha)
    return list(seen.values())


def weight_parameters(module: nn.Module) -> list[nn.Parameter]:
    """Every parameter of ``module`` that is not an architecture weight."""
    arch = {id(p) for p in arch_parameters(module)}
    return [p for p in module.parameters() if id(p) not in arch]
