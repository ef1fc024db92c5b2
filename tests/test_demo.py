"""`jaxvlm demo` end to end in its fast mode: runs, prints its table, writes one PNG per photo."""

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
