"""The WER helper used by the speech tests."""

from tests.wer import corpus_wer, wer


def test_wer_counts_substitutions_insertions_deletions():
    """One substitution, one deletion and one insertion over four reference words."""
    assert wer("a red fox sits", "a red fox sits") == 0.0
    assert wer("a red fox sits", "A red box sits.") == 0.25
    assert wer("a red fox sits", "red fox sits") == 0.25
    assert wer("a red fox sits", "a red fox sits down") == 0.25
    assert corpus_wer([("a b", "a"), ("c d e f", "c d e f")]) == 1 / 6
