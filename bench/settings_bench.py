"""Settings for benchmark runs only: production settings plus a URLconf that adds the bare
baseline view (bench/urls_bench.py). Never used outside bench/partner_api.py."""

from config.settings import *  # noqa: F403

ROOT_URLCONF = "bench.urls_bench"
DEBUG = False
ALLOWED_HOSTS = ["*"]
