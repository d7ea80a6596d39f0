from microqa.cli import main

raise SystemExit(main())
