"""``python -m label_merge``: version, usable backends and a self-check (see :mod:`label_merge._selfcheck`)."""

from label_merge._selfcheck import main

raise SystemExit(main())
