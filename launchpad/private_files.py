"""Files and directories only their owner can read: run directories, the
control token, TLS keys, node logs.

Nothing here follows a symbolic link or writes into a file someone else
created: a secret is written to a new file (O_CREAT | O_EXCL | O_NOFOLLOW,
mode 0600) that is then renamed over its name, so a file or a link planted
under that name is replaced, never written through. A directory that holds
secrets must belong to the user and be writable by no one else, or another
user could swap the files in it.
"""

from __future__ import annotations

import errno
import os
import pathlib
import pwd
import secrets
import stat
from typing import BinaryIO

from launchpad import errors

DIRECTORY_MODE = 0o700
FILE_MODE = 0o600
# Writable by the group or by others: they can replace files in a directory.
_SHARED_WRITE = stat.S_IWGRP | stat.S_IWOTH


class PrivateFileError(errors.LaunchpadError, PermissionError):
  """A directory or file cannot be made private: it belongs to someone else,
  others can write it, it is a link, or it cannot be created."""


def make_directory(path: pathlib.Path) -> None:
  """Creates `path` (and missing parents) mode 0700, or checks that the
  existing directory is safe for secrets (`check_directory`)."""
  try:
    path.mkdir(mode=DIRECTORY_MODE, parents=True)
  except FileExistsError:
    pass
  except OSError as e:
    raise PrivateFileError(
      f"cannot create the directory {path} ({e.strerror}); choose another directory."
    ) from None
  check_directory(path)


def check_directory(path: pathlib.Path) -> None:
  """Raises PrivateFileError unless `path` is a directory of this user that no one
  else can write."""
  try:
    info = path.stat()
  except OSError as e:
    raise PrivateFileError(f"cannot use the directory {path} ({e.strerror}).") from None
  if not stat.S_ISDIR(info.st_mode):
    raise PrivateFileError(f"{path} is not a directory; choose a directory (or a new path).")
  if info.st_uid != os.geteuid():
    raise PrivateFileError(
      f"the directory {path} belongs to {_user(info.st_uid)}, not to you: its owner could read "
      "or replace the program's token; choose a directory of your own."
    )
  if info.st_mode & _SHARED_WRITE:
    raise PrivateFileError(
      f"the directory {path} can be written by other users (mode "
      f"{stat.S_IMODE(info.st_mode):o}): they could replace the program's token; make it "
      f"private (chmod 700 {path}) or choose another directory."
    )


def write(path: pathlib.Path, data: bytes | str) -> None:
  """Makes `path` a new file holding `data`, mode 0600: written to a fresh
  file beside it, then renamed over it, so nothing already at `path` (a
  file or a link someone planted) is ever written through."""
  if isinstance(data, str):
    data = data.encode()
  temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
  flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
  fd = os.open(temporary, flags, FILE_MODE)
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
    os.replace(temporary, path)
  except BaseException:
    temporary.unlink(missing_ok=True)
    raise


def open_append(path: pathlib.Path) -> BinaryIO:
  """`path` opened for appending, created mode 0600 if new. Refuses a link
  and a file of another user (PrivateFileError); a file of ours readable by
  others is made private."""
  flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
  try:
    fd = os.open(path, flags, FILE_MODE)
  except OSError as e:
    what = "it is a symbolic link" if e.errno == errno.ELOOP else e.strerror
    raise PrivateFileError(
      f"cannot open {path} ({what}); remove it or choose another directory."
    ) from None
  info = os.fstat(fd)
  if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid():
    os.close(fd)
    raise PrivateFileError(
      f"{path} is not a file of yours (it belongs to {_user(info.st_uid)}); remove it or "
      "choose another directory."
    )
  if stat.S_IMODE(info.st_mode) & ~FILE_MODE:
    os.fchmod(fd, FILE_MODE)
  return os.fdopen(fd, "ab")


def _user(uid: int) -> str:
  try:
    return f"user {pwd.getpwuid(uid).pw_name} (uid {uid})"
  except KeyError:
    return f"uid {uid}"
