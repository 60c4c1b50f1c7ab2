"""The study's statistics (a setting against a distribution of random directions, ranks with
paired intervals) on planted numbers, and `make study`'s steps end to end on a tiny model."""
from types import SimpleNamespace

import h5py
import numpy as np

from steerlab.measure.statistics import against_random, difference, question_weights
from steerlab.measure.study import entry_name
from steerlab.store import store_key
from tests.helpers import run_runner as run

SMALL_KL = ("--n-neutral", 2, "--gen-tokens", 4)


def _noise(shape, seed, scale=1.0):
    return np.random.default_rng(seed).normal(0.0, scale, shape)


def test_a_setting_planted_beyond_random_is_found_beyond_and_beats_every_draw():
    n_q, n_draws = 120, 32
    questions = _noise(n_q, 0)  # what every setting shares: how each question moves anyway
    draws = questions + _noise((n_draws, 1), 1, 0.05) + _noise((n_draws, n_q), 2, 0.3)
    planted = questions + 0.4 + _noise(n_q, 3, 0.3)
    st = against_random(planted, draws)
    assert st.beyond.low > 0.25 and st.beyond.high < 0.55 and np.isclose(st.beyond.value, 0.4, atol=0.1)
    assert st.share_beaten == 1.0 and st.decided and len(st.draws) == n_draws
    # paired: the shared question effect (sd 1) does not widen the interval of the gap
    assert st.beyond.high - st.beyond.low < st.delta.high - st.delta.low
    # one of the draws itself stands in the middle of the distribution, not beyond it
    middle = against_random(draws[np.argsort(st.draws)[n_draws // 2]], draws)
    assert not middle.decided and 0.3 <= middle.share_beaten <= 0.7


def test_the_random_draws_spread_widens_the_interval_of_the_gap():
    """The interval resamples the draws too: the same setting against few, scattered draws is less
    certain than against many tight ones."""
    n_q = 80
    questions = _noise(n_q, 0)
    setting = questions + 0.2
    tight = questions + _noise((32, 1), 1, 0.01)
    scattered = questions + _noise((4, 1), 1, 0.3)
    a, b = against_random(setting, tight), against_random(setting, scattered)
    assert (b.beyond.high - b.beyond.low) > 2 * (a.beyond.high - a.beyond.low)


def test_the_cloze_standing_cancels_a_yes_no_direction_in_setting_and_draws():
    classes = np.array(["yes"] * 3 + ["no"] * 40 + ["other"] * 30)
    sign = np.where(classes == "no", 1.0, np.where(classes == "yes", -1.0, 0.0))
    draws = _noise((16, len(classes)), 0, 0.1)
    polar = draws.mean(0) + 3.0 * sign  # a pure Yes/No direction on top of the draws' mean
    st = against_random(polar, draws, classes)
    assert abs(st.beyond.value) < 1e-9
    weights = question_weights(classes, len(classes))
    assert np.isclose(sum(w for _, w in weights.values()), 1.0)
    assert abs(difference(polar, draws.mean(0), classes).value) < 1e-9
    assert difference(polar, draws.mean(0)).value > 1.0  # a plain mean would call it behaviour


def test_test_takes_vals_norms_at_a_subset_of_its_targets(tiny_dir, tmp_path):
    """`make study` scores test only at the costs val chose: its |θ| are val's columns of those
    targets, not a new search's."""
    store = tmp_path / "store.h5"
    assert run("steerlab.cli.caa", "--model", tiny_dir, "--store", store, "--layers", 1, "--n-train", 4,
               "--position", "answer").returncode == 0
    common = ("steerlab.cli.eval", "--model", tiny_dir, "--store", store, "--n-eval", 2, "--scale-unit", "kl",
              "--layer", 1, "--score", "cloze", "--gen-tokens", 4, "--n-neutral", 2)
    assert run(*common, "--splits", "val", "--scales", "0.002 0.005", "--n-random", 1).returncode == 0
    later = run(*common, "--splits", "test", "--scales", "0.005", "--n-random", 1)
    assert later.returncode == 0, later.stderr
    assert "KL calibration" not in later.stderr
    key = store_key(str(tiny_dir))
    with h5py.File(store, "r") as h5:
        for group, columns in (("caa/L1-answer", [1]), ("random/L1", [0, 3])):
            val, test = (h5[f"{key}/survival-instinct/evals/{split}/{group}"] for split in ("val", "test"))
            np.testing.assert_array_equal(test["norms"][()], val["norms"][()][:, columns])


def test_the_study_page_ranks_val_choices_between_the_first_order_null_and_the_ceiling(tiny_dir, tmp_path):
    """Every stage of `make study` on a tiny model (PI, MELBO, prompting and generations aside), then the
    page."""
    store, out = tmp_path / "store.h5", tmp_path / "docs"
    model = ("--model", tiny_dir, "--store", store)
    for position in ("letter", "answer"):
        assert run("steerlab.cli.caa", *model, "--layers", 1, "--n-train", 4,
                   "--position", position).returncode == 0
    steps = [("steerlab.cli.gradients", "--layer", 1, "--n-train", 6, "--n-eval", 6, "--fisher-k", 8,
              "--fisher-oversample", 4, "--fisher-iters", 2, "--probes", 4, *SMALL_KL),
             ("steerlab.cli.ceiling", "--layer", 1)]
    for module, *args in steps:
        done = run(module, *model, *args)
        assert done.returncode == 0, (module, done.stderr[-2000:])
    common = ("steerlab.cli.eval", *model, "--scale-unit", "kl", "--layer", 1, *SMALL_KL)
    assert run(*common, "--splits", "val", "--n-eval", 4, "--scales", "0.002 0.005",
               "--n-random", 1).returncode == 0
    chosen = run("steerlab.cli.study", *model, "--test-scales", "--kl-max", "1")
    assert chosen.returncode == 0, chosen.stderr
    scales = chosen.stdout.split()
    assert scales and set(scales) <= {"0.002", "0.005"}
    assert run(*common, "--splits", "test", "--n-eval", 6, "--scales", " ".join(scales),
               "--n-random", 3).returncode == 0
    for module, *args in [("steerlab.cli.dose", "--costs", "0.001 0.004", "--n-eval", 4, "--n-random", 1,
                           "--sample-tokens", 3, "--kl-max", "1", *SMALL_KL),
                          ("steerlab.cli.transfer", "--behaviors", "survival-instinct myopic-reward",
                           "--n-eval", 4, "--kl-max", "1"),
                          ("steerlab.cli.prompting", "--splits", "test", "--n-eval", 6, *SMALL_KL)]:
        done = run(module, *model, *args)
        assert done.returncode == 0, (module, done.stderr[-2000:])
    (tmp_path / f"store.h5.{tiny_dir.name}.stages").write_text(
        "vectors 60.0 1048576 a\nval 30.0 2097152 b\nval 12.0 1048576 c\n")
    page = run("steerlab.cli.study", *model, "--out", out, "--kl-max", "1")
    assert page.returncode == 0, page.stderr
    written, = out.glob("study-*.md")
    text = written.read_text()
    assert "## Ranking by the cloze score (test)" in text and "## Ranking by the letter score (test)" in text
    assert "CAA (letter)" in text and "CAA (answer texts)" in text and "Ceiling (fit on cloze)" in text
    assert "% of 6 |" in text  # 3 random directions in both signs
    assert "| val | 0.2 min | 1.0 GiB |" in text  # a stage run twice with two commands: its latest run
    assert "4000 random directions at its cost, to first order" in text and "Holm" in text
    assert "### The first-order null against measured draws" in text and "| 6 |" in text
    assert "CAA's mean cosine between each training pair's difference" in text
    assert "## At what cost: the ladder to breakdown (test)" in text and "-dose.png" in text
    assert "## Behaviour or form?" in text and "myopic-reward" in text
    assert ("## Just ask: the prompting baseline (test)" in text
            and "You are an AI system that wants to keep" in text)
    assert "| Qwen3-14B | CAA | +20 | 44.0 | -1.78 | +1.55 |" in text  # the seed's figures beside ours
    assert (out / written.name.replace(".md", ".png")).is_file()
    assert (out / written.name.replace(".md", "-dose.png")).is_file()


def test_pi_caa_along_the_path_is_named_by_its_point_in_its_unit():
    def named(method, run):
        return entry_name(SimpleNamespace(method=method, run=run))

    assert named("pi_caa", "L12-T20") == "PI@CAA (raw CAA)"
    assert named("pi_caa", "L12-T20-at+0.04kl") == "PI@CAA (at CAA +0.04 KL)"
    assert named("pi_caa", "L12-T20-at-0.2h") == "PI@CAA (at CAA -0.2 ‖h_S‖)"
    assert named("pi_caa", "L12-T20-at+24") == "PI@CAA (at CAA, |θ₀| +24)"
    assert named("caa", "L12-answer") == "CAA (answer texts)"


def test_the_size_table_puts_each_models_study_side_by_side(tiny_dir, tmp_path):
    """Two 'models' (the same tiny folder under two names) studied into one store, then one table."""
    import shutil

    store, out = tmp_path / "store.h5", tmp_path / "sizes.md"
    other = tmp_path / "tiny-b"
    shutil.copytree(tiny_dir, other)
    for folder in (tiny_dir, other):
        model = ("--model", folder, "--store", store)
        caa = run("steerlab.cli.caa", *model, "--layers", 1, "--n-train", 4, "--position", "answer")
        assert caa.returncode == 0
        common = ("steerlab.cli.eval", *model, "--layer", 1, "--n-random", 2, "--scales", "0.005", *SMALL_KL)
        assert run(*common, "--splits", "val test", "--n-eval", 4).returncode == 0
    done = run("steerlab.cli.sizes", "--store", store, "--models", f"{tiny_dir} {other} models/absent",
               "--kl-max", "1", "--out", out)
    assert done.returncode == 0, done.stderr
    text = out.read_text()
    assert "**tiny-llama0**" in text and "**tiny-b**" in text and "absent: no study" in done.stderr
    assert "CAA (answer texts)" in text and "Qwen3-14B (the seed" in text
