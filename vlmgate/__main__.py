"""Run as: python -m vlmgate --help"""

from vlmgate.cli import main

raise SystemExit(main())
