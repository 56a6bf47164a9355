"""The 4-node NAS-SCAM attention cell (docs/method.md §1.1), searchable or fixed.

Nodes: ``n0`` is the input, ``n1`` and ``n2`` have ``hidden_channels`` channels, ``n3`` has one channel.
Every earlier node feeds every later one (:data:`EDGES`). An edge is a mixed operation
``sum_o softmax(alpha_edge)[o] * act(BN(op_o(x)))`` with ReLU into ``n1``/``n2`` and sigmoid into ``n3``;
``n1``/``n2`` sum their inputs and ``n3`` is the mean of its three edges, so it lies in (0, 1). A fixed
cell has one operation per edge and computes only those.

The definition is written out plainly in :meth:`NASAttentionCell.reference_forward` (one mixed edge at a
time, :meth:`NASAttentionCell.mixed_edge`). :meth:`NASAttentionCell.forward` computes the same function faster:
all candidates that read the same node and share a kernel shape run as one convolution whose output
channels are the concatenation of the edges' outputs; batch normalisation is per channel, so this is
exactly the per-edge computation, with fewer and larger kernels. On ReLU edges the positive mixing
weight is folded into the batch-norm affine (``w * relu(y) == relu(w * y)`` for ``w > 0``). On CPU a spatial cell
convolves in the channels-last layout (oneDNN's faster path there). The two are tested equal. For inference,
:mod:`monai_nasscam.networks.folded_cell` folds a fixed cell's batch norms into its convolutions.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from monai_nasscam.networks.ops import OPS, build_op, op_names

__all__ = ["EDGES", "edge_label", "OUTPUT_NODE", "OUTPUT_FAN_IN", "CONV_FUNCTIONS", "NASAttentionCell", "arch_parameters", "weight_parameters"]

#: the 6 edges of the cell as (source node, target node), in genotype order.
EDGES: tuple[tuple[int, int], ...] = ((0, 1), (0, 2), (1, 2), (0, 3), (1, 3), (2, 3))
#: the one-channel output node; ``n1`` .. ``OUTPUT_NODE - 1`` are the inner (hidden) nodes.
OUTPUT_NODE = 3
#: the output node is the mean of its incoming (sigmoid) edges, so it lies in (0, 1).
OUTPUT_FAN_IN = sum(t == OUTPUT_NODE for _, t in EDGES)
#: the functional convolution for each ``spatial_dims``.
CONV_FUNCTIONS = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def edge_label(e: int) -> str:
    """The name of edge ``e`` in logs, figures and TensorBoard tags: ``"n0->n1"`` for ``EDGES[e] == (0, 1)``."""
    s, t = EDGES[e]
    return f"n{s}->n{t}"


class _Group(NamedTuple):
    """A fused convolution: its (edge, op name) entries in output-channel order and its kernel geometry."""

    entries: list[tuple[int, str]]
    kernel: int
    dilation: int
    padding: int


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
        if spatial_dims not in CONV_FUNCTIONS:
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
        self.temperature = 1.0
        #: mixing weights ``(6, n_candidates)`` that replace ``softmax(alpha / temperature)`` when set (architecture
        #: selection by perturbation: an op masked out, decided edges one-hot; :mod:`.selection`); ``None``: the alphas'.
        self.weight_override: torch.Tensor | None = None
        self._plan = self._make_plan()

    @property
    def searchable(self) -> bool:
        return self.alpha is not None

    def _make_plan(self) -> list[tuple[list[_Group], list[int]]]:
        """Per source node: its fused convolutions and the outgoing edges that are ``none``.

        Spatial candidates into the inner nodes are fused per operation (one kernel shape each, ``2 *
        hidden_channels`` or ``hidden_channels`` outputs). The one-channel candidates into the output node are
        fused per dilation instead, each placed inside the largest kernel of its dilation (conv1, conv3, conv5
        as one 5x5 convolution with 3 outputs; dil_conv3, dil_conv5 as one 5x5 dilation-2 convolution with 2):
        oneDNN runs a convolution with one output channel, or with one more than a multiple of 16, at a
        fraction of its usual rate, so a few more multiply-adds in one kernel cost less than the one-channel
        kernels or a 65-channel one (bench/README.md). Channel candidates act on a pooled vector, so all of them
        are fused into one convolution whose kernel holds every candidate's taps: a few wider kernels cost
        nothing there and save many tiny launches.
        """
        specs = OPS[self.kind]
        plan = []
        for s in range(OUTPUT_NODE):
            out_edges = [e for e, (src, _) in enumerate(EDGES) if src == s]
            entries = [(e, name) for e in out_edges for name in self.candidates if name in self.edges[e]]
            if self.kind == "cam":
                batches = [entries] if entries else []
            else:
                inner = [(e, n) for e, n in entries if EDGES[e][1] != OUTPUT_NODE]
                output = [(e, n) for e, n in entries if EDGES[e][1] == OUTPUT_NODE]
                batches = [[(e, n) for e, n in inner if n == name] for name in self.candidates]
                dilations = sorted({specs[n].dilation for _, n in output})
                batches += [[(e, n) for e, n in output if specs[n].dilation == d] for d in dilations]
            groups = [self._group(batch) for batch in batches if batch]
            nones = [e for e in out_edges if self.ops is None or self.ops[e] == "none"]
            plan.append((groups, nones))
        return plan

    def _group(self, entries: list[tuple[int, str]]) -> _Group:
        """Order a fused convolution's outputs: ReLU edges by (target, op), then the sigmoid edges."""
        specs = OPS[self.kind]
        entries = sorted(entries, key=lambda en: (EDGES[en[0]][1] == OUTPUT_NODE, EDGES[en[0]][1], self.candidates.index(en[1])))
        names = {n for _, n in entries}
        if len(names) == 1:
            spec = specs[entries[0][1]]
            return _Group(entries, spec.kernel_size, spec.dilation, spec.padding)
        dilations = {specs[n].dilation for n in names}
        if len(dilations) == 1:  # one dilation: the largest kernel holds the others' taps
            dilation = dilations.pop()
            kernel = max(specs[n].kernel_size for n in names)
            return _Group(entries, kernel, dilation, dilation * (kernel - 1) // 2)
        footprint = max(specs[n].dilation * (specs[n].kernel_size - 1) + 1 for n in names)
        return _Group(entries, footprint, 1, footprint // 2)

    def op_weights(self) -> torch.Tensor | None:
        """``softmax(alpha)`` per edge, ``(6, n_candidates)``; ``None`` for a fixed cell (what genotypes record)."""
        return None if self.alpha is None else self.alpha.softmax(dim=-1)

    def mixture_weights(self) -> torch.Tensor | None:
        """The weights the forward pass mixes with: ``softmax(alpha / temperature)``, ``(6, n_candidates)``.

        ``temperature`` (a float attribute, 1.0 unless a search anneals it with
        :class:`monai_nasscam.handlers.AlphaTemperatureScheduler`) sharpens the mixture below 1 and is equal to
        :meth:`op_weights` at 1; the derived operation, the argmax, does not depend on it. ``weight_override``, when
        set, is returned instead (no gradient reaches the alphas then).
        """
        if self.weight_override is not None and self.alpha is not None:
            return self.weight_override
        if self.alpha is None or self.temperature == 1.0:
            return self.op_weights()
        return (self.alpha / self.temperature).softmax(dim=-1)

    def mixed_edge(self, e: int, x: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        """Edge ``e`` as defined: ``sum_o weights[e, o] * act(BN(op_o(x)))`` over its candidates.

        ``act`` is ReLU into the inner nodes and sigmoid into the output node; ``none`` is zero before the
        activation (so it adds 0 on a ReLU edge and 0.5 on a sigmoid edge). A fixed cell's edge is its one op.

        Args:
            e: the edge index in :data:`EDGES` order.
            x: the edge's source node, ``(B, C_source, *spatial)``.
            weights: ``softmax(alpha)`` of shape ``(6, n_candidates)``; ``None`` for a fixed cell.

        Returns:
            ``(B, C_target, *spatial)``, the edge's contribution to its target node.
        """
        target = EDGES[e][1]
        act = torch.sigmoid if target == OUTPUT_NODE else torch.relu
        shape = (x.shape[0], self.node_channels[target], *x.shape[2:])
        names = self.candidates if self.ops is None else (self.ops[e],)
        out = x.new_zeros(shape)
        for name in names:
            y = act(self.edges[e][name](x)) if name in self.edges[e] else act(x.new_zeros(shape))
            out = out + (y if weights is None else weights[e, self.candidates.index(name)] * y)
        return out

    def reference_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The cell as defined (docs/method.md §1.1), one mixed edge at a time: slow, for reading and testing.

        Node ``t`` sums its incoming mixed edges; the output node is their mean. :meth:`forward` computes the same
        function with fused convolutions (tested equal).

        Args:
            x: the input node ``n0``, ``(B, in_channels, *spatial)``.

        Returns:
            the attention map ``(B, 1, *spatial)`` in (0, 1).
        """
        weights = self.mixture_weights()
        nodes = [x]
        for t in range(1, OUTPUT_NODE + 1):
            nodes.append(sum(self.mixed_edge(e, nodes[s], weights) for e, (s, d) in enumerate(EDGES) if d == t))
        return nodes[OUTPUT_NODE] / OUTPUT_FAN_IN

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The fused execution of :meth:`reference_forward`: ``(B, in_channels, *spatial)`` -> ``(B, 1, *spatial)``."""
        if not torch.jit.is_tracing() and x.shape[1] != self.in_channels:  # an input check: not traced (see NASSCAMUNet)
            raise ValueError(f"expected {self.in_channels} input channels, got {x.shape[1]} (input shape {tuple(x.shape)}).")
        weights = self.mixture_weights()
        none_index = self.candidates.index("none")
        acc: list = [None] * (OUTPUT_NODE + 1)
        nodes = [x]
        layout = _channels_last_format(x) if self.kind == "sam" else None
        for s, (groups, nones) in enumerate(self._plan):
            src = nodes[s] if layout is None or not groups else nodes[s].contiguous(memory_format=layout)
            for group in groups:
                self._run_group(src, group, weights, acc)
            for e in nones:
                if EDGES[e][1] == OUTPUT_NODE:  # sigmoid(0) = 0.5; a ReLU edge's none adds nothing
                    half = 0.5 if weights is None else 0.5 * weights[e, none_index]
                    acc[OUTPUT_NODE] = half if acc[OUTPUT_NODE] is None else acc[OUTPUT_NODE] + half
            t = s + 1
            shape = (x.shape[0], self.node_channels[t], *x.shape[2:])
            node = acc[t]
            if node is None:
                node = x.new_zeros(shape)
            elif not isinstance(node, torch.Tensor) or node.dim() != x.dim():  # only none edges: a scalar
                node = x.new_zeros(shape) + node
            nodes.append(node)
        return nodes[OUTPUT_NODE] / OUTPUT_FAN_IN

    def _run_group(self, src: torch.Tensor, group: _Group, weights: torch.Tensor | None, acc: list) -> None:
        """One fused convolution + batch norm for ``group``'s (edge, op) entries, added into the target nodes."""
        modules = [self.edges[e][name] for e, name in group.entries]
        convs, norms = [m[0] for m in modules], [m[1] for m in modules]
        y = CONV_FUNCTIONS[self.spatial_dims](
            src, self._fused_kernel(group, convs), _cat([c.bias for c in convs]), padding=group.padding, dilation=group.dilation
        )
        targets = [EDGES[e][1] for e, _ in group.entries]
        n_relu = sum(t != OUTPUT_NODE for t in targets)
        if n_relu == 0:
            y = y.contiguous()  # 2-3 channels: batch norm of so few channels is slow in the channels-last layout

        gammas, betas, sigmoid_weights = [], [], []
        for (e, name), bn in zip(group.entries, norms):
            w = None if weights is None else weights[e, self.candidates.index(name)]
            if w is not None and EDGES[e][1] != OUTPUT_NODE:
                gammas.append(bn.weight * w)
                betas.append(bn.bias * w)
            else:
                gammas.append(bn.weight)
                betas.append(bn.bias)
                if w is not None:
                    sigmoid_weights.append(w)
        y = self._batch_norm(y, norms, _cat(gammas), _cat(betas))

        # split (not slicing): its backward concatenates the gradients instead of zero-filling one buffer per slice
        relu_part, sigmoid_part = _split(y, [n_relu * self.hidden_channels, len(targets) - n_relu])
        if relu_part is not None:
            relu_targets = sorted(set(targets[:n_relu]))
            counts = [targets.count(t) for t in relu_targets]
            parts = _split(torch.relu(relu_part), [c * self.hidden_channels for c in counts])
            for t, count, part in zip(relu_targets, counts, parts):
                if count > 1:
                    part = part.unflatten(1, (count, self.hidden_channels)).sum(1)
                acc[t] = part if acc[t] is None else acc[t] + part
        if sigmoid_part is not None:
            sig = torch.sigmoid(sigmoid_part)
            if sigmoid_weights:
                sig = sig * torch.stack(sigmoid_weights).view(1, -1, *([1] * (sig.ndim - 2)))
            if len(targets) - n_relu > 1:  # the channels of sigmoid_part, known without reading a (traced) shape
                sig = sig.sum(1, keepdim=True)
            acc[OUTPUT_NODE] = sig if acc[OUTPUT_NODE] is None else acc[OUTPUT_NODE] + sig

    def _fused_kernel(self, group: _Group, convs: list[nn.Module]) -> torch.Tensor:
        """The convolution weights of a group; candidates of other shapes are placed inside the group's kernel."""
        if all(c.kernel_size[0] == group.kernel and c.dilation[0] == group.dilation for c in convs):
            return _cat([c.weight for c in convs])
        out_channels = sum(c.out_channels for c in convs)
        kernel = convs[0].weight.new_zeros(out_channels, convs[0].in_channels, *([group.kernel] * self.spatial_dims))
        row = 0
        for c in convs:
            k, step = c.kernel_size[0], c.dilation[0] // group.dilation  # the op's tap spacing on the group's grid
            start = group.kernel // 2 - step * (k - 1) // 2
            taps = (slice(start, start + step * (k - 1) + 1, step),) * self.spatial_dims
            kernel[(slice(row, row + c.out_channels), slice(None)) + taps] = c.weight
            row += c.out_channels
        return kernel

    def _batch_norm(self, y: torch.Tensor, norms: list[nn.Module], gamma: torch.Tensor, beta: torch.Tensor):
        """Batch norm of the fused channels, keeping each edge's running statistics up to date."""
        first = norms[0]
        tracking = first.running_mean is not None
        running_mean = _cat([n.running_mean for n in norms]) if tracking else None
        running_var = _cat([n.running_var for n in norms]) if tracking else None
        update = self.training and tracking
        if update:
            first.num_batches_tracked.add_(1)
        momentum = first.momentum if first.momentum is not None else 1.0 / float(first.num_batches_tracked)
        out = F.batch_norm(y, running_mean, running_var, gamma, beta, self.training or not tracking, momentum, first.eps)
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


def _channels_last_format(x: torch.Tensor) -> torch.memory_format | None:
    """The channels-last layout the spatial cell convolves ``x`` in on CPU (``None``: keep the layout).

    On CPU, oneDNN convolves a channels-last tensor 1.5 to 2.5 times as fast as the default layout, forward and
    backward, in bfloat16 and float32 alike (bench/README.md, "Channels-last spatial cell"). On other devices nothing is
    changed: it was not measured there.
    """
    if x.device.type != "cpu" or x.ndim not in (4, 5):
        return None
    return torch.channels_last if x.ndim == 4 else torch.channels_last_3d


def _cat(tensors: list[torch.Tensor]) -> torch.Tensor:
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors)


def _split(x: torch.Tensor, sizes: list[int]) -> list[torch.Tensor | None]:
    """``x`` split along channels into ``sizes`` (``None`` for a size 0), without a copy when there is one part."""
    nonzero = [s for s in sizes if s]
    parts = iter([x] if len(nonzero) == 1 else list(x.split(nonzero, dim=1)))
    return [next(parts) if s else None for s in sizes]


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
