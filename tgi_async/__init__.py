"""tgi-async: TGI's router API in Python, with decoupled schedulers, over TGI's generate.v3 shards."""

from importlib import metadata


def version() -> str:
    """The installed package's version (`tgi-async --version`)."""
    try:
        return metadata.version("tgi-async")
    except metadata.PackageNotFoundError:
        return "0.0.0+unknown"
