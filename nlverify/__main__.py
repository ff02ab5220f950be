"""``python -m nlverify`` is the ``nlverify`` command."""
import sys

from nlverify.cli import main

sys.exit(main())
