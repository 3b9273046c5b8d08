"""Generate the embedded glyph benchmark: ``ucdir-lite data generate`` as a script.

    python data_scripts/generate_glyphs.py data/glyphs --contact-sheet contact_sheet.png
"""

import sys

from ucdir_lite.cli import main

if __name__ == "__main__":
    sys.exit(main(["data", "generate", *sys.argv[1:]]))
