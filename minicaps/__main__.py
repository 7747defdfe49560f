from minicaps.cli import main

raise SystemExit(main())
