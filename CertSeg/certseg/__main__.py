import sys

from certseg.commands import main

sys.exit(main())
