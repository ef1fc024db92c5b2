"""`jaxvlm demo` end to end in its fast mode: runs, prints its table, writes one PNG per photo."""

import pytest

from jaxvlm.cli import main


def test_demo_fast_mode_writes_its_plots(tmp_path, capsys):
    assert main(["demo", "--fast", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "RANDOM weights" in printed and "debiased FastV" in printed
    pngs = sorted(p.name for p in tmp_path.glob("*.png"))
    assert pngs == ["astronaut.png", "chelsea.png"]
    assert all((tmp_path / p).stat().st_size > 10_000 for p in pngs)
    # The debiased row must keep no padding patch (chelsea is 451x300: 192 padding patches).
    debiased = next(line for line in printed.splitlines() if line.startswith("debiased FastV"))
    assert debiased.split()[-1] == "0"


def _budget(label: str) -> int:
    return int(label.rsplit(" ", 1)[-1])


def test_next_view(tmp_path, capsys):
    """The LLaVA-NeXT tile view (fast model, one photo): PNG written, every kept token placed once on the base
    tile / grid / newlines, none on the columns unpadding cut."""
    from experiments import demo_views

    paths, maps = demo_views.run_next(tmp_path, tmp_path / "work", ["chelsea"], seed=0, fast=True)
    assert [p.name for p in paths] == ["next_chelsea.png"] and paths[0].stat().st_size > 10_000
    assert "RANDOM weights" in capsys.readouterr().out
    for label, (m,) in maps.items():
        lay = m["layout"]
        assert (lay.nph, lay.npw, lay.r0, lay.r1) == (1, 2, 0, 24) and lay.c0 > 0  # 451x300: columns cut
        assert m["base"].sum() + m["grid"].sum() + m["newlines"].sum() == _budget(label)
        assert not m["grid"][:, :lay.c0].any() and not m["grid"][:, lay.c1:].any()


def test_video_view(tmp_path, capsys):
    """The Video-LLaVA frame view (fast model): PNG written, every kept token on one of the 8 frames."""
    from experiments import demo_views

    path, frames = demo_views.run_video(tmp_path, tmp_path / "work", "chelsea", seed=0, fast=True)
    assert path.name == "video.png" and path.stat().st_size > 10_000
    assert "RANDOM weights" in capsys.readouterr().out
    for label, m in frames.items():
        assert m["patches"].shape == (8, 16, 16)
        assert m["patches"].sum() + m["cls"].sum() == _budget(label)


@pytest.mark.slow
def test_demo_flags_add_the_next_and_video_pngs(tmp_path):
    assert main(["demo", "--fast", "--next", "--video", "--out", str(tmp_path)]) == 0
    pngs = sorted(p.name for p in tmp_path.glob("*.png"))
    assert pngs == ["astronaut.png", "chelsea.png", "next_astronaut.png", "next_chelsea.png", "video.png"]
