"""Unpack Office-Home into ROOT/<Domain>/<class>/<image>: ``ucdir-lite data prepare
office-home`` as a script. The authors distribute the zip through a Google Drive link on
https://www.hemanthdv.org/officeHomeDataset.html: download it by hand (``--url`` accepts only
a direct link to the zip).

    python data_scripts/prepare_office_home.py data/office-home \
        --archive ~/Downloads/OfficeHomeDataset_10072016.zip
"""

import sys

from ucdir_lite.cli import main

if __name__ == "__main__":
    sys.exit(main(["data", "prepare", "office-home", *sys.argv[1:]]))
