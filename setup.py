"""fedd packaging. The Twisted plugin ships as twisted/plugins/fedd_plugin.py (no __init__.py there)."""

import re
from pathlib import Path

from setuptools import find_packages, setup

version = re.search(r'__version__ = "([^"]+)"', Path("fedd/__init__.py").read_text()).group(1)

setup(
    name="fedd",
    version=version,
    description="Storage federation daemon for scientific data grids (S3, WebDAV, GeoIP redirects)",
    long_description=Path("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.11",
    # Stated though it is the default: with package_dir {"": "."} setuptools makes `pip install -e .` a .pth
    # file naming this checkout, not an import hook; twistd finds plugins by scanning sys.path for
    # twisted/plugins directories, so only the .pth lets it see twisted/plugins/fedd_plugin.py here.
    package_dir={"": "."},
    packages=[*find_packages(include=["fedd", "fedd.*"]), "twisted.plugins"],
    package_data={"twisted.plugins": ["fedd_plugin.py"], "fedd": ["py.typed"]},
    install_requires=[
        "Twisted[tls]>=23.10",
        "treq>=23.11",
        "pyOpenSSL>=23.2",
        "service-identity>=23.1",
        "cryptography>=41",
        "botocore>=1.31",
        "lxml>=4.9",
        "pika>=1.3",
        "PyJWT>=2.8",
        "asn1crypto>=1.5",
        "prometheus-client>=0.17",
        "geoip2>=4.7",
        "maxminddb>=2.4",
        "httptools>=0.6",  # the lean front's HTTP/1.1 parser (llhttp)
    ],
    extras_require={
        "geolite2": ["maxminddb-geolite2"],
        # zlib-ng's Adler-32 is ~9x the system zlib's: checksums and third-party copies hash less
        "fast": ["zlib-ng>=0.5"],
        # [state] database = postgresql://...: psycopg 3, called through twisted.enterprise.adbapi
        "postgresql": ["psycopg[binary]>=3.1"],
        "test": [
            "zlib-ng>=0.5",
            "psycopg[binary]>=3.1",
            "pytest>=7.4",
            "pytest-timeout",
            "hypothesis",
            "boto3",
            "mmdb-writer",
            "maxminddb-geolite2",
            "pymemcache",
            "ruff",
            "mypy",
            "mypy-zope",
            "types-pyOpenSSL",
            "stomp.py",
        ],
    },
    entry_points={"console_scripts": ["fedd-import-ugr = fedd.ugrimport:main"]},
    classifiers=["Framework :: Twisted", "Programming Language :: Python :: 3"],
)
