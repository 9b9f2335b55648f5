#!/usr/bin/env python3
"""Render or lint a Helm chart with Helm's own library (PyPI helm-python-sdk), no helm binary.

  helm.py render CHART [--values FILE] [--name NAME] [--namespace NS]
      Prints the chart's CRDs, then every rendered template (sorted by path), as one YAML
      stream, each document headed by a `# Source:` comment like `helm template`.
  helm.py lint CHART [--values FILE] [--kube-version vX.Y.Z]
      Strict lint (warnings count); prints the findings and exits 1 when there are any.
"""

import argparse
import sys

import helm_python as helm


def load_values(path):
    if not path:
        return None
    with open(path, encoding="utf-8") as f:
        return helm.values_from_yaml(f.read())


def render(args):
    chart = helm.Chart.load(args.chart)
    values = load_values(args.values)
    # The schema is checked here too, so a bad values file fails like `helm install` would.
    chart.validate_schema(values)
    out = []
    for crd in chart.crds:
        out.append(f"# Source: {crd['filename']}\n{crd['data'].strip()}\n")
    manifests = chart.render(values, name=args.name, namespace=args.namespace, is_install=True)
    for path in sorted(manifests):
        if not path.endswith((".yaml", ".yml")):
            continue
        body = manifests[path].strip()
        # A template that renders to nothing but comments creates no object.
        if not any(line.strip() and not line.lstrip().startswith("#") for line in body.splitlines()):
            continue
        out.append(f"# Source: {path}\n{body}\n")
    sys.stdout.write("---\n".join(out))


def lint(args):
    report = helm.lint(
        args.chart,
        load_values(args.values),
        strict=True,
        namespace=args.namespace,
        kube_version=args.kube_version,
    )
    problems = [m for m in report.get("messages") or [] if m.get("severity", 0) >= 2]
    problems_text = [f"{m['path']}: {m['error']}" for m in problems] + list(report.get("errors") or [])
    for line in problems_text:
        print(line)
    print(f"linted {report.get('total_charts_linted')} chart(s): {len(problems_text)} problem(s)")
    return 1 if problems_text else 0


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("render", "lint"):
        p = sub.add_parser(name)
        p.add_argument("chart")
        p.add_argument("--values")
        p.add_argument("--namespace", default="archforge-system")
        if name == "render":
            p.add_argument("--name", default="archforge")
        else:
            p.add_argument("--kube-version")
    args = parser.parse_args()
    try:
        if args.command == "render":
            render(args)
            return 0
        return lint(args)
    except helm.HelmError as e:
        print(f"helm: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
