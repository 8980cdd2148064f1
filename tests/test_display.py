"""The display vocabulary (:mod:`gradsight.display`): one name, time, number and colour everywhere."""

from __future__ import annotations

import warnings

import pytest

import gradsight as gs
from gradsight import display
from gradsight.display import ROOT_DISPLAY_NAME, display_name, format_time, lut, short_label, summary_rows
from gradsight.plots.style import MOVED
from gradsight.store.query import run_summary


def test_the_root_module_has_one_display_name():
    assert display_name("") == ROOT_DISPLAY_NAME == "(model)"
    assert display_name("blocks.fc0") == "blocks.fc0"
    assert short_label("") == ROOT_DISPLAY_NAME
    assert str(gs.Finding("x", "info", "m", layers=[""])).endswith(f"[{ROOT_DISPLAY_NAME}]")


def test_unknown_times_read_as_a_dash():
    assert format_time(None) == "-" and format_time("x") == "-" and format_time(float("inf")) == "-"


@pytest.mark.parametrize("n", [1, 2, 7, 10, 100, 255, 256, 257, 1000])
def test_the_colour_table_is_matplotlibs_colour_map(n):
    import matplotlib

    cm = matplotlib.colormaps[display.CMAP].resampled(n)
    expected = tuple("#{:02x}{:02x}{:02x}".format(*(round(c * 255) for c in cm(i)[:3])) for i in range(n))
    assert lut(display.CMAP, n) == expected


def test_other_colour_maps_come_from_matplotlib():
    colors = lut("magma", 5)
    assert len(colors) == 5 and colors != lut(display.CMAP, 5) and all(c.startswith("#") for c in colors)


@pytest.mark.parametrize("name", sorted(MOVED))
def test_the_old_home_of_the_display_names_still_answers_with_a_warning(name):
    import gradsight.plots.style as style

    with pytest.warns(DeprecationWarning, match=f"gradsight.display.{name}"):
        assert getattr(style, name) is getattr(display, name)


def test_from_import_of_the_old_home_warns():
    with pytest.warns(DeprecationWarning, match="gradsight.display.fmt_value"):
        from gradsight.plots.style import fmt_value
    assert fmt_value is display.fmt_value


def test_run_summary_rows_is_a_deprecated_alias_of_summary_rows(tiny_run):
    with gs.open_run(tiny_run) as run:
        s = run_summary(run, with_layers=False)
    with pytest.warns(DeprecationWarning, match="summary_rows"):
        old = s.rows(tiny_run.parent)
    assert old == summary_rows(s, tiny_run.parent) and old[0] == ("run", "tiny_run")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert summary_rows(s)[0] == ("run", str(s.path))


def test_short_labels_drop_the_shared_prefix_and_cut_at_dots():
    """Labels used to keep the last characters (``…ion.output.dense``, cut in a name's
    middle) and to repeat what every name shares (``bert.encoder.``); they drop the shared
    dotted prefix and keep whole trailing parts."""
    from gradsight.display import short_labels

    names = ["bert.encoder.layer.0.attention.self.query", "bert.encoder.layer.11.attention.output.dense",
             "bert.pooler.dense"]
    labels = short_labels(names)
    assert labels == ["…0.attention.self.query", "…11.attention.output.dense", "pooler.dense"]
    assert all(len(label) <= 28 for label in labels)
    assert short_label("stages.3.blocks.11.token_mixer.talking_head1") == "…token_mixer.talking_head1"
    assert short_label("a" * 40) == "…" + "a" * 27  # one part longer than the room: its end
    assert short_labels(["x.a", "x.b"]) == ["a", "b"] and short_labels(["only.one"]) == ["only.one"]


def test_short_labels_that_would_repeat_all_say_which_name_they_are():
    """The first of several names ending alike (``…attention.output.LayerNorm`` of every
    block) kept the short label, which named no block; every one of them gets the longer one."""
    from gradsight.display import short_labels

    names = [f"bert.encoder.layer.{i}.attention.output.LayerNorm" for i in range(3)] + ["bert.pooler.dense"]
    assert short_labels(names) == [f"…layer.{i}.attention.output.LayerNorm" for i in range(3)] + ["pooler.dense"]
