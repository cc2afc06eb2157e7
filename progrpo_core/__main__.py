import sys
import warnings
from pathlib import Path

_PACKAGE = str(Path(__file__).resolve().parent)
_default_show = warnings.showwarning


def _show(message, category, filename, lineno, file=None, line=None):
    """The pack's own warnings as one line for the user ("warning: …"); others as Python prints them."""
    if str(Path(filename).resolve()).startswith(_PACKAGE):
        print(f"warning: {message}", file=file or sys.stderr)
    else:
        _default_show(message, category, filename, lineno, file, line)


warnings.showwarning = _show

try:
    from .cli import main

    code = main()
except KeyboardInterrupt:  # Ctrl-C while the imports load (torch takes seconds), before main's own handler
    print("interrupted", file=sys.stderr)
    code = 130
sys.exit(code)
