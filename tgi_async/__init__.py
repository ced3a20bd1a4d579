"""tgi-async: TGI's router API in Python, with decoupled schedulers, over TGI's generate.v3 shards."""


def version() -> str:
    """The installed package's version (`tgi-async --version`)."""
    from importlib import metadata  # NOTE: here, not at import: ~80 ms every process would pay

    try:
        return metadata.version("tgi-async")
    except metadata.PackageNotFoundError:
        return "0.0.0+unknown"
