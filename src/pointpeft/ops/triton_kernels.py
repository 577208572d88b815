"""Triton kernels for FPS, KNN and grouping (internal: launched by :mod:`pointpeft.ops.triton_backend`,
imported only when the Triton backend runs).

Numerical contract, shared with :mod:`pointpeft.ops.torch_backend`: coordinates are upcast to float32; a
squared distance is ``dx*dx + dy*dy + dz*dz`` left to right with separately rounded multiplies and adds
(launch with ``enable_fp_fusion=False`` so no FMA is formed), ``dx = point - query``; ties go to the lowest
index. Under that contract the kernels return the same indices as the torch backend, bit for bit.

KNN orders candidates by one int64 key: the float32 bits of the (non-negative) squared distance in the
high word and the point index in the low word, so that integer order is (distance, index) order.
"""

from __future__ import annotations

# triton has no type information, and the kernels' parameters stay unannotated (Triton reads parameter
# annotations itself): its imports, its decorator and the kernels are exempted from mypy line by line.
import triton  # type: ignore[import-untyped]
import triton.language as tl  # type: ignore[import-untyped]

_EMPTY_KEY: tl.constexpr = tl.constexpr(0x7FFFFFFFFFFFFFFF)  # larger than every real key: a free top-k slot


@triton.jit
def _sq_dist(px, py, pz, qx, qy, qz):  # type: ignore[no-untyped-def]
    dx = px - qx
    d = dx * dx
    dy = py - qy
    d = d + dy * dy
    dz = pz - qz
    d = d + dz * dz
    return d


@triton.jit
def _load_xyz(base, offs, mask, stride_n, stride_c):  # type: ignore[no-untyped-def]
    """Coordinates of points ``offs`` of one cloud as float32 (0 where ``mask`` is False)."""
    x = tl.load(base + offs * stride_n, mask=mask, other=0.0).to(tl.float32)
    y = tl.load(base + offs * stride_n + stride_c, mask=mask, other=0.0).to(tl.float32)
    z = tl.load(base + offs * stride_n + 2 * stride_c, mask=mask, other=0.0).to(tl.float32)
    return x, y, z


@triton.jit
def _farther(d1, i1, x1, y1, z1, d2, i2, x2, y2, z2):  # type: ignore[no-untyped-def]
    """Reduction step: the candidate farther from the picked set; on a tie, the lower index."""
    take = (d2 > d1) | ((d2 == d1) & (i2 < i1))
    return (tl.where(take, d2, d1), tl.where(take, i2, i1), tl.where(take, x2, x1), tl.where(take, y2, y1),
            tl.where(take, z2, z1))  # fmt: skip


@triton.jit  # type: ignore[untyped-decorator]
def fps_kernel(  # type: ignore[no-untyped-def]
    xyz_ptr, lengths_ptr, out_ptr, N, M, start_idx,
    stride_b, stride_n, stride_c, out_stride_b,
    HAS_LENGTHS: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """One cloud per program, all its points in registers (N <= BLOCK_N).

    The winner's coordinates are loaded after the argmax. (Carrying them through the reduction instead
    was slower at every size on an H100; see docs/benchmarks.md.)"""
    b = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK_N)
    if HAS_LENGTHS:
        length = tl.load(lengths_ptr + b).to(tl.int32)
    else:
        length = N
    valid = offs < length
    base = xyz_ptr + b * stride_b
    x, y, z = _load_xyz(base, offs, valid, stride_n, stride_c)
    # Padding never wins the argmax: its running distance is -inf.
    min_d = tl.where(valid, float("inf"), float("-inf"))
    out_row = out_ptr + b * out_stride_b
    last = tl.full((), start_idx, tl.int32)
    lx, ly, lz = _load_xyz(base, last, True, stride_n, stride_c)
    for i in range(0, M):
        tl.store(out_row + i, tl.where(i < length, last, -1).to(tl.int64))
        min_d = tl.minimum(min_d, _sq_dist(x, y, z, lx, ly, lz))
        last = tl.argmax(min_d, axis=0, tie_break_left=True).to(tl.int32)
        lx, ly, lz = _load_xyz(base, last, True, stride_n, stride_c)


@triton.jit  # type: ignore[untyped-decorator]
def fps_stream_kernel(  # type: ignore[no-untyped-def]
    xyz_ptr, lengths_ptr, out_ptr, scratch_ptr, N, M, start_idx,
    stride_b, stride_n, stride_c, out_stride_b,
    HAS_LENGTHS: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """One cloud per program for clouds too large for registers: the running distances live in a
    ``(B, N)`` float32 scratch buffer and every step streams over the cloud in chunks of BLOCK_N."""
    b = tl.program_id(0).to(tl.int64)
    if HAS_LENGTHS:
        length = tl.load(lengths_ptr + b).to(tl.int32)
    else:
        length = N
    base = xyz_ptr + b * stride_b
    scratch = scratch_ptr + b * N
    out_row = out_ptr + b * out_stride_b
    for start in range(0, N, BLOCK_N):
        offs = start + tl.arange(0, BLOCK_N)
        tl.store(scratch + offs, tl.where(offs < length, float("inf"), float("-inf")), mask=offs < N)
    last = tl.full((), start_idx, tl.int32)
    for i in range(0, M):
        tl.store(out_row + i, tl.where(i < length, last, -1).to(tl.int64))
        lx, ly, lz = _load_xyz(base, last, True, stride_n, stride_c)
        best_val = tl.full((), float("-inf"), tl.float32)
        best_idx = tl.full((), 0, tl.int32)
        for start in range(0, N, BLOCK_N):
            offs = start + tl.arange(0, BLOCK_N)
            in_range = offs < N
            valid = offs < length
            x, y, z = _load_xyz(base, offs, valid, stride_n, stride_c)
            md = tl.load(scratch + offs, mask=in_range, other=float("-inf"))
            md = tl.minimum(md, _sq_dist(x, y, z, lx, ly, lz))
            tl.store(scratch + offs, md, mask=in_range)
            chunk_best = tl.max(md, axis=0)
            chunk_idx = (start + tl.argmax(md, axis=0, tie_break_left=True)).to(tl.int32)
            take = chunk_best > best_val  # strict: an earlier chunk (lower index) keeps a tie
            best_idx = tl.where(take, chunk_idx, best_idx)
            best_val = tl.where(take, chunk_best, best_val)
        last = best_idx


@triton.jit  # type: ignore[untyped-decorator]
def _bitonic_to_ascending(x, BLOCK_Q: tl.constexpr, KP: tl.constexpr, LOG_KP: tl.constexpr):  # type: ignore[no-untyped-def]
    """Rows of ``x`` (BLOCK_Q, KP), each bitonic (ascending then descending), sorted ascending: the
    LOG_KP = log2(KP) half-cleaner stages of a bitonic merge. Stage s compares the elements KP >> (s + 1)
    apart within groups of KP >> s and keeps the smaller one first (about a third of the stages of a full
    sort of the row)."""
    for s in tl.static_range(LOG_KP):
        y = tl.reshape(x, (BLOCK_Q, KP // (2 * (KP >> (s + 1))), 2, KP >> (s + 1)))
        lo, hi = tl.split(tl.permute(y, (0, 1, 3, 2)))
        y = tl.permute(tl.join(tl.minimum(lo, hi), tl.maximum(lo, hi)), (0, 1, 3, 2))
        x = tl.reshape(y, (BLOCK_Q, KP))
    return x


@triton.jit  # type: ignore[untyped-decorator]
def _topk_tiles(  # type: ignore[no-untyped-def]
    qx, qy, qz, base, length, stride_n, stride_c,
    BLOCK_Q: tl.constexpr, KP: tl.constexpr, LOG_KP: tl.constexpr, SKIP: tl.constexpr,
):  # fmt: skip
    """Keys ``(BLOCK_Q, KP)`` of the KP nearest of the first ``length`` points, ascending by
    (distance, index); free slots hold the empty key.

    With SKIP, a tile none of whose keys is below any query's current KP-th key is not merged (it could
    not change the result): a saving on large clouds, where most tiles come after the neighbours are found.
    """
    cols = tl.arange(0, KP)
    best = tl.full((BLOCK_Q, KP), _EMPTY_KEY, tl.int64)
    worst = tl.full((BLOCK_Q,), _EMPTY_KEY, tl.int64)
    for start in range(0, length, KP):
        offs = start + cols
        valid = offs < length
        px, py, pz = _load_xyz(base, offs, valid, stride_n, stride_c)
        d = _sq_dist(px[None, :], py[None, :], pz[None, :], qx[:, None], qy[:, None], qz[:, None])
        key = (d.to(tl.int32, bitcast=True).to(tl.int64) << 32) | offs.to(tl.int64)[None, :]
        key = tl.where(valid[None, :], key, _EMPTY_KEY)
        # Merge: with both sorted ascending, min(best[j], tile[KP-1-j]) holds the KP smallest of the union
        # and is bitonic; the half-cleaners sort it.
        if SKIP:
            if tl.sum((key < worst[:, None]).to(tl.int32)) > 0:
                key = tl.flip(tl.sort(key, 1), 1)
                best = _bitonic_to_ascending(tl.minimum(best, key), BLOCK_Q, KP, LOG_KP)
                worst = tl.max(best, 1)
        else:
            key = tl.flip(tl.sort(key, 1), 1)
            best = _bitonic_to_ascending(tl.minimum(best, key), BLOCK_Q, KP, LOG_KP)
    return best


@triton.jit  # type: ignore[untyped-decorator]
def _cloud_and_block(B, BLOCK_Q: tl.constexpr):  # type: ignore[no-untyped-def]
    """(cloud, first query) of this program on a 1-D grid of B x blocks programs, the cloud varying
    fastest (the order of the former (B, blocks) grid, whose second axis was limited to 65535 blocks)."""
    pid = tl.program_id(0)
    return (pid % B).to(tl.int64), (pid // B) * BLOCK_Q


@triton.jit  # type: ignore[untyped-decorator]
def knn_kernel(  # type: ignore[no-untyped-def]
    q_ptr, p_ptr, qlen_ptr, plen_ptr, dist_ptr, idx_ptr, B, M, N, K,
    q_sb, q_sm, q_sc, p_sb, p_sn, p_sc, o_sb, o_sm,
    HAS_QLEN: tl.constexpr, HAS_PLEN: tl.constexpr, BLOCK_Q: tl.constexpr, KP: tl.constexpr,
    LOG_KP: tl.constexpr, SKIP: tl.constexpr,
):  # fmt: skip
    """Programs over (cloud, block of BLOCK_Q queries); the k nearest points of each query."""
    b, first = _cloud_and_block(B, BLOCK_Q)
    offs_q = first + tl.arange(0, BLOCK_Q)
    if HAS_QLEN:
        q_len = tl.load(qlen_ptr + b).to(tl.int32)
    else:
        q_len = M
    if HAS_PLEN:
        p_len = tl.load(plen_ptr + b).to(tl.int32)
    else:
        p_len = N
    q_valid = offs_q < q_len
    q_base = q_ptr + b * q_sb + offs_q * q_sm
    qx = tl.load(q_base, mask=q_valid, other=0.0).to(tl.float32)
    qy = tl.load(q_base + q_sc, mask=q_valid, other=0.0).to(tl.float32)
    qz = tl.load(q_base + 2 * q_sc, mask=q_valid, other=0.0).to(tl.float32)
    best = _topk_tiles(qx, qy, qz, p_ptr + b * p_sb, p_len, p_sn, p_sc, BLOCK_Q, KP, LOG_KP, SKIP)

    cols = tl.arange(0, KP)
    found = (best != _EMPTY_KEY) & q_valid[:, None]
    idx = tl.where(found, best & 0xFFFFFFFF, -1)
    dist = tl.where(found, (best >> 32).to(tl.int32).to(tl.float32, bitcast=True), 0.0)
    out = b * o_sb + offs_q[:, None] * o_sm + cols[None, :]
    mask = (offs_q < M)[:, None] & (cols < K)[None, :]
    tl.store(idx_ptr + out, idx, mask=mask)
    tl.store(dist_ptr + out, dist.to(dist_ptr.dtype.element_ty), mask=mask)


@triton.jit  # type: ignore[untyped-decorator]
def group_kernel(  # type: ignore[no-untyped-def]
    xyz_ptr, lengths_ptr, center_idx_ptr, nbhd_ptr, centers_ptr, B, G, N, K,
    x_sb, x_sn, x_sc, ci_sb,
    HAS_LENGTHS: tl.constexpr, BLOCK_Q: tl.constexpr, KP: tl.constexpr, LOG_KP: tl.constexpr,
    SKIP: tl.constexpr,
):  # fmt: skip
    """Fused KNN + gather + centering: programs over (cloud, block of BLOCK_Q centers)."""
    b, first = _cloud_and_block(B, BLOCK_Q)
    if HAS_LENGTHS:
        length = tl.load(lengths_ptr + b).to(tl.int32)
    else:
        length = N
    offs_q = first + tl.arange(0, BLOCK_Q)
    q_valid = offs_q < G
    base = xyz_ptr + b * x_sb
    center = tl.load(center_idx_ptr + b * ci_sb + offs_q, mask=q_valid, other=0)
    cx = tl.load(base + center * x_sn, mask=q_valid, other=0.0)
    cy = tl.load(base + center * x_sn + x_sc, mask=q_valid, other=0.0)
    cz = tl.load(base + center * x_sn + 2 * x_sc, mask=q_valid, other=0.0)
    c_out = centers_ptr + (b * G + offs_q) * 3
    tl.store(c_out, cx, mask=q_valid)
    tl.store(c_out + 1, cy, mask=q_valid)
    tl.store(c_out + 2, cz, mask=q_valid)
    cx = cx.to(tl.float32)
    cy = cy.to(tl.float32)
    cz = cz.to(tl.float32)
    best = _topk_tiles(cx, cy, cz, base, length, x_sn, x_sc, BLOCK_Q, KP, LOG_KP, SKIP)

    cols = tl.arange(0, KP)
    idx = (best & 0xFFFFFFFF).to(tl.int64)
    mask = q_valid[:, None] & (cols < K)[None, :]
    nx, ny, nz = _load_xyz(base, idx, mask, x_sn, x_sc)
    out = nbhd_ptr + ((b * G + offs_q[:, None]) * K + cols[None, :]) * 3
    ty = nbhd_ptr.dtype.element_ty
    tl.store(out, (nx - cx[:, None]).to(ty), mask=mask)
    tl.store(out + 1, (ny - cy[:, None]).to(ty), mask=mask)
    tl.store(out + 2, (nz - cz[:, None]).to(ty), mask=mask)


@triton.jit  # type: ignore[untyped-decorator]
def fps_multi_kernel(  # type: ignore[no-untyped-def]
    xyz_ptr, lengths_ptr, out_ptr, cand_ptr, counter_ptr, N, M, start_idx, programs,
    stride_b, stride_n, stride_c, out_stride_b,
    HAS_LENGTHS: tl.constexpr, CHUNK: tl.constexpr, P2: tl.constexpr,
):  # fmt: skip
    """Large clouds: ``programs`` programs per cloud (P2 is the next power of two), each holding CHUNK points in registers.

    Every step each program publishes its farthest candidate (distance, index, x, y, z), waits at a grid
    barrier (an atomic counter per cloud), then reduces all candidates of its cloud itself, so every
    program agrees on the pick. Candidates are double-buffered by step parity. All programs must be
    resident at once: the launcher keeps the grid within the number of SMs.
    """
    pid = tl.program_id(0)
    b = (pid // programs).to(tl.int64)
    part = pid % programs
    if HAS_LENGTHS:
        length = tl.load(lengths_ptr + b).to(tl.int32)
    else:
        length = N
    offs = part * CHUNK + tl.arange(0, CHUNK)
    valid = offs < length
    base = xyz_ptr + b * stride_b
    x, y, z = _load_xyz(base, offs, valid, stride_n, stride_c)
    min_d = tl.where(valid, float("inf"), float("-inf"))
    out_row = out_ptr + b * out_stride_b
    parts = tl.arange(0, P2)
    cands = cand_ptr + b * (2 * 5 * P2)  # [parity][field][program], fields d, idx, x, y, z (float32 bits)
    counter = counter_ptr + b
    last = tl.full((), start_idx, tl.int32)
    lx, ly, lz = _load_xyz(base, last, True, stride_n, stride_c)
    for i in range(0, M):
        if part == 0:
            tl.store(out_row + i, tl.where(i < length, last, -1).to(tl.int64))
        min_d = tl.minimum(min_d, _sq_dist(x, y, z, lx, ly, lz))
        cd, ci, cx, cy, cz = tl.reduce((min_d, offs, x, y, z), 0, _farther)
        slot = cands + (i % 2) * (5 * P2) + part
        tl.store(slot, cd)
        tl.store(slot + P2, ci.to(tl.float32, bitcast=True))
        tl.store(slot + 2 * P2, cx)
        tl.store(slot + 3 * P2, cy)
        tl.store(slot + 4 * P2, cz)
        tl.atomic_add(counter, 1, sem="release")
        target = (i + 1) * programs
        arrived = tl.atomic_add(counter, 0, sem="acquire")
        while arrived < target:
            arrived = tl.atomic_add(counter, 0, sem="acquire")
        row = cands + (i % 2) * (5 * P2) + parts
        real = parts < programs
        all_d = tl.load(row, mask=real, other=float("-inf"), volatile=True)
        all_i = tl.load(row + P2, mask=real, other=0.0, volatile=True).to(tl.int32, bitcast=True)
        all_x = tl.load(row + 2 * P2, mask=real, other=0.0, volatile=True)
        all_y = tl.load(row + 3 * P2, mask=real, other=0.0, volatile=True)
        all_z = tl.load(row + 4 * P2, mask=real, other=0.0, volatile=True)
        _, last, lx, ly, lz = tl.reduce((all_d, all_i, all_x, all_y, all_z), 0, _farther)
