"""Download DomainNet and build root/<domain>/<class>/<image>: ``ucdir-lite data prepare
domainnet`` as a script (see ``ucdir_lite.prepare.prepare_domainnet`` for the sources, the
checksums and the layout).

    python data_scripts/prepare_domainnet.py data/domainnet --domains clipart sketch
"""

import sys

from ucdir_lite.cli import main

if __name__ == "__main__":
    sys.exit(main(["data", "prepare", "domainnet", *sys.argv[1:]]))
