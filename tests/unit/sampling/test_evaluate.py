"""Which epoch to keep: the recommendation rule on built curves, and losses at fixed noise per epoch."""

import pytest
from PIL import Image

from lorasmith.errors import ToolError
from lorasmith.sampling.evaluate import evaluate_run, recommend_epoch


def curve(values, first=1):
    return {first + i: v for i, v in enumerate(values)}


def test_u_shape_picks_the_bottom():
    assert recommend_epoch(curve([1.0, 0.8, 0.6, 0.5, 0.55, 0.65, 0.8])) == 4


def test_monotone_decreasing_picks_the_last():
    assert recommend_epoch(curve([1.0, 0.9, 0.8, 0.7, 0.65, 0.6])) == 6
    assert recommend_epoch({2: 0.5, 4: 0.4, 6: 0.3, 10: 0.2}) == 10  # sparse epochs, unsorted keys fine


def test_noise_does_not_stop_the_walk_early():
    # a one-epoch bump after epoch 2 is noise; the loss keeps falling to epoch 6, then rises for good
    assert recommend_epoch(curve([1.0, 0.7, 0.72, 0.5, 0.53, 0.49, 0.6, 0.7, 0.8])) == 6
    # rises smaller than the tolerance (1 %) are flat, not a rise
    assert recommend_epoch(curve([1.0, 0.5, 0.502, 0.503, 0.45, 0.6, 0.7])) == 5


def test_first_minimum_with_a_sustained_rise_wins_over_a_later_dip():
    # over-fitting after epoch 3; the late dip (epoch 7) comes after the LoRA has already burnt
    assert recommend_epoch(curve([1.0, 0.6, 0.5, 0.6, 0.7, 0.8, 0.45])) == 3


def test_ties_and_edges():
    assert recommend_epoch({1: 0.5, 2: 0.5, 3: 0.5}) == 1
    assert recommend_epoch({7: 0.3}) == 7
    assert recommend_epoch(curve([0.4, 0.6, 0.7])) == 1
    with pytest.raises(ToolError, match="no validation losses"):
        recommend_epoch({})


def test_evaluate_run_scores_every_epoch_at_fixed_noise(sd1, run_dir, tmp_path):
    from tests.conftest import write_image

    images = [write_image(tmp_path / "img" / f"{i}.png", seed=i) for i in range(2)]
    (tmp_path / "img" / "0.txt").write_text("mychar, 1girl")
    seen = []

    def recording_loss(base, latents, context, draw, pooled, time_ids):
        from lorasmith.train.step import denoising_loss

        seen.append((draw.noise.clone(), draw.timesteps.clone(), latents.shape))
        return denoising_loss(base, latents, context, draw, pooled, time_ids)

    events = []
    report = evaluate_run(run_dir, sd1, images, resolution=64, timesteps=3, loss_fn=recording_loss,
                          output_dir=tmp_path / "eval", events=events.append)
    assert sorted(report.losses) == [1, 2, 3] and report.recommended_epoch in report.losses
    assert report.recommended_epoch == recommend_epoch(report.losses)
    assert len(set(report.losses.values())) == 3 and report.base_loss not in report.losses.values()
    # 4 passes (base + 3 epochs) x 2 images, the same noise and timesteps for each pass
    assert len(seen) == 8
    for index in range(2, 8):
        noise, steps, shape = seen[index]
        assert shape[0] == 3 and steps.tolist() == [166, 500, 833]
        assert noise.equal(seen[index % 2][0])
    again = evaluate_run(run_dir, sd1, images, resolution=64, timesteps=3, output_dir=tmp_path / "eval2")
    assert again.losses == pytest.approx(report.losses, rel=0, abs=0)  # deterministic
    assert Image.open(report.plot_path).size == (640, 360)
    table = report.table_path.read_text().splitlines()
    assert table[0] == "epoch,validation_loss,file,recommended" and len(table) == 4
    lines = report.lines()
    assert any("<- recommended" in line for line in lines) and lines[-1].startswith("recommended: epoch")
    assert [e.done for e in events if hasattr(e, "done")] == [1, 2, 3]


def test_a_missing_run_folder_is_named_as_missing(tmp_path):
    from lorasmith.sampling.evaluate import evaluation_images

    with pytest.raises(ToolError, match="run folder '.*nope' does not exist; give the output_dir of a training run"):
        evaluation_images(tmp_path / "nope")
    with pytest.raises(ToolError, match="has no run record"):  # a folder, but not a run's
        evaluation_images(tmp_path)
