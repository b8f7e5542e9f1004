from speech2image_nb.server.cli import main

raise SystemExit(main())
