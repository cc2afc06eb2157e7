import sys

try:
    from .cli import main

    code = main()
except KeyboardInterrupt:  # Ctrl-C while the imports load (torch takes seconds), before main's own handler
    print("interrupted", file=sys.stderr)
    code = 130
sys.exit(code)
