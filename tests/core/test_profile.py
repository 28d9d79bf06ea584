import json
import os
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from planted import make_planted_wan, planted_types, profile_planted  # noqa: E402

from dummy_forcing_core.head_program import HeadType  # noqa: E402
from dummy_forcing_core.heatmap import NO_TYPE_COLOUR, TYPE_COLOURS, head_map_image  # noqa: E402
from dummy_forcing_core.head_profile import FORMAT, HeadProfile  # noqa: E402
from dummy_forcing_core.geometry import ModelGeometry  # noqa: E402
from dummy_forcing_core.wan_model import WanConfig, WanModel  # noqa: E402

FP_WAN = {"num_layers": 30, "num_heads": 12, "head_dim": 128, "dim": 1536}


def random_scores(L, H, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(L, H, 3, generator=g) * 2, dim=-1)


def make_profile(L=30, H=12, D=128, seed=0):
    fp = {"num_layers": L, "num_heads": H, "head_dim": D, "dim": H * D}
    settings = {"sink_frames": 3, "ar_start": 2, "chunk_frames": 3, "sample_fraction": 0.25, "seed": 7,
                "runs": 2, "prompts": ["a cat", "a dog"]}
    return HeadProfile(random_scores(L, H, seed), fp, settings, num_samples=2)


def test_round_trip(tmp_path):
    p = make_profile()
    path = tmp_path / "sub" / "profile.safetensors"
    assert p.save(path) == str(path)
    assert os.listdir(path.parent) == ["profile.safetensors"]  # no temp file left behind
    q = HeadProfile.load(path)
    assert torch.equal(q.scores, p.scores) and q.scores.dtype == torch.float32
    assert q.fingerprint == FP_WAN == p.fingerprint
    assert q.settings == p.settings and q.num_samples == 2
    # overwrite in place
    p2 = make_profile(seed=1)
    p2.save(path)
    assert torch.equal(HeadProfile.load(str(path)).scores, p2.scores)
    assert torch.equal(q.assign(0.5), p.assign(dummy_head_count=180))


def test_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="head profile not found"):
        HeadProfile.load(tmp_path / "missing.safetensors")
    other = tmp_path / "lora.safetensors"
    save_file({"scores": torch.zeros(30, 12, 3)}, str(other), metadata={"ss_network": "lora"})
    with pytest.raises(ValueError, match="not a Dummy Forcing head profile"):
        HeadProfile.load(other)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"this is not a safetensors file at all")
    with pytest.raises(ValueError, match="not a head profile"):
        HeadProfile.load(junk)
    meta = {"format": FORMAT, "version": "1", "fingerprint": json.dumps(FP_WAN), "settings": "{}", "num_samples": "1"}
    bad_shape = tmp_path / "shape.safetensors"
    save_file({"scores": torch.zeros(30, 11, 3)}, str(bad_shape), metadata=meta)
    with pytest.raises(ValueError, match=r"shape \(30, 11, 3\).*30 layers x 12 heads"):
        HeadProfile.load(bad_shape)
    future = tmp_path / "future.safetensors"
    save_file({"scores": torch.zeros(30, 12, 3)}, str(future), metadata=dict(meta, version="99"))
    with pytest.raises(ValueError, match="version"):
        HeadProfile.load(future)
    with pytest.raises(ValueError, match="expected"):
        HeadProfile(torch.zeros(2, 3, 3), FP_WAN)


def test_check_compatible():
    p = make_profile()
    cfg = WanConfig(dim=64, ffn_dim=128, num_heads=4, num_layers=2, in_dim=16, out_dim=16, text_dim=32, freq_dim=32)
    geom = ModelGeometry.of(WanModel(cfg))
    msg = ("head profile was made for a model with 30 layers x 12 heads (head dim 128) but this model has "
           "2 layers x 4 heads (head dim 16); profile it again on this model")
    with pytest.raises(ValueError) as e:
        p.check_compatible(geom)
    assert str(e.value) == msg
    with pytest.raises(ValueError):
        p.check_compatible(geom.fingerprint())
    p.check_compatible(dict(FP_WAN))
    assert p.is_compatible(FP_WAN) and not p.is_compatible(geom)
    small = make_profile(2, 4, 16)
    small.check_compatible(geom)
    small.check_compatible(WanModel(cfg))


def test_from_planted_profiler_and_summary(tmp_path):
    model = make_planted_wan()
    prof = profile_planted(model)
    geom = ModelGeometry.of(model)
    hp = HeadProfile.from_profiler(prof, geom, {"ar_start": 2, "chunk_frames": 3, "runs": 1})
    assert hp.num_samples == 1 and hp.settings["sink_frames"] == 3 and hp.settings["ar_start"] == 2
    assert hp.settings["probe_calls"] == 3
    want = planted_types()
    assert torch.equal(hp.assign(dummy_head_count=4), want)
    assert torch.equal(hp.assign(4 / 12, "per_layer"), want)
    hp.save(tmp_path / "p.safetensors")
    assert torch.equal(HeadProfile.load(tmp_path / "p.safetensors").assign(dummy_head_count=4), want)
    text = hp.summary(want)
    lines = text.splitlines()
    assert len(lines) == 2 + 3
    assert "3 layers x 4 heads (head dim 64)" in lines[0]
    assert "4/12" in lines[1]
    assert "mostly-current  2" in lines[2] and "2 dummy" in lines[2]
    with pytest.raises(ValueError, match="profiler measured"):
        HeadProfile.from_profiler(prof, FP_WAN)


def _cell(img, layer, head, cell=16):
    pitch = cell + 1
    return img[layer * pitch + 1 + cell // 2, head * pitch + 1 + cell // 2].astype(int)


def test_heatmap():
    scores = torch.tensor([[[0.1, 0.1, 0.8], [0.6, 0.2, 0.2], [0.2, 0.7, 0.1]],
                           [[0.0, 0.0, 1.0], [0.3, 0.3, 0.4], [0.05, 0.05, 0.9]]])
    assign = torch.tensor([[2, 0, 1], [2, 0, 1]])
    img = head_map_image(scores, assign, labels=False)
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
    assert img.shape[0] >= 2 * 17 and img.shape[1] >= 3 * 17
    colours = [_cell(img, 0, h) for h in range(3)]
    for i in range(3):
        for j in range(i + 1, 3):
            assert np.abs(colours[i] - colours[j]).sum() > 60
    # the hue follows the type: the dominant channel of each cell is its base colour's
    for h, t in enumerate(assign[1].tolist()):
        assert np.argmax(_cell(img, 1, h)) == int(np.argmax(TYPE_COLOURS[t]))
    # a_current = 1 gives exactly the base colour; more a_current is more saturated (darker)
    assert tuple(_cell(img, 1, 0)) == TYPE_COLOURS[int(HeadType.DUMMY)]
    assert _cell(img, 1, 0).sum() < _cell(img, 0, 0).sum()
    # no assignment: grey
    grey = head_map_image(scores, None, labels=False)
    c = _cell(grey, 1, 0)
    assert c[0] == c[1] == c[2] and tuple(c) == NO_TYPE_COLOUR
    # labelled version and big models stay <= 1024 px wide
    assert head_map_image(scores, assign).dtype == np.uint8
    big = head_map_image(random_scores(40, 128), torch.randint(0, 3, (40, 128)))
    assert big.shape[1] <= 1024 and big.shape[0] > 40 * 4
    with pytest.raises(ValueError):
        head_map_image(scores, assign[:1])


@pytest.mark.parametrize("damage", ["mass_above_one", "rows_not_summing_to_one", "negative", "int_scores",
                                    "fingerprint_list", "fingerprint_strings", "settings_list", "num_samples_text",
                                    "num_samples_zero", "fingerprint_not_json"])
def test_damaged_profiles_are_refused_by_name(tmp_path, damage):
    import json as _json

    from safetensors.torch import save_file
    good = make_profile()
    scores = good.scores.clone()
    meta = {"format": FORMAT, "version": "1", "fingerprint": _json.dumps(good.fingerprint), "settings": "{}",
            "num_samples": "1"}
    if damage == "mass_above_one":
        scores[0, 0] = torch.tensor([1.5, 0.0, -0.5])
    elif damage == "rows_not_summing_to_one":
        scores[1, 2] = torch.tensor([0.5, 0.4, 0.3])
    elif damage == "negative":
        scores[0, 1] = torch.tensor([-0.2, 0.6, 0.6])
    elif damage == "int_scores":
        scores = torch.zeros_like(scores, dtype=torch.int32)
    elif damage == "fingerprint_list":
        meta["fingerprint"] = _json.dumps(list(good.fingerprint.values()))
    elif damage == "fingerprint_strings":
        meta["fingerprint"] = _json.dumps({k: str(v) for k, v in good.fingerprint.items()})
    elif damage == "settings_list":
        meta["settings"] = "[1, 2]"
    elif damage == "num_samples_text":
        meta["num_samples"] = "many"
    elif damage == "num_samples_zero":
        meta["num_samples"] = "0"
    elif damage == "fingerprint_not_json":
        meta["fingerprint"] = "{num_layers: 30"
    path = tmp_path / f"{damage}.safetensors"
    save_file({"scores": scores.contiguous()}, str(path), metadata=meta)
    with pytest.raises(ValueError, match=r"^damaged head profile .*" + damage) as e:
        HeadProfile.load(path)
    assert "TypeError" not in str(e.value)


def test_a_saved_profile_is_a_normal_file(tmp_path):
    import os as _os
    path = make_profile().save(tmp_path / "p.safetensors")
    umask = _os.umask(0)
    _os.umask(umask)
    assert _os.stat(path).st_mode & 0o777 == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == ["p.safetensors"]  # no temp file left
