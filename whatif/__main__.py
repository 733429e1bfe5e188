from whatif.cli import main

raise SystemExit(main())
