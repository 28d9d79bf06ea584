import itertools

import pytest
import torch

from dummy_forcing_core.head_program import HeadType, TypeCount, program_heads, resolve_dummy_count, type_counts

S, N, D = int(HeadType.SINK), int(HeadType.NEIGHBOR), int(HeadType.DUMMY)


def sc(rows):
    """scores [L, H, 3] from (a_sink, a_neighbor) pairs; a_current = the rest."""
    t = torch.tensor(rows, dtype=torch.float64)
    return torch.cat([t, (1 - t.sum(-1, keepdim=True))], dim=-1)


def kept_mass(scores, assign):
    s = scores.double()
    keep = torch.stack([s[..., 0] + s[..., 2], s[..., 1] + s[..., 2], s[..., 2]], dim=-1)
    return keep.gather(-1, assign[..., None]).sum().item()


def test_resolve_dummy_count():
    assert resolve_dummy_count(0.0, 180, 30, 12) == 180  # a count wins over the fraction
    assert resolve_dummy_count(0.5, 0, 30, 12) == 180
    assert resolve_dummy_count(0.25, 0, 30, 12) == 90
    assert resolve_dummy_count(1.0, 0, 30, 12) == 360
    assert resolve_dummy_count(0.0, 0, 30, 12) == 0
    assert resolve_dummy_count(0.9, 360, 30, 12) == 360
    assert resolve_dummy_count(0.3, 0, 2, 4) == 2  # 2.4 -> 2
    assert resolve_dummy_count(0.32, 0, 2, 4) == 3  # 2.56 -> 3
    for bad in (361, -1):
        with pytest.raises(ValueError, match="dummy_head_count") as e:
            resolve_dummy_count(0.5, bad, 30, 12)
        assert "360" in str(e.value)
    for bad in (1.5, -0.1, float("nan")):
        with pytest.raises(ValueError, match="dummy_heads") as e:
            resolve_dummy_count(bad, 0, 30, 12)
        assert "360" in str(e.value)
    for bad in (True, "3", None):
        with pytest.raises(ValueError, match="dummy_heads"):
            resolve_dummy_count(bad, 0, 30, 12)
    with pytest.raises(ValueError, match="dummy_head_count"):
        resolve_dummy_count(0.5, 2.0, 30, 12)
    assert resolve_dummy_count(0.0, 6, 2, 3, "per_layer") == 6  # any count in range fits per_layer
    with pytest.raises(ValueError, match="scope"):
        resolve_dummy_count(0.5, 0, 2, 3, "layer")


def test_greedy_known_answer():
    scores = sc([[(0.5, 0.1), (0.05, 0.02), (0.2, 0.3)],
                 [(0.1, 0.6), (0.01, 0.1), (0.3, 0.3)]])
    # costs: 0.5 0.05 0.3 / 0.6 0.1 0.3 -> cheapest 1, 4, then a tie 2 / 5 (0.3) broken by index
    assert program_heads(scores, 0, normalise=False).tolist() == [[S, S, N], [N, N, S]]  # tie a_sink == a_neighbor -> sink
    assert program_heads(scores, 1, normalise=False).tolist() == [[S, D, N], [N, N, S]]
    assert program_heads(scores, 2, normalise=False).tolist() == [[S, D, N], [N, D, S]]
    assert program_heads(scores, 3, normalise=False).tolist() == [[S, D, D], [N, D, S]]
    assert program_heads(scores, 4, normalise=False).tolist() == [[S, D, D], [N, D, D]]
    assert program_heads(scores, 6, normalise=False).tolist() == [[D] * 3] * 2
    out = program_heads(scores, 2, normalise=False)
    assert out.dtype == torch.long and out.shape == (2, 3)


def test_ties_broken_by_flat_index():
    scores = sc([[(0.2, 0.2)] * 3] * 3)
    for n in range(10):
        flat = program_heads(scores, n, normalise=False).flatten().tolist()
        assert flat == [D] * n + [S] * (9 - n)
    # per layer: quota 1 each, extra to the lowest-index layers on a tie
    assert program_heads(scores, 5, "per_layer", normalise=False).tolist() == [[D, D, S], [D, D, S], [D, S, S]]


def test_greedy_is_optimal_exhaustively():
    g = torch.Generator().manual_seed(0)
    for trial in range(20):
        scores = torch.softmax(torch.randn(2, 4, 3, generator=g, dtype=torch.float64) * 2, dim=-1)
        for n in range(9):
            best = -1.0
            for dummies in itertools.combinations(range(8), n):
                a = torch.where(scores[..., 0] >= scores[..., 1], S, N).flatten()
                a[list(dummies)] = D
                best = max(best, kept_mass(scores, a.view(2, 4)))
            got = program_heads(scores, n, normalise=False)
            assert int((got == D).sum()) == n
            assert kept_mass(scores, got) == pytest.approx(best, abs=1e-12)


def test_per_layer_quota_with_remainder():
    scores = sc([[(0.9, 0.0), (0.02, 0.0), (0.8, 0.0), (0.7, 0.0)],   # next-cheapest after 0.02: 0.7
                 [(0.01, 0.0), (0.03, 0.0), (0.9, 0.0), (0.9, 0.0)],  # next-cheapest: 0.03
                 [(0.0, 0.5), (0.0, 0.04), (0.0, 0.05), (0.0, 0.6)]])  # next-cheapest: 0.05
    glob = program_heads(scores, 5, "global", normalise=False)
    assert glob.tolist() == [[S, D, S, S], [D, D, S, S], [N, D, D, N]]
    per = program_heads(scores, 5, "per_layer", normalise=False)  # quota 1 + 2 extra -> layers 1 and 2
    assert per.tolist() == [[S, D, S, S], [D, D, S, S], [N, D, D, N]]
    per4 = program_heads(scores, 4, "per_layer", normalise=False)  # quota 1 + 1 extra -> layer 1 (0.03)
    assert per4.tolist() == [[S, D, S, S], [D, D, S, S], [N, D, N, N]]
    glob3 = program_heads(scores, 3, "global", normalise=False)  # the three cheapest are in layers 0, 1, 1
    assert glob3.tolist() == [[S, D, S, S], [D, D, S, S], [N, N, N, N]]
    per3 = program_heads(scores, 3, "per_layer", normalise=False)  # one per layer
    assert per3.tolist() == [[S, D, S, S], [D, S, S, S], [N, D, N, N]]
    assert [c.dummy for c in type_counts(per3)] == [1, 1, 1]
    assert (program_heads(scores, 12, "per_layer", normalise=False) == D).all()
    assert (program_heads(scores, 0, "per_layer", normalise=False) != D).all()


def test_normalise_changes_the_choice():
    # sink mass is rare in this model: after normalisation head 1's sink share is large
    scores = sc([[(0.02, 0.5), (0.2, 0.05), (0.01, 0.6), (0.02, 0.15)]])
    assert program_heads(scores, 1, normalise=False).tolist() == [[N, S, N, D]]  # costs 0.5 0.2 0.6 0.15 -> head 3, then 1
    assert program_heads(scores, 2, normalise=False).tolist() == [[N, D, N, D]]
    # normalised: sink /0.25 -> .08 .8 .04 .08; neighbor /1.3 -> .385 .038 .462 .115
    # costs .385 .8 .462 .115 -> head 3, then head 0
    assert program_heads(scores, 2, normalise=True).tolist() == [[D, S, N, D]]
    # the sink / neighbor decision also uses the normalised values
    flip = sc([[(0.1, 0.15), (0.0, 0.8), (0.0, 0.5)]])
    assert program_heads(flip, 0, normalise=False).tolist() == [[N, N, N]]
    assert program_heads(flip, 0, normalise=True).tolist() == [[S, N, N]]


def test_bad_arguments():
    scores = sc([[(0.1, 0.2)] * 3] * 2)
    for bad in (-1, 7):
        with pytest.raises(ValueError, match=r"head count in 0\.\.6"):
            program_heads(scores, bad)
    with pytest.raises(ValueError, match="resolve_dummy_count"):
        program_heads(scores, 0.5)
    with pytest.raises(ValueError, match="scope"):
        program_heads(scores, 1, scope="layer")
    with pytest.raises(ValueError, match=r"\[layers, heads, 3\]"):
        program_heads(scores[..., :2], 1)
    nan = scores.clone()
    nan[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        program_heads(nan, 1)


def test_type_counts():
    a = torch.tensor([[S, D, D], [N, N, S]])
    assert type_counts(a) == [TypeCount(sink=1, neighbor=0, dummy=2), TypeCount(sink=1, neighbor=2, dummy=0)]
    assert type_counts(a.tolist()) == type_counts(a)
    assert type_counts(a)[0]._asdict() == {"sink": 1, "neighbor": 0, "dummy": 2}
