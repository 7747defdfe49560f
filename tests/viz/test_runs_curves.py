"""Runs side by side at equal budgets (viz.run_budget, viz.plot_runs, `minicaps curves`)."""
import json

import pytest

from minicaps import cli, viz


def write_run(folder, epochs):
    """A run folder whose metrics.jsonl has the given (images, seconds, test, avg_test)."""
    folder.mkdir()
    lines = [{"epoch": e + 1, "step": 10 * (e + 1), "lr": 1e-3, "train_loss": 0.1,
              "train_accuracy": 0.9, "epoch_seconds": sec, "images_per_second": n / sec,
              "test_accuracy": acc, "avg_test_accuracy": avg, "test_n": 100}
             for e, (n, sec, acc, avg) in enumerate(epochs)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in lines))
    return folder


def test_run_budget_sums_images_and_seconds_and_takes_the_average(tmp_path):
    run = write_run(tmp_path / "a", [(600, 30.0, 0.5, 0.6), (600, 20.0, 0.7, 0.8),
                                     (300, 15.0, 0.75, 0.85)])
    seen, seconds, accuracy = viz.run_budget(viz.read_metrics(run / "metrics.jsonl"))
    assert seen == [600, 1200, 1500]
    assert seconds == pytest.approx([30.0, 50.0, 65.0])
    assert accuracy == [0.6, 0.8, 0.85]          # the moving average's, which the run keeps


def test_run_budget_takes_the_trained_accuracy_where_an_epoch_has_no_average(tmp_path):
    run = write_run(tmp_path / "a", [(600, 30.0, 0.5, None), (600, 20.0, 0.7, 0.8)])
    assert viz.run_budget(viz.read_metrics(run / "metrics.jsonl"))[2] == [0.5, 0.7]
    with pytest.raises(ValueError, match="not every epoch has a val accuracy"):
        viz.run_budget(viz.read_metrics(run / "metrics.jsonl"), split="val")


def test_minicaps_curves_draws_two_runs_on_one_picture(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    a = write_run(tmp_path / "capsnet", [(60000, 600.0, 0.6, 0.62), (60000, 590.0, 0.7, 0.72)])
    b = write_run(tmp_path / "cnn", [(60000, 1800.0, 0.65, 0.66)])
    out = tmp_path / "pictures"
    assert cli.main(["curves", str(a), str(b / "metrics.jsonl"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "capsnet: 2 epochs, 120,000 images seen, 1,190 s of training" in printed
    assert "cnn: 1 epochs, 60,000 images seen, 1,800 s" in printed
    assert (out / "runs.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_minicaps_curves_says_which_path_holds_no_run(tmp_path, capsys):
    assert cli.main(["curves", str(tmp_path / "nothing"), "--out", str(tmp_path)]) != 0
    assert "no metrics file" in capsys.readouterr().err
