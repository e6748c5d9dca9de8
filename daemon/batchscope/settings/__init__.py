"""batchscope configuration: the settings models and the loader.

Use :func:`load_settings` (it raises :class:`SettingsError`; exit with :data:`EX_CONFIG`) and
print :func:`redacted_dict` for ``check-config``.

Sources, highest precedence first
---------------------------------
1. command-line flags: ``load_settings(overrides={"log_level": "debug", "http.port": 9999})``;
2. environment ``BATCHSCOPE_<SETTING>``, nested with ``__`` (``BATCHSCOPE_HTTP__PORT=9999``),
   lists as JSON (``BATCHSCOPE_ENGINES='[{"name": "prod", "url": "http://x"}]'``). A list from a
   higher source replaces the whole list of a lower one. Any other ``BATCHSCOPE_*`` variable
   except ``BATCHSCOPE_CONFIG`` is an error (catches typos);
3. the TOML file: ``--config PATH`` (``load_settings(config_path=...)``) or
   ``$BATCHSCOPE_CONFIG``; no file is read when neither is given;
4. secret files (below);
5. defaults. Under systemd, ``state_path`` defaults to ``$STATE_DIRECTORY/state.db`` (first
   entry if ``StateDirectory=`` lists several).

Secret files
------------
The directory is ``$CREDENTIALS_DIRECTORY`` when set (systemd ``LoadCredential=`` /
``SetCredential=``), else the ``secrets_dir`` setting (e.g. a mounted Kubernetes Secret). One
file per secret, its content with the trailing newline stripped. File names::

    http.api_token                      -> http.api_token
    engines.<target name>.password      -> password of the [[engines]] target <target name>
    engines.<target name>.bearer_token  -> bearer_token of that target
    datadog.<target name>.api_key       -> api_key of the [[datadog]] target <target name>
    datadog.<target name>.app_key       -> app_key of that target
    dd_api_key                          -> like $DD_API_KEY
    dd_app_key (or dd_application_key)  -> like $DD_APP_KEY

A secret file fills a setting only when no higher source set it. Other files in the directory
are ignored, except names starting with ``http.``, ``engines.`` or ``datadog.`` that are not in
the list above, or that name no configured target: those are errors. A ``secrets_dir`` (or
``$CREDENTIALS_DIRECTORY``) that is not a directory is an error; empty or unreadable secret files
are errors.

Datadog conventions
-------------------
``DD_API_KEY``, ``DD_APP_KEY`` (alias ``DD_APPLICATION_KEY``; ``DD_APP_KEY`` wins) and
``DD_SITE`` fill ``api_key``, ``app_key`` and ``site`` of every ``[[datadog]]`` target that
does not set them (a target's own value or ``datadog.<name>.*`` secret file wins; the
``dd_api_key``/``dd_app_key`` secret files come last). When no source gives ``datadog`` at all
and an API key is available this way, one target named ``datadog`` is configured
(``BATCHSCOPE_DATADOG=[]`` disables that). ``site`` defaults to ``datadoghq.com``.
"""

from __future__ import annotations

from .errors import EX_CONFIG, SettingsError
from .fields import BATCH_ID_PATTERN, DATADOG_SITES, TARGET_NAME_PATTERN, Duration, parse_duration
from .loader import REDACTED, load_settings, redacted_dict, secret_values
from .models import (
    DEFAULT_STATE_PATH,
    ENV_PREFIX,
    DatadogTarget,
    EngineTarget,
    HttpSettings,
    Settings,
    Target,
)
from .sources import CONFIG_ENV_VAR, NON_SETTING_ENV_VARS, SECRET_FIELDS

__all__ = [
    "BATCH_ID_PATTERN",
    "CONFIG_ENV_VAR",
    "DATADOG_SITES",
    "DEFAULT_STATE_PATH",
    "ENV_PREFIX",
    "EX_CONFIG",
    "NON_SETTING_ENV_VARS",
    "REDACTED",
    "SECRET_FIELDS",
    "TARGET_NAME_PATTERN",
    "DatadogTarget",
    "Duration",
    "EngineTarget",
    "HttpSettings",
    "Settings",
    "SettingsError",
    "Target",
    "load_settings",
    "parse_duration",
    "redacted_dict",
    "secret_values",
]
