import sys

from emocircuits.cli import main

sys.exit(main())
