"""The installed distribution's name and version.

The import name is `launchpad`; the distribution on the package index is
`launchpad-rl`, because the name `launchpad` there belongs to another project.
"""

import importlib.metadata

DISTRIBUTION = "launchpad-rl"


def installed_version() -> str:
  """The version pip installed, or "unknown" when run from a source tree that was never installed."""
  try:
    return importlib.metadata.version(DISTRIBUTION)
  except importlib.metadata.PackageNotFoundError:
    return "unknown"
