import pytest

from sim.request import RequestSpec, SpecError


def test_valid_spec_properties():
    s = RequestSpec(req_id=1, arrival_time=0.5, prompt_len=10, output_len=5, beam_width=4)
    assert s.num_seqs == 4
    assert s.total_len == 15


@pytest.mark.parametrize(
    "field,value",
    [("prompt_len", 0), ("output_len", -1), ("n", 0), ("beam_width", 0), ("spec_k", -1),
     ("spec_accept", 1.5), ("arrival_time", -1.0), ("arrival_time", float("nan")), ("prefix_unit", 0)],
)
def test_invalid_fields_are_named(field, value):
    kwargs = dict(req_id="r", arrival_time=0.0, prompt_len=1, output_len=1)
    kwargs[field] = value
    with pytest.raises(SpecError, match=field):
        RequestSpec(**kwargs)


def test_n_and_beam_exclusive():
    with pytest.raises(SpecError, match="beam_width"):
        RequestSpec(req_id=0, arrival_time=0, prompt_len=1, output_len=1, n=2, beam_width=2)
