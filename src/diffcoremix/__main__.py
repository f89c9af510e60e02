"""``python -m diffcoremix``: the same as the ``diffcoremix`` command."""

from diffcoremix.cli.main import main

raise SystemExit(main())
