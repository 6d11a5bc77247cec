"""Write the figures embedded in an analysis.report page as PNG files (named after their alt text).

    python docs/findings/extract_figures.py results/grokking-full/report/report.html OUT_DIR [--only WORD ...]
"""
from __future__ import annotations

import argparse
import base64
import re
from pathlib import Path

IMG = re.compile(r'<img alt="([^"]*)" src="data:image/png;base64,([A-Za-z0-9+/=]+)">')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report")
    parser.add_argument("out")
    parser.add_argument("--only", nargs="*", default=None, help="keep figures whose alt text holds one of these")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for alt, data in IMG.findall(Path(args.report).read_text()):
        if args.only and not any(word in alt for word in args.only):
            continue
        name = re.sub(r"[^a-z0-9]+", "-", alt.lower()).strip("-")[:60] + ".png"
        (out / name).write_bytes(base64.b64decode(data))
        print(out / name)


if __name__ == "__main__":
    main()
