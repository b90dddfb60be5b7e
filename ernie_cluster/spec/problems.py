"""What a spec check reports: `SpecProblem` (field, message, YAML line), `SpecError` (all of them at once), and
the wording for control characters, the one check every string of a spec passes."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import List, Optional

# C0 controls (tab too), DEL, C1 controls (NEL U+0085 among them) and the Unicode line/paragraph separators.
# Each ends or breaks a line for some reader of the value: bash, sbatch's #SBATCH parser, YAML, a terminal.
CONTROL_CHARS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_CONTROL_NAMES = {"\n": "newline", "\r": "carriage return", "\t": "tab", "\x00": "NUL byte", "\x1b": "escape character",
                  "\x7f": "DEL character", "\x85": "next-line character (U+0085)",
                  "\u2028": "line separator (U+2028)", "\u2029": "paragraph separator (U+2029)"}


def control_character_message(text: str, *, what: str = "") -> Optional[str]:
    """Why `text` cannot go into a script or a command line, or None when it can."""
    m = CONTROL_CHARS.search(text)
    if m is None:
        return None
    char = m.group()
    name = _CONTROL_NAMES.get(char, f"control character {char!r}")
    fix = ("use spaces instead" if char == "\t" else
           "write each line as its own list item" if what == "item" and char in "\n\r\x85\u2028\u2029" else "")
    return (f"{what + ' ' if what else ''}{text!r} contains a {name} at character {m.start() + 1}; control characters "
            f"and line breaks are refused in every value, since one would start a new shell line or #SBATCH directive "
            f"in the rendered scripts: remove the {name}{'; ' + fix if fix else ''}")


def _printable(text: str) -> str:
    return CONTROL_CHARS.sub(lambda m: repr(m.group())[1:-1], text)


@dataclass
class SpecProblem:
    path: str
    message: str
    line: Optional[int] = None

    def render(self, source: str) -> str:
        where = f"{source}:{self.line}" if self.line else source
        return _printable(f"{where}: {self.path or '<top>'}: {self.message}")


class SpecError(Exception):
    """Raised with every problem found in a spec; the CLI prints them and exits 2."""

    def __init__(self, source: str, problems: List[SpecProblem]):
        self.source = source
        self.problems = problems
        super().__init__(self.report())

    def report(self) -> str:
        lines = [f"invalid job spec {self.source} ({len(self.problems)} problem{'s' if len(self.problems) != 1 else ''}):"]
        lines += ["  " + p.render(self.source) for p in self.problems]
        return "\n".join(lines)
