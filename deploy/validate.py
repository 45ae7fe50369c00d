"""Offline validation of deploy/: render every kustomization, check every document
against the Kubernetes JSON schemas, and print what was rendered.

Run through deploy/validate.sh, which provides the venv (PyYAML, kubernetes-validate).
tests/deploy_manifests.rs reads the --json output and checks the cross-references
(selectors, ports, config, grace period, autoscaler targets, network policy).

The renderer is a small subset of kustomize v5, enough for deploy/kubernetes and no more:
  - `resources`: YAML files (several documents each) and directories (kustomizations);
  - `components`: directories whose kustomization is `kind: Component`;
  - `namespace`: set on every namespaced object and on ServiceAccount subjects of
    RoleBindings;
  - `configMapGenerator`: `name` + `files` (`path` or `key=path`), named with kustomize's
    content hash, and the references in pod templates renamed to match.
Any other field is refused, so nobody adds a patch that this renderer would silently
ignore. When kubectl (or kustomize) is on PATH, its output must equal ours.
"""

import argparse
import hashlib
import json
import os
import re
import shutil
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
# Kinds from CRDs: not in the Kubernetes schemas. tests/deploy_manifests.rs checks
# their fields by hand.
CRD_GROUPS = {"keda.sh", "monitoring.coreos.com"}
KUSTOMIZATION_FIELDS = {"apiVersion", "kind", "namespace", "resources", "components",
                        "configMapGenerator"}
GENERATOR_FIELDS = {"name", "files"}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
                  "PersistentVolume", "StorageClass", "PriorityClass",
                  "ValidatingWebhookConfiguration", "MutatingWebhookConfiguration",
                  "APIService", "IngressClass", "RuntimeClass"}
POD_TEMPLATE_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}


class RenderError(Exception):
    pass


def load_yaml_documents(path):
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def kustomize_hash(configmap):
    """kustomize v5's name suffix of a generated ConfigMap (api/hasher): sha256 of the
    JSON of kind, name and data, first 10 hex digits with 0,1,3,a,e swapped for letters.
    kustomize's lookup of `metadata/name` finds nothing, so the name hashed is ""."""
    encoded = json.dumps({"kind": "ConfigMap", "name": "", "data": configmap["data"]},
                         sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    # Go's json.Marshal escapes these.
    for char, escape in [("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                         ("\u2028", "\\u2028"), ("\u2029", "\\u2029")]:
        encoded = encoded.replace(char, escape)
    digest = hashlib.sha256(encoded.encode("utf-8")).hexdigest()[:10]
    return digest.translate(str.maketrans("013ae", "ghkmt"))


def generate_configmap(directory, generator):
    unknown = set(generator) - GENERATOR_FIELDS
    if unknown:
        raise RenderError(f"{directory}: configMapGenerator fields {sorted(unknown)} are not "
                          f"supported by deploy/validate.py")
    data = {}
    for entry in generator.get("files", []):
        if "=" in entry:
            key, path = entry.split("=", 1)
        else:
            key, path = os.path.basename(entry), entry
        with open(os.path.join(directory, path), encoding="utf-8") as f:
            data[key] = f.read()
    configmap = {"apiVersion": "v1", "kind": "ConfigMap",
                 "metadata": {"name": generator["name"]}, "data": data}
    configmap["metadata"]["name"] = f"{generator['name']}-{kustomize_hash(configmap)}"
    return generator["name"], configmap


def rename_configmap_references(doc, renames):
    """Points pod templates at the generated (hashed) ConfigMap names."""
    if doc.get("kind") not in POD_TEMPLATE_KINDS:
        return
    pod = doc.get("spec", {}).get("template", {}).get("spec", {})

    def rename(ref):
        if isinstance(ref, dict) and ref.get("name") in renames:
            ref["name"] = renames[ref["name"]]

    for volume in pod.get("volumes", []):
        rename(volume.get("configMap"))
        for source in volume.get("projected", {}).get("sources", []):
            rename(source.get("configMap"))
    for container in pod.get("containers", []) + pod.get("initContainers", []):
        for env_from in container.get("envFrom", []):
            rename(env_from.get("configMapRef"))
        for env in container.get("env", []):
            rename(env.get("valueFrom", {}).get("configMapKeyRef"))


def render(directory, expect_kind=("Kustomization",)):
    path = os.path.join(directory, "kustomization.yaml")
    if not os.path.exists(path):
        raise RenderError(f"{directory}: no kustomization.yaml")
    with open(path, encoding="utf-8") as f:
        kustomization = yaml.safe_load(f) or {}
    unknown = set(kustomization) - KUSTOMIZATION_FIELDS
    if unknown:
        raise RenderError(f"{path}: fields {sorted(unknown)} are not supported by "
                          f"deploy/validate.py (extend its renderer first)")
    kind = kustomization.get("kind", "Kustomization")
    if kind not in expect_kind:
        raise RenderError(f"{path}: kind {kind}, expected one of {list(expect_kind)}")

    docs = []
    for resource in kustomization.get("resources", []):
        target = os.path.normpath(os.path.join(directory, resource))
        if os.path.isdir(target):
            docs.extend(render(target))
        else:
            docs.extend(load_yaml_documents(target))
    renames = {}
    for generator in kustomization.get("configMapGenerator", []):
        name, configmap = generate_configmap(directory, generator)
        renames[name] = configmap["metadata"]["name"]
        docs.append(configmap)
    for component in kustomization.get("components", []):
        docs.extend(render(os.path.normpath(os.path.join(directory, component)),
                           expect_kind=("Component",)))
    for doc in docs:
        rename_configmap_references(doc, renames)

    namespace = kustomization.get("namespace")
    if namespace:
        for doc in docs:
            if doc["kind"] not in CLUSTER_SCOPED:
                doc.setdefault("metadata", {})["namespace"] = namespace
            if doc["kind"] in ("RoleBinding", "ClusterRoleBinding"):
                for subject in doc.get("subjects", []):
                    if subject.get("kind") == "ServiceAccount":
                        subject["namespace"] = namespace

    seen = set()
    for doc in docs:
        key = identity(doc)
        if key in seen:
            raise RenderError(f"{directory}: {key} appears twice")
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


def is_component(root):
    with open(os.path.join(KUBERNETES_DIR, root, "kustomization.yaml"), encoding="utf-8") as f:
        return (yaml.safe_load(f) or {}).get("kind") == "Component"


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


def kustomize_crosscheck(renders):
    """Compares our renders with kubectl's (or kustomize's) own, when one is installed."""
    if shutil.which("kustomize"):
        command, version = ["kustomize", "build"], ["kustomize", "version"]
    elif shutil.which("kubectl"):
        command, version = ["kubectl", "kustomize"], ["kubectl", "version", "--client"]
    else:
        return "skipped: neither kustomize nor kubectl on PATH", []
    # Names of generated ConfigMaps are hashed as kustomize v5 does (older ones differ).
    try:
        out = subprocess.run(version, capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"skipped: {' '.join(version)} did not run ({e})", []
    found = re.search(r"v(\d+)\.\d+\.\d+", out.split("Kustomize Version:")[-1])
    if not found or int(found.group(1)) < 5:
        return f"skipped: {' '.join(command)} is not kustomize v5 ({out.strip()!r})", []
    errors = []
    for root, docs in renders.items():
        if is_component(root):
            continue  # a Component is not built on its own
        try:
            out = subprocess.run(command + [os.path.join(KUBERNETES_DIR, root)],
                                 capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as e:
            return f"skipped: {' '.join(command)} did not run ({e})", []
        if out.returncode != 0:
            errors.append(f"{root}: {' '.join(command)} failed: {out.stderr.strip()}")
            continue
        theirs = {identity(d): d for d in yaml.safe_load_all(out.stdout) if d}
        ours = {identity(d): d for d in docs}
        if set(theirs) != set(ours):
            errors.append(f"{root}: objects differ: kustomize {sorted(theirs)} vs ours {sorted(ours)}")
            continue
        for key in ours:
            if ours[key] != theirs[key]:
                errors.append(f"{root}: {key} differs:\nkustomize: {json.dumps(theirs[key], sort_keys=True)}\n"
                              f"ours:      {json.dumps(ours[key], sort_keys=True)}")
    return f"compared with {' '.join(command)}", errors


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true",
                        help="print renders, files and results as one JSON object")
    args = parser.parse_args()

    errors = []
    renders = {}
    for root in kustomization_roots():
        try:
            kinds = ("Component",) if is_component(root) else ("Kustomization",)
            renders[root] = render(os.path.join(KUBERNETES_DIR, root), expect_kind=kinds)
        except (RenderError, OSError, yaml.YAMLError) as e:
            errors.append(f"render {root}: {e}")
    versions = [OLDEST, kubernetes_validate.latest_version()]
    validated, skipped, schema_errors = schema_check(renders, versions)
    errors += schema_errors
    crosscheck, crosscheck_errors = kustomize_crosscheck(renders)
    errors += crosscheck_errors
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
               f"not schema-checked; kustomize cross-check {crosscheck}; "
               f"{len(errors)} errors")
    print(summary, file=sys.stderr)
    if args.json:
        json.dump({"renders": renders, "files": files,
                   "schema": {"versions": versions, "validated": validated,
                              "skipped_crds": skipped},
                   "kustomize_crosscheck": crosscheck, "errors": errors},
                  sys.stdout, indent=1, sort_keys=True)
        print()
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
