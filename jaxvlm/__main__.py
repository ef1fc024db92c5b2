import sys

from jaxvlm.cli import main

sys.exit(main())
