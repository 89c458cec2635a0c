from skewless.cli import main

raise SystemExit(main())
