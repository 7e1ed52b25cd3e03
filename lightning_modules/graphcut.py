"""Multi-label graph cuts on voxel grids: α-β swap (Boykov, Veksler & Zabih 2001) with PyMaxflow's max-flow.

An energy is ``E(f) = sum_x D_x(f_x) + sum_{(x,y) in N} V_xy(f_x, f_y)`` over the nodes of a grid region (a region of
interest plus, optionally, a frozen shell around it), with unary costs ``D`` (n, L) and a pairwise cost that a
subclass of ``PairwiseEnergy`` computes for arrays of edges and labels at once (``V_xy(a, a) = 0``; V may
depend on the order of (a, b), as SMDGC's shape weight does). An α-β swap move re-labels, among the nodes that
carry α or β, each as α or β by one s-t min cut (exact for the move, since every V >= 0 makes the binary
problem submodular); the swap cycles over all label pairs until a cycle lowers the energy no more.

``confident`` (SMDGC's "deep-learned swap", Eq. 11) keeps out of a move the nodes whose probabilities favour
their current label (α or β) by more than ``tau``: they keep their label and enter the cut only through their
edges to the free nodes, so the graph is smaller.

PyMaxflow's conventions: a node in the sink segment (``get_grid_segments`` True) takes β (t = 1, Eq. 10);
``add_tedge(i, cap_source, cap_sink)``: ``cap_source`` is paid when i takes β, ``cap_sink`` when it takes α;
``add_edges(i, j, cap, rev_cap)``: ``cap`` is paid when (i, j) = (α, β), ``rev_cap`` when (β, α).
"""
from __future__ import annotations

import itertools
import time
from typing import Callable, Optional, Sequence

import numpy as np


def half_neighbourhood(ndim: int, connectivity: Optional[int] = None) -> list[tuple[int, ...]]:
    """Offsets to half of the neighbours (each undirected edge once): 3D full connectivity gives the 13 of the
    26-neighbourhood. ``connectivity`` (1..ndim) keeps offsets with at most that many non-zero steps (1: 6-/4-)."""
    connectivity = ndim if connectivity is None else connectivity
    offsets = []
    for offset in itertools.product((-1, 0, 1), repeat=ndim):
        nonzero = [o for o in offset if o]
        if nonzero and nonzero[0] > 0 and len(nonzero) <= connectivity:  # first non-zero step positive: one of +-o
            offsets.append(offset)
    return offsets


def grid_edges(shape: Sequence[int], nodes: np.ndarray, spacing: Optional[Sequence[float]] = None,
               connectivity: Optional[int] = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Edges between neighbouring voxels that are both in the boolean ``nodes`` mask (of ``shape``).

    Returns ``(i, j, distance)``: node indices into ``np.flatnonzero(nodes)`` (C order) and the Euclidean distance
    between the two voxel centres in units of ``spacing``.
    """
    shape = tuple(int(s) for s in shape)
    spacing = np.ones(len(shape)) if spacing is None else np.asarray(spacing, dtype=np.float64)
    index = np.full(shape, -1, dtype=np.int64)
    index[nodes] = np.arange(int(nodes.sum()))
    sources, targets, distances = [], [], []
    for offset in half_neighbourhood(len(shape), connectivity):
        source = tuple(slice(max(0, -o), s - max(0, o)) for o, s in zip(offset, shape))
        target = tuple(slice(max(0, o), s - max(0, -o)) for o, s in zip(offset, shape))
        a, b = index[source].ravel(), index[target].ravel()
        keep = (a >= 0) & (b >= 0)
        sources.append(a[keep])
        targets.append(b[keep])
        distances.append(np.full(int(keep.sum()), float(np.sqrt(((np.asarray(offset) * spacing) ** 2).sum()))))
    return np.concatenate(sources), np.concatenate(targets), np.concatenate(distances)


class PairwiseEnergy:
    """A labelling energy on ``n`` nodes with ``L`` labels: unary costs and edge-wise pairwise costs.

    Subclasses implement ``pair_cost(edges, a, b)``: the costs V of the edges ``edges`` (indices into
    ``self.i``/``self.j``) when node i has label ``a`` and node j label ``b`` (arrays, or scalars broadcast);
    it must be 0 where ``a == b`` and >= 0 elsewhere.
    """

    def __init__(self, unary: np.ndarray, i: np.ndarray, j: np.ndarray) -> None:
        self.unary = np.asarray(unary, dtype=np.float64)
        self.i, self.j = np.asarray(i, dtype=np.int64), np.asarray(j, dtype=np.int64)

    @property
    def num_nodes(self) -> int:
        return self.unary.shape[0]

    @property
    def num_labels(self) -> int:
        return self.unary.shape[1]

    def pair_cost(self, edges: np.ndarray, a, b) -> np.ndarray:
        raise NotImplementedError

    def energy(self, labels: np.ndarray) -> float:
        """E(f) = sum of unary costs + sum of pairwise costs over all edges."""
        every = np.arange(len(self.i))
        data = self.unary[np.arange(self.num_nodes), labels].sum()
        return float(data + self.pair_cost(every, labels[self.i], labels[self.j]).sum())

    def delta(self, old: np.ndarray, new: np.ndarray) -> float:
        """E(new) - E(old), from the changed nodes and the edges that touch them only."""
        changed = old != new
        if not changed.any():
            return 0.0
        nodes = np.flatnonzero(changed)
        edges = np.flatnonzero(changed[self.i] | changed[self.j])
        data = self.unary[nodes, new[nodes]].sum() - self.unary[nodes, old[nodes]].sum()
        pairs = (self.pair_cost(edges, new[self.i[edges]], new[self.j[edges]])
                 - self.pair_cost(edges, old[self.i[edges]], old[self.j[edges]]))
        return float(data + pairs.sum())


def swap_move(energy: PairwiseEnergy, labels: np.ndarray, alpha: int, beta: int,
              movable: Optional[np.ndarray] = None) -> tuple[np.ndarray, int]:
    """The optimal α-β swap of ``labels`` among the ``movable`` nodes (default all) that carry α or β.

    Returns the new labels and the number of free nodes of the cut. The other nodes keep their labels.
    """
    import maxflow

    in_move = (labels == alpha) | (labels == beta)
    if movable is not None:
        in_move &= movable
    free_nodes = np.flatnonzero(in_move)
    if free_nodes.size == 0:
        return labels, 0
    local = np.full(energy.num_nodes, -1, dtype=np.int64)
    local[free_nodes] = np.arange(free_nodes.size)
    cost_alpha = energy.unary[free_nodes, alpha].copy()
    cost_beta = energy.unary[free_nodes, beta].copy()
    free_i, free_j = in_move[energy.i], in_move[energy.j]
    # edges from a free node to a node whose label stays: unary terms of the free node
    for one_free, free_first in ((free_i & ~free_j, True), (free_j & ~free_i, False)):
        edges = np.flatnonzero(one_free)
        if edges.size == 0:
            continue
        if free_first:
            node, other = energy.i[edges], labels[energy.j[edges]]
            to_alpha, to_beta = energy.pair_cost(edges, alpha, other), energy.pair_cost(edges, beta, other)
        else:
            node, other = energy.j[edges], labels[energy.i[edges]]
            to_alpha, to_beta = energy.pair_cost(edges, other, alpha), energy.pair_cost(edges, other, beta)
        np.add.at(cost_alpha, local[node], to_alpha)
        np.add.at(cost_beta, local[node], to_beta)
    both = np.flatnonzero(free_i & free_j)
    graph = maxflow.Graph[float](int(free_nodes.size), int(both.size))
    nodes = graph.add_nodes(int(free_nodes.size))
    if both.size:
        graph.add_edges(local[energy.i[both]], local[energy.j[both]],
                        energy.pair_cost(both, alpha, beta), energy.pair_cost(both, beta, alpha))
    # shift each node's two costs by their minimum: same cut, smaller capacities
    shift = np.minimum(cost_alpha, cost_beta)
    graph.add_grid_tedges(np.asarray(nodes), cost_beta - shift, cost_alpha - shift)
    graph.maxflow()
    takes_beta = graph.get_grid_segments(np.asarray(nodes))
    new = labels.copy()
    new[free_nodes] = np.where(takes_beta, beta, alpha)
    return new, int(free_nodes.size)


ConfidentFn = Callable[[int, int, np.ndarray], np.ndarray]


def alpha_beta_swap(energy: PairwiseEnergy, labels: np.ndarray, frozen: Optional[np.ndarray] = None,
                    confident: Optional[ConfidentFn] = None, max_cycles: int = 5,
                    labels_to_swap: Optional[Sequence[int]] = None) -> tuple[np.ndarray, dict]:
    """Minimise ``energy`` by α-β swap moves from ``labels``.

    Args:
        frozen: nodes that never change (e.g. the shell around a region of interest).
        confident: ``confident(alpha, beta, labels)`` -> boolean (n,) of the nodes kept out of this move
            (SMDGC's deep-learned swap); None: every α/β node is free.
        max_cycles: cycles over all label pairs; stops earlier after a cycle without an energy decrease.
        labels_to_swap: the labels whose pairs are visited (default all).

    Returns the labels and ``{"energies": energy after each accepted or rejected move (first: the start),
    "moves", "cycles", "free_nodes" (summed over moves), "seconds"}``. A move is kept only when it lowers the
    energy, so the energies never increase.
    """
    start = time.perf_counter()
    labels = np.asarray(labels, dtype=np.int64).copy()
    movable = None if frozen is None else ~np.asarray(frozen, bool)
    pairs = list(itertools.combinations(range(energy.num_labels) if labels_to_swap is None else labels_to_swap, 2))
    current = energy.energy(labels)
    energies, free_total, cycles = [current], 0, 0
    for cycles in range(1, max_cycles + 1):
        improved = False
        for alpha, beta in pairs:
            allowed = movable
            if confident is not None:
                keep = confident(alpha, beta, labels)
                allowed = ~keep if allowed is None else allowed & ~keep
            proposal, free = swap_move(energy, labels, alpha, beta, allowed)
            free_total += free
            if free == 0:
                continue
            value = current + energy.delta(labels, proposal)
            if value < current - 1e-9 * max(1.0, abs(current)):
                labels, current, improved = proposal, value, True
            energies.append(current)
        if not improved:
            break
    return labels, {"energies": energies, "moves": len(energies) - 1, "cycles": cycles, "free_nodes": free_total,
                    "seconds": time.perf_counter() - start}


def confident_nodes(probabilities: np.ndarray, tau: float) -> ConfidentFn:
    """SMDGC's deep-learned swap (Eq. 11, symmetric form): in move (α, β), a node labelled α with
    P(α) - P(β) > tau, or labelled β with P(β) - P(α) > tau, keeps its label (stays out of the cut).

    ``probabilities`` is (n, L). Only nodes whose current label is the confident one are kept, so the current
    labelling stays feasible and the move never raises the energy (Eq. 11 as printed would force a label).
    """
    def confident(alpha: int, beta: int, labels: np.ndarray) -> np.ndarray:
        margin = probabilities[:, alpha] - probabilities[:, beta]
        return ((labels == alpha) & (margin > tau)) | ((labels == beta) & (-margin > tau))

    return confident
