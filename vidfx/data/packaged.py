"""Files that ship inside registry packages, with their provenance: the held-out real footage (`FOOTAGE`), the
package/licence look-up the dataset manifest records, and the rule that keeps real video out of training.

Imports nothing of vidfx's data generators, so both the training set (vidfx.data.scenes) and the evaluation
(vidfx.data.real_footage) can use it.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

OPENCV_DOC = Path("/usr/share/doc/opencv-doc")
OPENCV_LICENCE = "OpenCV samples: Apache-2.0 / BSD-3-Clause, see /usr/share/doc/opencv-doc/copyright"
VIDEO_SUFFIXES = (".avi", ".mp4", ".mkv", ".webm", ".ogv", ".mov", ".mpg", ".mpeg", ".m4v", ".mp4.gz", ".gif")


@dataclass(frozen=True)
class FootageClip:
    name: str
    package: str  # the Debian package (or wheel) that ships the file
    path: Path
    subject: str
    licence: str
    start_s: float = 0.0  # where the evaluated excerpt starts (skips titles and fades)

    @property
    def installed(self) -> bool:
        return self.path.is_file()


FOOTAGE: dict[str, FootageClip] = {
    clip.name: clip
    for clip in (
        FootageClip("pedestrians", "opencv-doc", OPENCV_DOC / "examples/data/vtest.avi",
                    "pedestrians on a street, fixed camera, 768x576", OPENCV_LICENCE, 2.0),
        FootageClip("tree", "opencv-doc", OPENCV_DOC / "examples/data/tree.avi",
                    "a tree moving in the wind, 320x240", OPENCV_LICENCE, 2.0),
        FootageClip("animation", "opencv-doc", OPENCV_DOC / "examples/data/Megamind.avi",
                    "an animated film (faces, camera moves), 720x528", OPENCV_LICENCE, 3.0),
        FootageClip("cup", "opencv-doc", OPENCV_DOC / "opencv4/html/cup.mp4.gz",
                    "a hand-held camera around a cup on a desk", OPENCV_LICENCE, 0.0),
    )
}  # fmt: skip


def debian_package_info(package: str) -> tuple[str, str]:
    """(installed version, licence summary) of a Debian package, from dpkg and its copyright file."""
    done = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True)
    version = done.stdout.strip() if done.returncode == 0 else "not installed"
    licences = []
    copyright_file = Path("/usr/share/doc") / package / "copyright"
    if copyright_file.is_file():
        for line in copyright_file.read_text(errors="replace").splitlines():
            if line.startswith("License:") and (name := line[8:].strip()) and name not in licences:
                licences.append(name)
    summary = ", ".join(licences[:6]) or "unknown"
    return version, f"{summary} (see {copyright_file})"


def is_video_file(path: str | Path) -> bool:
    return str(path).lower().endswith(VIDEO_SUFFIXES)


def refuse_for_training(path: str | Path) -> None:
    """Raise if `path` is a held-out evaluation clip or any video: real footage is for evaluation only."""
    resolved = Path(path).resolve()
    if any(resolved == clip.path.resolve() for clip in FOOTAGE.values()):
        raise ValueError(f"{path} is held-out evaluation footage: it must never be used for training")
    if is_video_file(path):
        raise ValueError(f"{path} is a video: packaged real video is for evaluation only, never for training")
