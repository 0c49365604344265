import numpy as np
import pytest

from stackrec.vocab import PAD, UnknownIdError, Vocabulary


def test_add_appends_unseen_ids_in_first_seen_order():
    vocab = Vocabulary()
    assert vocab.add(["b", "a", "b", "c"]) == 3
    assert vocab.add(["c", "d"]) == 1
    assert vocab.ids == [PAD, "b", "a", "c", "d"]
    assert len(vocab) == 5
    assert vocab.id_of(2) == "a"


def test_lookup_returns_int64_indices_in_input_shape():
    vocab = Vocabulary.from_ids([PAD, "x", "y"])
    np.testing.assert_array_equal(vocab.lookup(["y", "x", "y"]), [2, 1, 2])
    assert vocab.lookup(np.array(["x"])).dtype == np.int64
    assert vocab.lookup([]).shape == (0,)


def test_lookup_names_the_unknown_id():
    vocab = Vocabulary.from_ids([PAD, "x"])
    with pytest.raises(UnknownIdError, match=r"'nope' \(and 1 more\)"):
        vocab.lookup(["x", "nope", "zzz"])


def test_padding_token_is_not_an_id():
    vocab = Vocabulary()
    with pytest.raises(UnknownIdError):
        vocab.lookup([PAD])
    with pytest.raises(ValueError, match="padding"):
        vocab.add([PAD])
    assert PAD not in vocab


def test_from_ids_requires_pad_first_and_unique_ids():
    with pytest.raises(ValueError, match="pad token"):
        Vocabulary.from_ids(["a", PAD])
    with pytest.raises(ValueError, match="duplicate"):
        Vocabulary.from_ids([PAD, "a", "a"])
