"""The program's own code, packed to travel to hosts that do not share our files.

Node payloads are cloudpickles: functions of the launched file travel by
value, but modules the program imports from its own folders travel by name
and must be importable where the node runs. The bundle holds the source of
every such module: each module loaded from outside the Python installation
and its site-packages (launchpad excluded: the hosts must have it installed),
stored under the path its name imports it from.
"""

from __future__ import annotations

import io
import logging
import os
import pathlib
import site
import sys
import sysconfig
import zipfile
from collections.abc import Sequence

import launchpad

log = logging.getLogger(__name__)

# A bundle this large is worth a warning: it travels to every host at launch.
WARN_BYTES = 50 * 2**20


def make() -> bytes:
  """A zip of the program's own modules, as loaded in this process now."""
  excluded = _installed_paths()
  files: dict[str, pathlib.Path] = {}
  for name, module in list(sys.modules.items()):
    path = _source_of(module)
    if path is None or name == "__main__" or any(path.is_relative_to(p) for p in excluded):
      continue
    stored = _stored_name(name, path)
    if stored is not None:
      files.setdefault(stored, path)
  return _pack(files, "code bundle")


def make_files(paths: Sequence[pathlib.Path]) -> bytes:
  """A zip of files and folders (executables, configurations) to put in the
  nodes' working directory, each under its own name; modes are kept."""
  files: dict[str, pathlib.Path] = {}
  for path in paths:
    if path.is_dir():
      for member in path.rglob("*"):
        if member.is_file():
          files[f"{path.name}/{member.relative_to(path).as_posix()}"] = member
    else:
      files[path.name] = path
  return _pack(files, "files to ship")


def extract(data: bytes, directory: pathlib.Path) -> list[str]:
  """Unpacks a bundle into `directory`, with the files' modes; returns its names."""
  with zipfile.ZipFile(io.BytesIO(data)) as archive:
    for info in archive.infolist():
      target = archive.extract(info, directory)
      mode = info.external_attr >> 16
      if mode:
        os.chmod(target, mode & 0o7777)
    return archive.namelist()


def _pack(files: dict[str, pathlib.Path], what: str) -> bytes:
  buffer = io.BytesIO()
  with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
    for name, path in sorted(files.items()):
      archive.write(path, name)
  data = buffer.getvalue()
  if len(data) > WARN_BYTES:
    log.warning("the program's %s is %.0f MB; it is sent to every host", what, len(data) / 2**20)
  return data


def _source_of(module: object) -> pathlib.Path | None:
  name = getattr(module, "__file__", None)
  if not name:
    return None
  path = pathlib.Path(name).resolve()
  return path if path.is_file() else None


def _stored_name(name: str, path: pathlib.Path) -> str | None:
  """Where module `name`, loaded from `path`, goes in the bundle, so that it
  imports under the same name; None if its file does not match its name."""
  parts = name.split(".")
  if path.name.startswith("__init__."):
    parts.append("__init__")
  relative = pathlib.PurePosixPath(*parts[:-1], parts[-1] + "".join(path.suffixes))
  if path.as_posix().endswith("/" + relative.as_posix()):
    return relative.as_posix()
  return None


def _installed_paths() -> set[pathlib.Path]:
  """Where the interpreter, installed packages and launchpad itself live."""
  paths = {sysconfig.get_path(k) for k in ("stdlib", "platstdlib", "purelib", "platlib")}
  paths.update(site.getsitepackages())
  paths.add(site.getusersitepackages())
  paths.add(str(pathlib.Path(launchpad.__file__).parent))
  return {pathlib.Path(p).resolve() for p in paths if p}
