"""`python -m meshd` is the `meshd` command."""

from meshd.entry import main

raise SystemExit(main())
