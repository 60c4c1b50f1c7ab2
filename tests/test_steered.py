"""The steered forward (steerlab.lm.steered): both scores of a question as one request, its letter
prompts and cloze answers sharing the question's stem, against the plain twins (a full HF forward
with θ hooked in), and stems that share nothing beyond the opening."""
import pytest
import torch

from steerlab.lm.steered import steered_logits
from steerlab.measure.reference import cloze_plain, letter_plain
from steerlab.measure.scores import score, usable_questions
from tests.helpers import scaled_directions

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_qwen3"])
def test_both_scores_with_a_shared_stem_equal_the_plain_twins_in_fp64(name, request, ab_items):
    lm = request.getfixturevalue(name)
    answers, cloze, skipped = usable_questions(lm.tokenizer, ab_items, "both", "both")
    assert not skipped and len(answers) == 2 * len(cloze)
    thetas, pad = scaled_directions(lm.d_model), lm.tokenizer.pad_token_id
    fast = score(lm.model, answers, 2, [], source_layer=1, thetas=thetas, pad_id=pad, batch_size=2,
                 settings_per_pass=3, cloze=cloze)
    letter = letter_plain(lm.model, answers, 1, thetas, pad)
    n_q = len(cloze)
    assert abs(fast.logit_diff - letter.logit_diff.numpy().reshape(4, 2, n_q)).max() < 1e-9
    assert abs(fast.answer_mass - letter.answer_mass.numpy().reshape(4, 2, n_q)).max() < 1e-9
    assert abs(fast.cloze - cloze_plain(lm.model, cloze, 1, thetas, pad).numpy()).max() < 1e-9
    assert abs(fast.cloze[3] - fast.cloze[0]).max() > 1e-4  # θ really steers


def test_sharing_nothing_gives_the_same_numbers_and_batches_do_not_matter(tiny_qwen3, ab_items):
    answers, cloze, _ = usable_questions(tiny_qwen3.tokenizer, ab_items, "both", "both")
    thetas, pad = scaled_directions(tiny_qwen3.d_model), tiny_qwen3.tokenizer.pad_token_id
    args = dict(source_layer=2, thetas=thetas, pad_id=pad, cloze=cloze)
    shared = score(tiny_qwen3.model, answers, 2, [], batch_size=3, settings_per_pass=2, **args)
    whole = score(tiny_qwen3.model, answers, 2, [], batch_size=3, settings_per_pass=2, share=False, **args)
    single = score(tiny_qwen3.model, answers, 2, [], batch_size=1, settings_per_pass=1, **args)
    for other in (whole, single):
        assert abs(shared.logit_diff - other.logit_diff).max() < 1e-10
        assert abs(shared.cloze - other.cloze).max() < 1e-10


def test_stems_that_diverge_right_after_the_opening_read_what_each_sequence_alone_reads(tiny_llama):
    """Two stems: one whose sequences share 4 tokens beyond the opening, one whose sequences part
    at once (its stem is the opening alone); reads at several positions, one right after the
    opening."""
    opening = (1, 5, 9)
    sequences = [opening + (11, 12, 13, 14, 20, 21), opening + (11, 12, 13, 14, 30),
                 opening + (40, 41, 42), opening + (50, 51)]
    read_at = [[7, 8], [7], [3, 4, 5], [3, 4]]
    thetas = scaled_directions(tiny_llama.d_model)
    pad = tiny_llama.tokenizer.pad_token_id

    def logits(stems, share):
        out = {}
        for done in steered_logits(tiny_llama.model, sequences, read_at, 1, thetas=thetas, pad_id=pad,
                                   stems=stems, batch_size=2, settings_per_pass=3, share=share):
            start = 0
            for i, count in zip(done.sequences, done.counts):
                out.setdefault(i, {})[done.settings.start] = done.logits[:, start:start + count]
                start += count
        return {i: torch.cat([by[s] for s in sorted(by)]) for i, by in out.items()}

    plain = logits(None, False)
    for stems in ([0, 0, 1, 1], [0, 0, 0, 0], None):
        found = logits(stems, True)
        assert all((found[i] - plain[i]).abs().max() < 1e-9 for i in range(len(sequences)))


def test_read_positions_outside_a_sequence_are_refused(tiny_llama):
    with pytest.raises(ValueError, match="outside a sequence"):
        next(steered_logits(tiny_llama.model, [(1, 2, 3)], [[3]], 1, thetas=torch.zeros(1, tiny_llama.d_model,
                                                                                         dtype=torch.float64),
                            pad_id=0))


def test_a_mirrored_only_eval_keeps_every_question_in_the_cloze_score(smol_tokenizer, ab_items):
    answers, cloze, skipped = usable_questions(smol_tokenizer, ab_items, "mirrored", "both")
    assert not skipped and len(answers) == len(cloze) == len(ab_items)


def test_continuations_are_bucketed_by_length_so_short_ones_are_not_padded_to_long_ones():
    from steerlab.lm.steered import tail_buckets

    lengths = [24, 7, 33, 9, 46, 12, 6, 14]
    buckets = tail_buckets(lengths)
    assert sorted(i for b in buckets for i in b) == list(range(len(lengths)))
    assert all(max(lengths[i] for i in b) <= 1.5 * min(lengths[i] for i in b) for b in buckets)
    assert [[lengths[i] for i in b] for b in buckets] == [[6, 7, 9], [12, 14], [24, 33], [46]]
