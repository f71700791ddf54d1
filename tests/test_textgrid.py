import pytest

from streamchar.data.textgrid import (
    TextGrid,
    TextGridError,
    Tier,
    format_textgrid,
    intervals_with_gaps,
    parse_textgrid,
)

SHORT = '''File type = "ooTextFile"
Object class = "TextGrid"

0
2.5
<exists>
2
"IntervalTier"
"words"
0
2.5
2
0
1.2
"hi ""there"""
1.2
2.5
""
"TextTier"
"events"
0
2.5
1
0.7
"beep"
'''


def test_short_format():
    grid = parse_textgrid(SHORT)
    assert grid.tier("WORDS").items == [(0.0, 1.2, 'hi "there"'), (1.2, 2.5, "")]
    assert grid.tier("events").items == [(0.7, 0.7, "beep")]


def test_long_format_round_trip():
    words = intervals_with_gaps([("hello", 0.1, 0.5), ("world", 0.6, 1.0)], 2.0)
    grid = TextGrid(0.0, 2.0, [Tier("words", "IntervalTier", 0.0, 2.0, words)])
    again = parse_textgrid(format_textgrid(grid))
    assert again.tier("words").items == words
    assert words[0] == (0.0, 0.1, "") and words[-1] == (1.0, 2.0, "")


@pytest.mark.parametrize("text", ["garbage", 'File type = "ooTextFile"\nObject class = "TextGrid"\n0\n', ""])
def test_malformed(text):
    with pytest.raises(TextGridError):
        parse_textgrid(text)
