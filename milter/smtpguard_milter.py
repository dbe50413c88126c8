#!/usr/bin/env python3
"""Start smtpguard's milter: the same as ``smtpguard milter [OPTIONS]``.

For installations that start milters by path (``milter/smtpguard_milter.py
--config /etc/smtpguard/smtpguard.toml``). The code lives in
``smtpguard.postfix.milter_app``; this folder deliberately holds no
``__init__.py``, so ``import milter`` anywhere still finds pymilter's C module.
"""

from __future__ import annotations

import sys

from smtpguard.cli.main import main

if __name__ == "__main__":
    main(["milter", *sys.argv[1:]])
