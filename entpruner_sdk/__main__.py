import sys

from entpruner_sdk.cli import main

sys.exit(main())
