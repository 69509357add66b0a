"""A few realistic stubs for docsmith to fill in.

Run: docsmith generate examples/stubs.py --function slugify --yes
"""

import re


def slugify(title: str) -> str:
    """Turn a title into a URL slug: lower case, words joined by single hyphens,
    anything that is not a letter or a digit dropped.

    >>> slugify("Hello, World!")
    'hello-world'
    >>> slugify("  Rust  &  Python  ")
    'rust-python'
    >>> slugify("")
    ''
    """
    ...


def running_max(values: list[int]) -> list[int]:
    """Return the running maximum of `values`: element i is the largest of values[0..i].

    >>> running_max([3, 1, 4, 1, 5])
    [3, 3, 4, 4, 5]
    >>> running_max([])
    []
    """
    pass


def parse_duration(text: str) -> int:
    """Parse a duration such as "1h30m", "45s" or "2m5s" into whole seconds.
    Units are h, m and s, each at most once, in that order.
    Raise ValueError for anything else.

    >>> parse_duration("1h30m")
    5400
    >>> parse_duration("45s")
    45
    >>> parse_duration("2m5s")
    125
    """
    raise NotImplementedError


def is_valid_isbn10(code: str) -> bool:
    """Check an ISBN-10: ten characters, digits except that the last may be 'X' (10);
    valid when sum of (10 - i) * digit_i over i = 0..9 is divisible by 11.
    Hyphens are ignored.

    is_valid_isbn10("0-306-40615-2") == True
    is_valid_isbn10("0306406153") == False
    is_valid_isbn10("080442957X") == True
    """
