"""Re-ranking and SKU scoring against plain loops, and the fixed crop views."""

import numpy as np
import pytest
from PIL import Image

from prodsearch.indexer.rerank import alpha_qe, dba, normalized, sku_scores
from prodsearch.retrieval.views import MAX_VIEWS, crop_views


def unit(rng, n, d=8):
    return normalized(rng.normal(size=(n, d)).astype(np.float32))


def loop_neighbour_mean(vectors, database, k, alpha, exclude_self):
    out = []
    for i, v in enumerate(vectors):
        sims = [(float(v @ d), j) for j, d in enumerate(database) if not (exclude_self and j == i)]
        total = v.astype(np.float64).copy()
        for s, j in sorted(sims, reverse=True)[:k]:
            total += max(s, 0.0) ** alpha * database[j]
        out.append(total / np.linalg.norm(total))
    return np.array(out)


@pytest.mark.parametrize("k,alpha", [(1, 3.0), (2, 3.0), (3, 1.0)])
def test_alpha_qe_and_dba_match_a_loop(k, alpha):
    rng = np.random.default_rng(k)
    queries, database = unit(rng, 7), unit(rng, 12)
    np.testing.assert_allclose(alpha_qe(queries, database, k, alpha),
                               loop_neighbour_mean(queries, database, k, alpha, False), atol=1e-5)
    np.testing.assert_allclose(dba(database, k, alpha), loop_neighbour_mean(database, database, k, alpha, True),
                               atol=1e-5)


def test_k_zero_changes_nothing_and_dba_does_not_count_a_photo_twice():
    rng = np.random.default_rng(0)
    database = unit(rng, 5)
    np.testing.assert_allclose(alpha_qe(database, database, k=0), database, atol=1e-6)
    far = normalized(np.eye(4, dtype=np.float32))  # orthogonal rows: no neighbour has a positive weight
    np.testing.assert_allclose(dba(far, k=2), far, atol=1e-6)


def test_query_expansion_pulls_a_query_towards_its_nearest_catalog_photo():
    database = normalized(np.array([[1, 0, 0], [0, 1, 0]], np.float32))
    query = normalized(np.array([[0.8, 0.6, 0.3]], np.float32))
    expanded = alpha_qe(query, database, k=1)
    assert expanded @ database[0] > query @ database[0]


@pytest.mark.parametrize("how", ["max", "mean-top"])
def test_sku_scores_match_a_loop(how):
    rng = np.random.default_rng(3)
    scores = rng.uniform(-1, 1, size=(4, 9)).astype(np.float32)
    image_skus = np.array(list("abcaabccb"))
    image_skus[8] = "d"  # one SKU with a single photo
    skus, out = sku_scores(scores, image_skus, how, top=2)
    assert list(skus) == ["a", "b", "c", "d"]
    for q in range(4):
        for j, sku in enumerate(skus):
            mine = sorted((scores[q, i] for i in range(9) if image_skus[i] == sku), reverse=True)
            expected = mine[0] if how == "max" else np.mean(mine[:2])
            assert out[q, j] == pytest.approx(expected, abs=1e-6)


def test_sku_scores_refuses_an_unknown_rule():
    with pytest.raises(ValueError, match="max"):
        sku_scores(np.zeros((1, 1)), np.array(["a"]), "median")


def test_crop_views_are_the_photo_then_centre_and_corner_crops():
    img = Image.new("RGB", (100, 60))
    img.paste((255, 0, 0), (0, 0, 10, 10))  # a red top-left corner
    views = crop_views(img, MAX_VIEWS)
    assert views[0] is img and len(views) == MAX_VIEWS
    assert all(v.size == (70, 42) for v in views[1:])
    assert views[2].getpixel((0, 0)) == (255, 0, 0)  # top-left crop keeps the corner
    assert views[1].getpixel((0, 0)) == (0, 0, 0) and views[5].getpixel((0, 0)) == (0, 0, 0)
    assert [v.tobytes() for v in crop_views(img, 3)] == [v.tobytes() for v in views[:3]]
    with pytest.raises(ValueError):
        crop_views(img, MAX_VIEWS + 1)
