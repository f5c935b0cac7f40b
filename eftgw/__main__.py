from eftgw.cli import main

raise SystemExit(main())
