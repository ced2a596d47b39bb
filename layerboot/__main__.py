import sys

from layerboot.tools.cli import main

sys.exit(main())
