import sys

from factordiff.cli import main

sys.exit(main())
