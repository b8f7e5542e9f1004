"""``python -m speech2image_nb``: the ``speech2image`` command."""

from .cli import main

raise SystemExit(main())
