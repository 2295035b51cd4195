from infra.benches.similar import arguments_parser, blends
from schemas.runtime.loaded_bundle import SERVED_SIMILARITY, SimilarityWeights


def tried(argv: list[str]) -> list[SimilarityWeights]:
    measured = blends(arguments_parser().parse_args(argv))
    assert [weights for _, weights in measured[:3]] == [
        SimilarityWeights(0.0, 0.0),
        SimilarityWeights(SERVED_SIMILARITY.co_watched, 0.0, co_watched_power=SERVED_SIMILARITY.co_watched_power),
        SERVED_SIMILARITY,
    ]
    return [weights for _, weights in measured[3:]]


def test_without_options_only_the_served_blend_and_those_before_it_are_measured():
    assert tried([]) == []


def test_each_combination_of_the_values_given_is_tried_with_the_served_values_of_the_rest():
    served = SERVED_SIMILARITY
    assert tried(["--co-watched-powers", "0.5", "--title-weights", "0.25,1"]) == [
        SimilarityWeights(served.co_watched, 0.25, served.title_floor, 0.5),
        SimilarityWeights(served.co_watched, 1.0, served.title_floor, 0.5),
    ]
    assert len(tried(["--co-watched-weights", "0.25,0.5,1", "--title-floors", "0,0.5"])) == 6 - 1  # one is served
