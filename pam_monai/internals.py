"""The one message for a private part of another library that pam-monai reads (where no public
call does the job) and that the installed version changed: it names the library, its version, the
private name and what does not work without it, instead of an AttributeError deep in a run."""

from __future__ import annotations


def changed(package: str, name: str, feature: str) -> str:
    """The message: ``package`` (its distribution name, e.g. ``pytorch-ignite``) no longer has
    ``name`` as pam-monai reads it, so ``feature`` does not work."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        installed = version(package)
    except PackageNotFoundError:
        installed = "(version unknown)"
    return (
        f"{package} {installed}: {name} (private in {package}): gone or changed; pam-monai reads it "
        f"for {feature}. Install a {package} version listed as tested in pam-monai's README "
        "(the floors in setup.cfg), or report this with the version"
    )
