"""Inter-pixel pairs, affinities from a class-boundary map, and the random walk (docs/method.md#random-walk).

The multi-stage path refines seeds with IRN's random walk (Ahn, Cho and Kwak, CVPR 2019):
a network predicts a class-boundary map B at stride 4; two pixels within `radius` of each
other get the affinity a = 1 - max(B on the straight path between them); the seed scores
are then propagated with the transition matrix built from a ** beta.

Conventions taken from IRN so that training pairs and inference pairs are the ones it uses:
- Directions: every offset (dy, dx) with 0 < dy^2 + dx^2 < radius^2 in the half plane
  dy > 0 or (dy == 0 and dx > 0); the other half comes from symmetry.
- Path of an offset: the grid points of the bounding box of (0, 0) and (dy, dx) whose
  distance to the line through both is below one pixel (both ends included).
- Training pairs: the sources are the pixels of the crop rows [0, h - f), columns [f, w - f)
  with f = radius - 1, so that every destination lies inside the grid; pairs are (D, S)
  arrays over directions x sources.
- Transition matrix: A (affinities ** beta, self loops 1, symmetric), T = A D^-1 with the
  column sums D; the walk is x @ T ** (2 ** exp_times).

Public API:
    pair_directions(radius)                       -> (D, 2) int64 offsets
    direction_path(dy, dx)                         -> (L, 2) int64 offsets of the path
    PairGrid(radius, size)                         pairs of an (h, w) grid (training layout)
        .affinity(edge)                            (B, h, w) -> (B, D, S)
        .pair_labels(labels, ignore_index)         (B, h, w) -> bg_pos, fg_pos, neg (B, D, S)
    sparse_affinity(edge, radius)                  all in-image pairs of one (h, w) map
    dense_affinity(edge, radius)                   (N, N) affinity with self loops (small maps)
    transition_matrix(affinity, beta, exp_times)   IRN's dense T ** (2 ** exp_times)
    random_walk(scores, edge, ...)                 (K, h, w) -> (K, h, w) propagated scores
    scores_to_stride(seed, stride)                 (K, H, W) -> (K, ceil(H/s), ceil(W/s))
    random_walk_planes(seed, edge, ...)            (K, H, W) seed -> (K + 1, H, W) scores, background first
    random_walk_labels(seed, keys, edge, ...)      (K, H, W) seed -> (H, W) class indices
    walk_keys(keys, k)                             class index of each of those planes
"""

import contextlib
import math
import warnings

import numpy as np
import torch
import torch.nn.functional as F

# IRN's inference settings (run_sample.py defaults).
DEFAULT_RADIUS = 5
DEFAULT_BETA = 10
DEFAULT_EXP_TIMES = 8
DEFAULT_BG_SCORE = 0.25
STRIDE = 4


def pair_directions(radius):
    """The half-plane offsets within `radius`, in IRN's order: (0, 1..r-1), then row by row.

    Returns int64 (D, 2) of (dy, dx); D = 34 for radius 5 and 152 for radius 10.
    """
    radius = _check_radius(radius)
    offsets = [(0, dx) for dx in range(1, radius)]
    offsets += [
        (dy, dx) for dy in range(1, radius) for dx in range(-radius + 1, radius) if dy * dy + dx * dx < radius * radius
    ]
    return np.asarray(offsets, dtype=np.int64).reshape(-1, 2)


def direction_path(dy, dx):
    """Grid offsets on the straight path from (0, 0) to (dy, dx), both ends included.

    A point (y, x) of the bounding box belongs to the path when its distance to the line through
    the two ends is below 1, i.e. (dy * x - dx * y) ** 2 < dy ** 2 + dx ** 2.
    Returns int64 (L, 2).
    """
    ys = np.arange(min(0, dy), max(0, dy) + 1)
    xs = np.arange(min(0, dx), max(0, dx) + 1)
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    inside = (dy * xx - dx * yy) ** 2 < dy * dy + dx * dx
    return np.stack([yy[inside], xx[inside]], axis=1).astype(np.int64)


def _check_radius(radius):
    if int(radius) != radius or radius < 2:
        raise ValueError(f"radius must be an integer >= 2, got {radius!r}")
    return int(radius)


class PairGrid:
    """All training pairs of an (h, w) grid within `radius` (IRN's layout, module docstring).

    Attributes: radius, size (h, w), margin f = radius - 1, directions (D, 2) int64,
    paths (list of D (L_d, 2) arrays), crop (hc, wc) = (h - f, w - 2 f), num_sources S = hc * wc.
    Pair (d, s): source s = (i, f + j) for s = i * wc + j, destination = source + directions[d].
    """

    def __init__(self, radius, size):
        self.radius = _check_radius(radius)
        self.size = (int(size[0]), int(size[1]))
        self.margin = self.radius - 1
        self.crop = (self.size[0] - self.margin, self.size[1] - 2 * self.margin)
        if self.crop[0] < 1 or self.crop[1] < 1:
            raise ValueError(
                f"a {self.size[0]}x{self.size[1]} grid is too small for radius "
                f"{self.radius}: it needs at least {self.margin + 1} rows and "
                f"{2 * self.margin + 1} columns"
            )
        self.directions = pair_directions(self.radius)
        self.paths = [direction_path(int(dy), int(dx)) for dy, dx in self.directions]
        self.num_sources = self.crop[0] * self.crop[1]

    def _shifted(self, x, dy, dx):
        """x (B, h, w) -> (B, hc, wc): the value at source + (dy, dx) for every source."""
        hc, wc = self.crop
        f = self.margin
        return x[:, dy : dy + hc, f + dx : f + dx + wc]

    def _check_grid(self, x, what):
        if x.dim() == 4 and x.shape[1] == 1:
            x = x[:, 0]
        if x.dim() != 3 or tuple(x.shape[1:]) != self.size:
            raise ValueError(
                f"{what} must be (B, {self.size[0]}, {self.size[1]}) or "
                f"(B, 1, {self.size[0]}, {self.size[1]}), got {tuple(x.shape)}"
            )
        return x

    def affinity(self, edge):
        """Affinity 1 - max(edge on the path) of every pair.

        Args:
            edge: (B, h, w) or (B, 1, h, w) boundary probabilities in [0, 1].
        Returns:
            (B, D, S), differentiable with respect to `edge` (the gradient goes to the path's
            maximum, as a max-pool does).
        """
        edge = self._check_grid(edge, "edge")
        out = []
        for path in self.paths:
            values = torch.stack([self._shifted(edge, int(oy), int(ox)) for oy, ox in path], dim=1)
            out.append(1 - values.max(dim=1).values)
        return torch.stack(out, dim=1).flatten(2)

    def pair_labels(self, labels, ignore_index=255):
        """Relation labels of every pair from a label map on this grid (IRN's rules).

        Args:
            labels: integer (B, h, w) or (B, 1, h, w): 0 background, >0 class, ignore_index.
        Returns:
            (bg_pos, fg_pos, neg), each float32 (B, D, S) in {0, 1}: both ends background;
            both ends the same foreground class; different labels. Pairs touching an ignored
            pixel are in none of the three.
        """
        labels = self._check_grid(labels, "labels")
        source = self._shifted(labels, 0, 0).flatten(1).unsqueeze(1)  # (B, 1, S)
        target = torch.stack([self._shifted(labels, int(dy), int(dx)) for dy, dx in self.directions], dim=1).flatten(
            2
        )  # (B, D, S)
        valid = (source != ignore_index) & (target != ignore_index)
        same = (source == target) & valid
        bg_pos = same & (source == 0)
        fg_pos = same & (source != 0)
        neg = valid & (source != target)
        return bg_pos.float(), fg_pos.float(), neg.float()


def sparse_affinity(edge, radius=DEFAULT_RADIUS):
    """Affinities of all in-image pairs of one boundary map (inference layout).

    The map is padded with boundary 1 on the left, right and bottom so that every pixel is a
    source of PairGrid; pairs whose destination falls in the padding are dropped.
    Args:
        edge: (h, w) boundary probabilities.
    Returns:
        (src, dst, aff): int64 (P,), int64 (P,), (P,) in edge's dtype; flat indices r * w + c
        with each unordered pair listed once.
    """
    if edge.dim() != 2:
        raise ValueError(f"edge must be (h, w), got {tuple(edge.shape)}")
    h, w = edge.shape
    f = _check_radius(radius) - 1
    padded = F.pad(edge[None, None], (f, f, 0, f), value=1.0)[0]
    grid = PairGrid(radius, padded.shape[1:])
    aff = grid.affinity(padded)[0]  # (D, h*w)
    rows = torch.arange(h, device=edge.device).view(h, 1).expand(h, w).reshape(-1)
    cols = torch.arange(w, device=edge.device).view(1, w).expand(h, w).reshape(-1)
    dirs = torch.as_tensor(grid.directions, device=edge.device)
    dst_r = rows[None] + dirs[:, :1]
    dst_c = cols[None] + dirs[:, 1:]
    inside = (dst_r < h) & (dst_c >= 0) & (dst_c < w)
    src = (rows * w + cols)[None].expand_as(dst_r)
    return src[inside], (dst_r * w + dst_c)[inside], aff[inside]


def dense_affinity(edge, radius=DEFAULT_RADIUS):
    """(N, N) symmetric affinity matrix of an (h, w) map, N = h * w, ones on the diagonal.

    Entries of pairs farther apart than `radius` are 0. Memory is N^2: small maps only.
    """
    h, w = edge.shape
    n = h * w
    src, dst, aff = sparse_affinity(edge, radius)
    dense = torch.zeros(n, n, dtype=edge.dtype, device=edge.device)
    dense[src, dst] = aff
    dense[dst, src] = aff
    dense.fill_diagonal_(1.0)
    return dense


def transition_matrix(affinity, beta=DEFAULT_BETA, exp_times=DEFAULT_EXP_TIMES):
    """IRN's dense transition matrix T ** (2 ** exp_times), T = A ** beta / column sums.

    Args:
        affinity: (N, N) symmetric affinity with self loops (dense_affinity).
    Returns:
        (N, N); scores x (K, N) are propagated as x @ result.
    """
    scaled = affinity.pow(beta)
    trans = scaled / scaled.sum(dim=0, keepdim=True)
    for _ in range(exp_times):
        trans = trans @ trans
    return trans


def _propagate_sparse(x, edge, radius, beta, steps):
    """x (K, N) @ T ** steps with T kept sparse: `steps` products with D^-1 A.

    Because A is symmetric, x @ A D^-1 transposed is D^-1 A x^T, one sparse-dense product per
    step; this costs O(N * D) per step instead of the O(N^3) of dense squaring.
    """
    n = x.shape[1]
    src, dst, aff = sparse_affinity(edge, radius)
    weight = aff.pow(beta)
    keep = weight > 0  # zero entries change nothing; dropping them keeps the matrix small
    src, dst, weight = src[keep], dst[keep], weight[keep]
    diag = torch.arange(n, device=x.device)
    rows = torch.cat([src, dst, diag])
    cols = torch.cat([dst, src, diag])
    values = torch.cat([weight, weight, torch.ones(n, dtype=x.dtype, device=x.device)])
    degree = torch.zeros(n, dtype=x.dtype, device=x.device).index_add_(0, rows, values)
    matrix = torch.sparse_coo_tensor(torch.stack([rows, cols]), values / degree[rows], (n, n), check_invariants=False)
    with warnings.catch_warnings():  # CSR support is marked beta; its products are what we need
        warnings.simplefilter("ignore", UserWarning)
        matrix = matrix.coalesce().to_sparse_csr()
    v = x.t().contiguous()
    with one_thread(x.device):
        for _ in range(steps):
            v = matrix @ v
    return v.t()


@contextlib.contextmanager
def one_thread(device):
    """torch on one thread inside the block (CPU only), restored after: the walk's products over a
    few thousand rows are too small to split across threads, and the main process's threads are
    meant for the network."""
    before = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def random_walk(scores, edge, radius=DEFAULT_RADIUS, beta=DEFAULT_BETA, exp_times=DEFAULT_EXP_TIMES, method="sparse"):
    """Propagate class scores over the affinity graph of a boundary map (IRN's random walk).

    As IRN, the scores are first multiplied by (1 - edge) so that boundary pixels give little.
    Args:
        scores: (K, h, w) class scores on the boundary map's grid.
        edge: (h, w) boundary probabilities in [0, 1], same device and dtype as `scores`.
        radius, beta, exp_times: pairs within `radius`; affinity ** beta; T ** (2 ** exp_times).
        method: "sparse" (exp_times doublings as 2 ** exp_times sparse products; memory O(N))
            or "dense" (IRN's literal squaring of the N x N matrix; N^2 memory). Both give the
            same result up to rounding.
    Returns:
        (K, h, w) propagated scores.
    """
    if scores.dim() != 3 or edge.dim() != 2 or tuple(scores.shape[1:]) != tuple(edge.shape):
        raise ValueError(
            f"scores (K, h, w) and edge (h, w) must share their grid, got {tuple(scores.shape)} and {tuple(edge.shape)}"
        )
    k, h, w = scores.shape
    x = (scores * (1 - edge)).reshape(k, h * w)
    if k == 0:
        return scores.clone()
    if method == "dense":
        out = x @ transition_matrix(dense_affinity(edge, radius), beta, exp_times)
    elif method == "sparse":
        out = _propagate_sparse(x, edge, radius, beta, 2**exp_times)
    else:
        raise ValueError(f"method must be 'sparse' or 'dense', got {method!r}")
    return out.reshape(k, h, w)


def scores_to_stride(seed, stride=STRIDE):
    """Full-size score planes -> the stride grid of the boundary map.

    The planes are padded by repeating their last row / column up to a multiple of `stride`
    and averaged over stride x stride cells, so cell (i, j) covers pixels
    [s*i, s*i + s) x [s*j, s*j + s), the cells the x`stride` upsampling maps back.
    Args:
        seed: (K, H, W). Returns: (K, ceil(H / s), ceil(W / s)).
    """
    k, height, width = seed.shape
    if k == 0:
        return seed.new_zeros((0, math.ceil(height / stride), math.ceil(width / stride)))
    pad_h = -height % stride
    pad_w = -width % stride
    padded = F.pad(seed[None], (0, pad_w, 0, pad_h), mode="replicate") if pad_h or pad_w else seed[None]
    return F.avg_pool2d(padded, stride)[0]


def random_walk_planes(
    seed,
    edge,
    radius=DEFAULT_RADIUS,
    beta=DEFAULT_BETA,
    exp_times=DEFAULT_EXP_TIMES,
    bg_score=DEFAULT_BG_SCORE,
    stride=STRIDE,
    method="sparse",
):
    """Seed -> full-size class scores after the random walk, background first (IRN's make_sem_seg_labels
    before its argmax).

    Steps: foreground planes to the stride grid, random walk, x`stride` bilinear upsampling
    cropped to the image, division by the overall maximum, a constant background plane
    `bg_score` in front.
    Args:
        seed: (K, H, W) foreground scores of the present classes (tensor, any device), K >= 1.
        edge: (ceil(H / stride), ceil(W / stride)) boundary probabilities, same device.
    Returns:
        (K + 1, H, W) in seed's dtype: plane 0 the background, plane k the class of seed plane k - 1.
    """
    k, height, width = seed.shape
    grid = (math.ceil(height / stride), math.ceil(width / stride))
    if tuple(edge.shape) != grid:
        raise ValueError(
            f"edge map {tuple(edge.shape)} does not match the stride-{stride} grid "
            f"{grid} of a {height}x{width} seed (height x width)"
        )
    if k == 0:
        return torch.full((1, height, width), bg_score, dtype=seed.dtype, device=seed.device)
    walked = random_walk(scores_to_stride(seed, stride), edge.to(seed.dtype), radius, beta, exp_times, method)
    up = F.interpolate(walked[None], scale_factor=stride, mode="bilinear", align_corners=False)[0, :, :height, :width]
    top = up.max()
    if top > 0:
        up = up / top
    return torch.cat([torch.full_like(up[:1], bg_score), up])


def random_walk_labels(
    seed,
    keys,
    edge,
    radius=DEFAULT_RADIUS,
    beta=DEFAULT_BETA,
    exp_times=DEFAULT_EXP_TIMES,
    bg_score=DEFAULT_BG_SCORE,
    stride=STRIDE,
    method="sparse",
):
    """Seed -> pseudo mask by the random walk (IRN's make_sem_seg_labels): the argmax of
    random_walk_planes, class indices through `keys`.

    Args:
        seed: (K, H, W) foreground scores of the present classes (tensor, any device).
        keys: (K,) their class indices (>= 1), a sequence or tensor.
        edge: (ceil(H / stride), ceil(W / stride)) boundary probabilities, same device.
    Returns:
        int64 (H, W) class indices on seed's device; all 0 when K == 0 or nothing scores.
    """
    keys = walk_keys(keys, seed.shape[0], seed.device)
    # no foreground: the background plane alone, whose argmax is 0 everywhere
    return keys[random_walk_planes(seed, edge, radius, beta, exp_times, bg_score, stride, method).argmax(dim=0)]


def walk_keys(keys, k, device=None):
    """The class index of every plane of random_walk_planes: int64 (K + 1,) tensor [0, keys...].

    Raises ValueError when `keys` does not name exactly `k` seed planes."""
    if isinstance(keys, torch.Tensor):
        keys = keys.to(device=device, dtype=torch.int64).reshape(-1)
    else:
        keys = torch.as_tensor(np.asarray(keys, dtype=np.int64).reshape(-1), device=device)
    if keys.numel() != k:
        raise ValueError(f"{k} seed planes but {keys.numel()} keys")
    return torch.cat([keys.new_zeros(1), keys])
