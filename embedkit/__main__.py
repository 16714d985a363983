import sys

from embedkit.cli import main

sys.exit(main())
