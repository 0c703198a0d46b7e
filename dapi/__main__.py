from dapi.cli import main

raise SystemExit(main())
