"""Fetch the model zoo's ``wholeBody_ct_segmentation`` bundle into ``models/`` with MONAI's bundle downloader.

The bundle is checked on the way, and the command says how to serve it:

    make backbone    # python -m tools.fetch_backbone --bundle-dir models
    monailabel start_server --app . --studies /path/to/ct --host 127.0.0.1 \\
        --conf slpt_backbone models/wholeBody_ct_segmentation

The app itself never downloads anything; this command is the one step that does, run beforehand by whoever
installs it (docs/backbone.md). The zip is the one the zoo's ``models/model_info.json`` records as the
version's source (the zoo's hosting, the same file MONAI's ``monaihosting`` source falls back to; that source
first asks Hugging Face, whose client this environment does not install). :func:`monai.bundle.download` fetches
and unpacks it; before it is unpacked, the zip is checked against the sha1 the zoo records, and once unpacked
the bundle is loaded as the app loads it (:func:`apps.slpt.model.backbone.load_backbone`), so weights that do
not fit its network stop here rather than at server start. ``--url`` fetches the same zip from elsewhere: a
mirror on a site without internet access, a copy on disk (``file:///path/to/zip``), or a local server in the tests.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from monai.apps.utils import download_url
from monai.bundle import download

from apps.slpt.model.backbone import METADATA, Backbone, load_backbone

NAME = "wholeBody_ct_segmentation"
VERSION = "0.2.5"
# sha1 of each version's zip, from the zoo's models/model_info.json ("checksum").
CHECKSUMS = {(NAME, "0.2.5"): "d3be077219fea4ac9630efddd81c19e0676bf206"}
HOSTING = ("https://api.ngc.nvidia.com/v2/models/nvidia/monaihosting/{lower}/versions/{version}/files/"
           "{name}_v{version}.zip")


def hosting_url(name: str = NAME, version: str = VERSION) -> str:
    """Where the zoo hosts a bundle version's zip (its ``model_info.json`` ``source``)."""
    return HOSTING.format(lower=name.lower(), name=name, version=version)


def fetch_backbone(bundle_dir: str | Path = "models", name: str = NAME, version: str = VERSION,
                   url: str | None = None, sha1: str | None = None) -> Backbone:
    """Download and unpack bundle ``name`` ``version`` into ``bundle_dir/name`` and check that the app can load it.

    A zip or folder already in ``bundle_dir`` is kept (MONAI's downloader skips both), so a second run fetches
    nothing; the zip is checked all the same, and the folder must hold the version asked for.

    Args:
        bundle_dir: the folder that receives ``<name>.zip`` and the bundle folder ``<name>``.
        name, version: the zoo bundle.
        url: where the zip is (default: the zoo's hosting, :func:`hosting_url`).
        sha1: the zip's expected sha1 (default: the zoo's, :data:`CHECKSUMS`; ``""``: not checked).

    Returns:
        The bundle, loaded; ``identity["path"]`` is its folder, to pass as ``--conf slpt_backbone``.

    Raises:
        RuntimeError: the zip does not match its checksum (it is removed), or the folder holds another version.
        ValueError: the bundle's weights do not fit its ``network_def`` (from :func:`load_backbone`).
    """
    bundle_dir = Path(bundle_dir)
    url = url or hosting_url(name, version)
    sha1 = CHECKSUMS.get((name, version), "") if sha1 is None else sha1
    archive = bundle_dir / f"{name}.zip"  # where monai.bundle.download(url=...) keeps the zip
    if sha1:
        try:
            download_url(url, archive, hash_val=sha1, hash_type="sha1")
        except RuntimeError:
            archive.unlink(missing_ok=True)  # so that a second run fetches it again
            raise
    download(name=name, version=version, bundle_dir=bundle_dir, url=url)
    folder = bundle_dir / name
    found = json.loads((folder / METADATA).read_text()).get("version")
    if found != version:
        raise RuntimeError(f"{folder} holds version {found} of {name}, not {version}: remove it (and {archive}) "
                           "to fetch this one")
    return load_backbone(folder)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle-dir", default="models", help="folder that receives the bundle (default: models)")
    parser.add_argument("--name", default=NAME, help=f"zoo bundle (default: {NAME})")
    parser.add_argument("--version", default=VERSION, help=f"bundle version (default: {VERSION})")
    parser.add_argument("--url", help="fetch the zip from here instead of the zoo's hosting (a mirror)")
    parser.add_argument("--sha1", help="the zip's sha1 (default: the zoo's for known versions; '' skips the check)")
    args = parser.parse_args(argv)
    try:
        backbone = fetch_backbone(args.bundle_dir, args.name, args.version, args.url, args.sha1)
    except OSError as e:  # urllib's URLError included: no route to the zoo's hosting
        raise SystemExit(f"could not fetch {args.url or hosting_url(args.name, args.version)}: {e}\nWithout "
                         "internet access, fetch the zip elsewhere and pass --url file:///path/to/the.zip") from e
    folder = Path(args.bundle_dir) / args.name
    print(f"{folder}: {type(backbone.network).__name__}, {backbone.num_parameters():,} parameters, "
          f"{backbone.out_channels} output channels, sliding window {backbone.roi_size}")
    print(f"serve it with: monailabel start_server --app . --studies /path/to/ct --host 127.0.0.1 "
          f"--conf slpt_backbone {folder}")


if __name__ == "__main__":
    main()
