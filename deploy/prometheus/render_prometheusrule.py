#!/usr/bin/env python3
"""Write the PrometheusRule component from the plain rules file.

    python deploy/prometheus/render_prometheusrule.py          # rewrite the component
    python deploy/prometheus/render_prometheusrule.py --check  # exit 1 if out of date

deploy/prometheus/batchscope-rules.yml is the source; the PrometheusRule at
deploy/kubernetes/components/prometheusrule/prometheusrule.yaml carries the same groups.
Needs PyYAML.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
RULES = HERE / "batchscope-rules.yml"
TARGET = HERE.parent / "kubernetes" / "components" / "prometheusrule" / "prometheusrule.yaml"

HEADER = """\
# GENERATED from deploy/prometheus/batchscope-rules.yml by
# deploy/prometheus/render_prometheusrule.py - edit the rules file, then re-run the script.
# The comments explaining each rule are in the rules file.
"""


class _Dumper(yaml.SafeDumper):
    pass


def _str_representer(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str_representer)


def render() -> str:
    groups: Any = yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"]
    document = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "batchscope",
            "labels": {
                "app.kubernetes.io/name": "batchscope",
                "app.kubernetes.io/instance": "batchscope",
            },
        },
        "spec": {"groups": groups},
    }
    body = yaml.dump(document, Dumper=_Dumper, sort_keys=False, width=4096, allow_unicode=True)
    return HEADER + body


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report whether it is current")
    args = parser.parse_args(argv)
    text = render()
    current = TARGET.read_text(encoding="utf-8") if TARGET.exists() else ""
    if args.check:
        if current != text:
            print(f"{TARGET} is out of date; run {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    if current != text:
        TARGET.write_text(text, encoding="utf-8")
        print(f"wrote {TARGET}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
