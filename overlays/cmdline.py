"""Kernel command lines that pass unchanged through an iPXE script, a GRUB entry and the kernel's own parser.

A profile's command line is written into layerbootd's per-MAC iPXE script (``kernel URL <cmdline> layerboot.*``)
and into the GRUB entry of an A/B slot. Neither is a place where text may become commands. iPXE's rules (its
``src/core/script.c`` and ``src/core/exec.c``):

* a script line ends at ``\\n`` (a ``\\r`` before it is dropped); a line ending in ``\\`` continues on the next;
* a line is split into words at any whitespace (space, tab, ``\\v``, ``\\f``, ``\\r``); there is no quoting and no
  escaping: quotes and backslashes are ordinary characters;
* a word that *starts* with ``#`` starts a comment (the rest of the line is ignored); a word that *is* ``||``,
  ``&&`` or ``;`` ends the command and starts another (run on failure, on success, always);
* ``${name}`` inside a word is replaced by iPXE setting ``name`` (any ``${`` ... ``}``);
* ``kernel`` takes options (``-n``, ``--name``) only before its first non-option word, the URL, which layerbootd
  writes itself: words after it are the image's command line, joined again with single spaces.

The kernel itself splits at spaces and lets double quotes group words (``foo="a b"``): an unbalanced quote would
make it read the rest of the line, layerbootd's own ``layerboot.*`` options included, as one value.

:func:`check_cmdline` refuses whatever would change a script's commands or the kernel's view of the line, with
one line naming the word; :func:`check_ipxe_word` does the same for a single value (a MAC, URL, token, name).
GRUB entries have their own quoting: :func:`grub_words`.
"""

from __future__ import annotations

from layerboot.errors import LayerbootError
from layerboot.safetext import printable

MAX_CMDLINE = 1536          # the kernel keeps 2048 bytes (x86); layerbootd appends ~250 of its own
IPXE_SEPARATORS = ("||", "&&", ";")
HINT = ("words like a||b, x;y or foo#bar are fine; '||', '&&', ';', '#...' alone, '${', tabs and newlines are not "
        "(docs/server.md, 'The iPXE script')")


class CmdlineError(LayerbootError):
    pass


def _word_problem(word: str) -> str | None:
    """Why one space-free word would change an iPXE script's commands, or None."""
    if word.startswith("#"):
        return f"word {word!r} starts with '#', which iPXE reads as a comment (the rest of the line is dropped)"
    if word in IPXE_SEPARATORS:
        return f"word {word!r} is an iPXE command separator (it would start another command)"
    if "${" in word:
        return f"word {word!r} contains '${{', which iPXE replaces with the value of a setting"
    return None


def cmdline_problem(text: str) -> str | None:
    """Why ``text`` cannot be a profile's kernel command line, or None when it is fine."""
    if len(text) > MAX_CMDLINE:
        return f"it is {len(text)} characters long; at most {MAX_CMDLINE} (the kernel keeps 2048 bytes)"
    for index, ch in enumerate(text):
        if not " " <= ch <= "~":
            return (f"character {index + 1} is '{printable(ch)}': only printable ASCII and plain spaces "
                    "(tabs and newlines would split iPXE's script)")
    for word in text.split():
        problem = _word_problem(word)
        if problem:
            return problem
    if text.count('"') % 2:
        return ("it has an unbalanced double quote: the kernel would read the rest of the line, layerbootd's own "
                "options included, as one value")
    if text.rstrip().endswith("\\"):
        return "it ends with a backslash, which joins the next line of iPXE's script to it"
    return None


def check_cmdline(text: str, *, what: str = "the kernel command line") -> str:
    """Return ``text`` if it is a safe command line; CmdlineError (one line + hint) otherwise."""
    if not isinstance(text, str):
        raise CmdlineError(f"{what} must be a string")
    problem = cmdline_problem(text)
    if problem:
        raise CmdlineError(f"{what} is refused: {problem}", hint=HINT)
    return text


def check_ipxe_word(value: str, what: str) -> str:
    """A value layerbootd writes into an iPXE script as (part of) one word: no spaces, no script syntax."""
    if not value or not all("!" <= ch <= "~" for ch in value):
        raise CmdlineError(f"{what} '{printable(value)}' cannot go into an iPXE script: it must be non-empty "
                           "printable ASCII without spaces")
    problem = _word_problem(value)
    if problem or value.endswith("\\"):
        raise CmdlineError(f"{what} cannot go into an iPXE script: {problem or 'it ends with a backslash'}")
    return value


def grub_words(text: str) -> str:
    """``text`` as GRUB script words, each single-quoted so GRUB's ``$``, ``;``, ``|``, ``&``, ``#``, ``{`` stay
    literal. Words with quotes or backslashes are refused: GRUB hands them to the kernel with added backslashes."""
    check_cmdline(text)
    for word in text.split():
        if any(ch in word for ch in "\"'\\"):
            raise CmdlineError(f"word {word!r} of the command line has a quote or backslash, which GRUB would "
                               "pass to the kernel escaped", hint=HINT)
    return " ".join(f"'{word}'" for word in text.split())
