import pytest
from hypothesis import given
from hypothesis import strategies as st
from memloc.core.sites import KINDS, Site, SiteError


@given(st.integers(min_value=0, max_value=10_000), st.sampled_from(KINDS))
def test_text_form_round_trips(layer, kind):
    site = Site(layer, kind)
    assert Site.parse(str(site)) == site
    assert str(site) == f"blocks.{layer}.{kind}"


@pytest.mark.parametrize(
    "text",
    [
        "blocks.-1.out",
        "blocks.01.out",
        "block.1.out",
        "blocks.1.mlp",
        "blocks.1.mlp.pre",
        "blocks..out",
        "",
        "1.out",
    ],
)
def test_parse_is_strict(text):
    with pytest.raises(SiteError):
        Site.parse(text)


def test_bad_values_rejected():
    with pytest.raises(SiteError):
        Site(-1, "out")
    with pytest.raises(SiteError):
        Site(True, "out")
    with pytest.raises(SiteError, match="known kinds"):
        Site(0, "mlp.pre")
