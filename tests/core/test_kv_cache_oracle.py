"""``KVCache`` against a naive concatenating cache, no model involved.

The naive cache keeps every committed frame's K/V, and per (layer, head) the list of frames
that head holds: a commit appends the new frames and trims the list to the head's retention
(the video's first ``sink`` frames plus the ``window`` most recent others); a regroup gives
heads new retentions, trimming what they hold, and is impossible when a head would need a
frame it no longer has. It shares no code with ``kv_cache.py`` but the ``Retention`` and
``GroupSpec`` records.

Over a grid of base sink / window, chunk size, given pieces (start frames in one piece or in
chunks) and regroups (Dummy Forcing's per-head layouts after ``ar_start``, packed or not, heads
in scrambled order), after every write and every commit, for every layer and head: the frames
the cache reports, the K/V it holds, and the keys / values a pass attends over.
"""
import functools
import itertools

import pytest
import torch

from dummy_forcing_core.kv_cache import FULL, GroupSpec, KVCache, Retention

LAYERS, HEADS, B, TPF, D = 2, 5, 2, 2, 3
TOTAL = 11


def trim(ids: list[int], ret: Retention) -> list[int]:
    """What a head following ``ret`` keeps of the frames ``ids`` (sorted), written out plainly."""
    sink = [f for f in ids if f < ret.sink]
    rest = [f for f in ids if f >= ret.sink]
    if ret.window is not None:
        rest = rest[max(len(rest) - ret.window, 0):] if ret.window else []
    return sink + rest


class NaiveCache:
    """Every frame ever committed, concatenated (``k``, ``v``: [L, B, H, history * tpf, D]),
    and per layer and head its retention and the frames it holds."""

    def __init__(self, retention: Retention):
        self.k = self.v = torch.zeros(LAYERS, B, HEADS, 0, D, dtype=torch.float64)
        self.history = 0
        self.ret = [[retention] * HEADS for _ in range(LAYERS)]
        self.held = [[[] for _ in range(HEADS)] for _ in range(LAYERS)]

    def commit(self, f0: int, k: torch.Tensor, v: torch.Tensor):
        """k, v: [L, B, H, n * tpf, D], frames f0 .. f0 + n - 1."""
        assert f0 == self.history
        n = k.shape[3] // TPF
        self.k, self.v = torch.cat([self.k, k], 3), torch.cat([self.v, v], 3)
        self.history += n
        for layer, head in itertools.product(range(LAYERS), range(HEADS)):
            ids = self.held[layer][head] + list(range(f0, f0 + n))
            self.held[layer][head] = trim(ids, self.ret[layer][head])

    def _pairs(self, specs: list[list[GroupSpec]]):
        for layer, layer_specs in enumerate(specs):
            for sp in layer_specs:
                rets = [r for n, r in sp.runs for _ in range(n)]
                for h, r in zip(sp.heads, rets):
                    yield layer, h, r

    def can_regroup(self, specs: list[list[GroupSpec]]) -> bool:
        everything = list(range(self.history))
        return all(trim(self.held[layer][h], r) == trim(everything, r) for layer, h, r in self._pairs(specs))

    def regroup(self, specs: list[list[GroupSpec]]):
        for layer, h, r in self._pairs(specs):
            self.ret[layer][h] = r
            self.held[layer][h] = trim(self.held[layer][h], r)

    def kv(self, layer: int, head: int) -> tuple[list[int], torch.Tensor, torch.Tensor]:
        """The frames a head holds and their K, V: [B, frames * tpf, D]."""
        ids = self.held[layer][head]
        tokens = _tokens(tuple(ids))
        return ids, self.k[layer, :, head, tokens], self.v[layer, :, head, tokens]


@functools.lru_cache(maxsize=None)
def _tokens(ids: tuple) -> torch.Tensor:
    return torch.tensor([f * TPF + t for f in ids for t in range(TPF)], dtype=torch.long)


def cache_kv(cache: KVCache, layer: int, head: int) -> tuple[list[int], torch.Tensor, torch.Tensor]:
    """What ``cache`` reports and holds for one head."""
    for g in cache.layers[layer].groups:
        if head in g.head_list:
            row = g.head_list.index(head)
            n = g.frames * TPF
            return g.frame_ids(row), g.k[:, row, :n], g.v[:, row, :n]
    raise KeyError(head)


def assert_same(cache: KVCache, naive: NaiveCache, when: str):
    assert cache.history == naive.history, when
    for layer, head in itertools.product(range(LAYERS), range(HEADS)):
        ids, k, v = cache_kv(cache, layer, head)
        want_ids, want_k, want_v = naive.kv(layer, head)
        where = f"{when}, layer {layer} head {head}"
        assert ids == want_ids, where
        assert torch.equal(k, want_k), f"{where}: K of frames {ids} differ"
        assert torch.equal(v, want_v), f"{where}: V of frames {ids} differ"
    held = sorted({f for layer in naive.held for ids in layer for f in ids})
    assert cache.kept_frames() == held, when


def write_pass(cache: KVCache, naive: NaiveCache, k: torch.Tensor, v: torch.Tensor, when: str):
    """Write a piece into every group as attention does, and check what it attends over:
    each head's held frames, then the piece."""
    for layer in range(LAYERS):
        for g in cache.layers[layer].groups:
            idx = torch.tensor(g.head_list)
            keys, values = g.write(k[layer].index_select(1, idx), v[layer].index_select(1, idx))
            for row, h in enumerate(g.head_list):
                _, hk, hv = naive.kv(layer, h)
                assert torch.equal(keys[:, row], torch.cat([hk, k[layer, :, h]], 1)), f"{when}: keys, layer {layer} head {h}"
                assert torch.equal(values[:, row], torch.cat([hv, v[layer, :, h]], 1)), f"{when}: values, layer {layer} head {h}"


# -- regroups: Dummy Forcing's per-head layouts ----------------------------------------------
SINK, NEIGHBOR, DUMMY = 0, 1, 2
TYPES = [[DUMMY, SINK, NEIGHBOR, DUMMY, SINK],  # per layer, head types (layers differ)
         [NEIGHBOR, DUMMY, DUMMY, SINK, NEIGHBOR]]


def df_specs(sink_frames: int, neighbor_frames: int, packing: bool) -> list[list[GroupSpec]]:
    """Like Dummy Forcing's ``layer_group_specs``, written again; heads listed in reverse so a
    group's rows are not in head order."""
    rets = {SINK: Retention(sink_frames, 0), NEIGHBOR: Retention(0, neighbor_frames),
            DUMMY: Retention(0, sink_frames if packing else 0)}
    out = []
    for types in TYPES:
        of = {t: [h for h in reversed(range(HEADS)) if types[h] == t] for t in (SINK, NEIGHBOR, DUMMY)}
        if packing:
            specs = [GroupSpec(of[SINK] + of[DUMMY], [(len(of[SINK]), rets[SINK]), (len(of[DUMMY]), rets[DUMMY])])]
        else:
            specs = [GroupSpec(of[SINK], [(len(of[SINK]), rets[SINK])]),
                     GroupSpec(of[DUMMY], [(len(of[DUMMY]), rets[DUMMY])])]
        specs.append(GroupSpec(of[NEIGHBOR], [(len(of[NEIGHBOR]), rets[NEIGHBOR])]))
        out.append([s for s in specs if s.heads])
    return out


def pieces_of(chunk: int, start_frames: int, given_in_one_piece: bool) -> tuple[list, int]:
    """[(first frame, frames)] written in order, and the index of the first generated chunk."""
    if given_in_one_piece:
        given = [(0, start_frames)] if start_frames else []
    else:
        given = [(f, min(chunk, start_frames - f)) for f in range(0, start_frames, chunk)]
    chunks = [(f, min(chunk, TOTAL - f)) for f in range(start_frames, TOTAL, chunk)]
    return given + chunks, len(given)


def run_video(retention: Retention, chunk: int, start_frames: int, given_in_one_piece: bool,
              regroup: tuple[int, list[list[GroupSpec]]] | None = None, base_capacity: bool = False):
    """Write and commit every piece of a video, checking the cache against the naive one.
    ``regroup``: (piece, specs) regroups after that piece's commit (-1: before the first).
    ``base_capacity``: the base groups hold only what they need until the regroup (as
    Dummy Forcing builds them)."""
    torch.manual_seed(chunk * 1000 + start_frames * 10 + retention.sink)
    pieces, _ = pieces_of(chunk, start_frames, given_in_one_piece)
    if regroup is not None and regroup[0] >= len(pieces):
        return  # the video ends before that piece
    max_piece = max(n for _, n in pieces)
    cap = None
    if regroup is not None and base_capacity:
        cap = retention.capacity_for(sum(n for _, n in pieces[:regroup[0]]) + 1, max_piece)
    cache = KVCache.create(LAYERS, HEADS, D, TPF, max_piece, TOTAL, retention, batch=B,
                           dtype=torch.float64, capacity_frames=cap)
    name = f"{retention}, chunk {chunk}, start {start_frames}{' in one piece' if given_in_one_piece else ''}"
    play_video(cache, retention, pieces, regroup, name)


def play_video(cache: KVCache, retention: Retention, pieces: list, regroup, name: str) -> bool:
    """The pieces of one video through ``cache`` (at history 0), checked against a fresh naive
    cache after every write and commit; whether it ran to the end."""
    naive = NaiveCache(retention)
    assert_same(cache, naive, f"{name}, before the first piece")
    if regroup is not None and regroup[0] < 0 and not try_regroup(cache, naive, regroup[1], f"{name}, at frame 0"):
        return False
    for i, (f0, n) in enumerate(pieces):
        when = f"{name}, piece at frame {f0}"
        for _ in range(2):  # a denoising pass (not committed), then the cache pass
            k = torch.randn(LAYERS, B, HEADS, n * TPF, D, dtype=torch.float64)
            v = torch.randn(LAYERS, B, HEADS, n * TPF, D, dtype=torch.float64)
            write_pass(cache, naive, k, v, when)
        cache.commit()
        naive.commit(f0, k, v)
        assert_same(cache, naive, f"{when}, after commit")
        if regroup is not None and i == regroup[0] and not try_regroup(cache, naive, regroup[1], when):
            return False
    return True


def try_regroup(cache: KVCache, naive: NaiveCache, specs: list[list[GroupSpec]], when: str) -> bool:
    """Regroup both caches, or check the cache refuses (untouched) when the naive one says a
    head would need a frame it dropped; whether the video can go on."""
    if naive.can_regroup(specs):
        cache.regroup(specs)
        naive.regroup(specs)
        assert_same(cache, naive, f"{when}, after regroup")
        return True
    with pytest.raises(ValueError, match="no longer holds"):
        cache.regroup(specs)
    assert_same(cache, naive, f"{when}, after a refused regroup")
    return False


RETENTIONS = [FULL] + [Retention(s, w) for s in (0, 1, 2) for w in (None, 0, 1, 2, 5)]
GIVEN = [(0, False), (1, False), (2, True), (4, False), (5, True)]  # (start frames, in one piece)


def test_sink_one_window_one_three_frame_chunks():
    """The reported case: the first commit fills the sink and overflows the window at once
    (window 1 < chunk 3 - sink 1); frame 0 must stay frame 0."""
    run_video(Retention(1, 1), 3, 0, False)


@pytest.mark.parametrize("chunk", [1, 2, 3, 4])
def test_uniform_retention_grid(chunk):
    for retention, (start, one_piece) in itertools.product(RETENTIONS, GIVEN):
        run_video(retention, chunk, start, one_piece)


@pytest.mark.parametrize("chunk", [1, 3])
@pytest.mark.parametrize("packing", [True, False])
def test_dummy_forcing_regroup_grid(chunk, packing):
    """Base cache (sized as Dummy Forcing sizes it: only until the regroup), then Dummy
    Forcing's per-head layout after chunk ar_start's commit (or the cache refusing it,
    untouched, when a head would need a dropped frame), then the rest of the video."""
    for retention, (start, one_piece), ar_start, (sink_frames, neighbors) in itertools.product(
            [FULL, Retention(1, 1), Retention(2, 3), Retention(3, 0)], GIVEN[::2], (0, 1),
            ((1, 1), (2, chunk + 1))):
        specs = df_specs(sink_frames, neighbors, packing)
        first_chunk = len(pieces_of(chunk, start, one_piece)[0]) - len(range(start, TOTAL, chunk))
        run_video(retention, chunk, start, one_piece, (first_chunk + ar_start, specs), base_capacity=True)


def mixed_specs() -> list[list[GroupSpec]]:
    """Rows of one group with different retentions that always hold as many frames (sink 1 +
    window 1, window 2, sink 2), the other heads full; not in head order."""
    mixed = [(2, Retention(1, 1)), (1, Retention(0, 2)), (1, Retention(2, 0))]
    return [[GroupSpec([3, 0, 4, 1], mixed), GroupSpec([2], [(1, FULL)])],
            [GroupSpec([0, 1, 2, 3], mixed), GroupSpec([4], [(1, FULL)])]]


@pytest.mark.parametrize("chunk", [1, 3])
def test_mixed_row_retentions_regrouped_at_any_piece(chunk):
    """Regrouped before the first piece or after any early piece, so that one later commit
    may fill a row's sink and overflow another row's window at once."""
    for retention, (start, one_piece), after in itertools.product(
            [FULL, Retention(2, 2)], [(0, False), (1, False), (2, True)], (-1, 0, 1, 2)):
        run_video(retention, chunk, start, one_piece, (after, mixed_specs()))


# -- the warm start: one recycled cache for several videos ------------------------------------
def _groups(cache: KVCache) -> dict:
    """Per layer, spec key -> (group uid, K buffer address) of the groups in use."""
    return [{g.spec_key(): (g.uid, g.k.data_ptr(), g.v.data_ptr()) for g in layer.groups} for layer in cache.layers]


@pytest.mark.parametrize("chunk", [1, 3])
def test_reset_and_recycled_regroups_equal_a_fresh_cache(chunk):
    """Videos one after another on one cache made with ``recycle=True``: after ``reset`` each
    video reads and holds exactly what a fresh naive cache does (no frame of the last video is
    seen), starts on base groups of the base spec, and a regroup to the layout the last video
    ended with reuses those groups (same uid and buffers: graphs reading them stay valid),
    while a different layout gets new ones. Without regroups: the same base groups, videos on."""
    a, a2, b = df_specs(1, 1, True), df_specs(1, 1, True), df_specs(2, chunk + 1, False)
    layouts = [a, a2, b, b, a]  # a2: equal specs built anew (the policy makes new objects each video)
    for retention, (start, one_piece) in itertools.product([FULL, Retention(2, 3)], GIVEN[::2]):
        torch.manual_seed(chunk * 100 + start)
        pieces, first = pieces_of(chunk, start, one_piece)
        at = min(first + 1, len(pieces) - 1)
        max_piece = max(n for _, n in pieces)
        cap = retention.capacity_for(sum(n for _, n in pieces[:at]) + 1, max_piece)
        cache = KVCache.create(LAYERS, HEADS, D, TPF, max_piece, TOTAL, retention, batch=B, dtype=torch.float64,
                               capacity_frames=cap, recycle=True)
        base = _groups(cache)
        last, last_specs, seen = None, None, set()
        for v, specs in enumerate(layouts):
            name = f"{retention}, chunk {chunk}, start {start}, video {v}"
            if v:
                cache.reset()
                assert cache.history == 0 and cache.flops.done == 0, name
                assert cache.scratch_state() == [0] * len(cache.scratch_state()), name
                now = _groups(cache)
                assert [set(layer) for layer in now] == [set(layer) for layer in base], name  # the base spec
                assert not {x for layer in now for x in layer.values()} & seen, f"{name}: a new base reuses a buffer"
            regrouped = play_video(cache, retention, pieces, (at, specs), name)
            now = _groups(cache)
            if not regrouped:  # refused (a head needs a dropped frame): the pool keeps the last layout
                continue
            if last_specs is not None and specs == last_specs:
                assert now == last, f"{name}: the layout of the last video was not reused"
            else:
                assert not {x for layer in now for x in layer.values()} & seen, f"{name}: a group was shared"
            seen |= {x for layer in now for x in layer.values()}
            last, last_specs = now, specs
        cache.reset()  # holds the base and the layout the last video ended with, nothing else
        pooled = sum(g.allocated_bytes() for pool in cache.pool for g in pool.values())
        assert cache.reserved_bytes() == cache.allocated_bytes() + pooled
    for retention in (FULL, Retention(1, 2)):  # a uniform cache: never regrouped, its groups restart in place
        pieces, _ = pieces_of(chunk, 2, False)
        cache = KVCache.create(LAYERS, HEADS, D, TPF, chunk, TOTAL, retention, batch=B, dtype=torch.float64,
                               recycle=True)
        base = _groups(cache)
        for v in range(3):
            if v:
                cache.reset()
            assert play_video(cache, retention, pieces, None, f"{retention}, video {v}") and _groups(cache) == base


def test_reset_needs_a_recycling_cache():
    cache = KVCache.create(LAYERS, HEADS, D, TPF, 1, TOTAL)
    with pytest.raises(RuntimeError, match="recycle"):
        cache.reset()


def test_recache_regroup_reuses_the_layers_groups_in_place():
    """A prompt switch's re-cache refills the layout from another cache: a recycling cache
    writes into the groups it holds (graphs stay valid), with the frames a fresh copy has."""
    specs = df_specs(1, 1, True)
    caches = [KVCache.create(LAYERS, HEADS, D, TPF, 1, TOTAL, FULL, batch=B, dtype=torch.float64, recycle=r)
              for r in (True, False)]
    for _ in range(3):
        k, v = torch.randn(2, LAYERS, B, HEADS, TPF, D, dtype=torch.float64)
        for c in caches:
            for layer in range(LAYERS):
                c.layers[layer].groups[0].write(k[layer], v[layer])
            c.commit()
    for c in caches:
        c.regroup(specs)
    before = _groups(caches[0])
    frames = caches[0].kept_frames()
    full = KVCache.create(LAYERS, HEADS, D, TPF, 1, len(frames) + 1, FULL, batch=B, dtype=torch.float64)
    for layer in range(LAYERS):
        g = full.layers[layer].groups[0]
        g.k.normal_()
        g.v.normal_()
        g.history = g.frames = len(frames)
    for c in caches:
        c.regroup(c.layout_specs(), source=full, source_frames=frames)
    assert _groups(caches[0]) == before
    for layer, head in itertools.product(range(LAYERS), range(HEADS)):
        ids, kk, vv = cache_kv(caches[0], layer, head)
        want_ids, wk, wv = cache_kv(caches[1], layer, head)
        assert ids == want_ids and torch.equal(kk, wk) and torch.equal(vv, wv), (layer, head)
