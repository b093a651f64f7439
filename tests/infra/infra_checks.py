"""Checks of the Kubernetes manifests under infra/k8s (used by tests/infra/test_infra_manifests.py).

* Rendering: the real kustomize (``kustomize build`` or ``kubectl kustomize``), never a stand-in.
* Schemas: KubeRay resources against the CRDs in ``../shared/k8s/crds`` made strict the way
  ``kubeconform -strict`` does it (every object schema with ``properties`` and no
  ``x-kubernetes-preserve-unknown-fields`` gets ``additionalProperties: false``); Kubernetes' own
  kinds against the strict schemas that the ``kubernetes-validate`` package ships.
* Entrypoints: every command a manifest runs is expanded by ``sh`` exactly as the pod's shell
  would (with the settings ConfigMap as its environment) and parsed by the real ``sprdiff``
  parser (``jobs.cli.build_parser``); it must also fit the cluster it runs on.
* Pods: /dev/shm, non-root, credentials only from the Secret.

Each check returns a list of problems (empty when all is well), so the tests can show all of them.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import io
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import jsonschema
import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "infra" / "k8s"
OVERLAYS = K8S / "overlays"
SECRET_TEMPLATE = K8S / "secret.example.yaml"
CRD_DIR = REPO.parent / "shared" / "k8s" / "crds"
FIXTURES = Path(__file__).resolve().parent / "fixtures"
# Kubernetes' own kinds are checked against this version's schemas (CronJob.timeZone is GA since 1.27).
KUBERNETES_VERSION = "1.31"
SETTINGS_CONFIGMAP = "sprdiff-settings"
SHM_FRACTION = 0.30  # Ray's default object store: 30% of the container's memory, in /dev/shm
SECRET_LIKE = re.compile(r"KEY|SECRET|TOKEN|PASSWORD|CREDENTIAL", re.IGNORECASE)

# What the root ``metadata`` of a resource may hold (the CRDs leave it as a bare ``object``).
OBJECT_META = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "maxLength": 63, "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
        "namespace": {"type": "string"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}


# ---- rendering

def kustomize_command() -> list[str] | None:
    """``kustomize build`` if installed, else kubectl's built-in kustomize, else None."""
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    return None


def overlay_dirs() -> list[Path]:
    """The deployable kustomizations: every folder under infra/k8s/overlays with a kustomization.yaml."""
    return sorted(p.parent for p in OVERLAYS.glob("*/kustomization.yaml"))


def render(directory: Path) -> list[dict]:
    command = kustomize_command()
    if command is None:
        raise RuntimeError("neither kustomize nor kubectl is installed")
    done = subprocess.run([*command, str(directory)], capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise AssertionError(f"{' '.join(command)} {directory} failed:\n{done.stderr}")
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def load_yaml_documents(path: Path) -> list[dict]:
    with open(path) as f:
        return [doc for doc in yaml.safe_load_all(f) if doc]


def name_of(resource: dict) -> str:
    return f"{resource.get('kind')} {resource.get('metadata', {}).get('name')}"


# ---- schemas

def strict_schema(schema: dict) -> dict:
    """A copy where every object schema with ``properties`` refuses unknown fields, unless it
    preserves them (``x-kubernetes-preserve-unknown-fields``); the root metadata becomes ObjectMeta."""

    def walk(node):
        if isinstance(node, dict):
            if ("properties" in node and "additionalProperties" not in node
                    and not node.get("x-kubernetes-preserve-unknown-fields")):
                node["additionalProperties"] = False
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    schema = copy.deepcopy(schema)
    walk(schema)
    schema["properties"]["metadata"] = OBJECT_META
    return schema


def cel_paths(schema: dict) -> set[tuple[str, ...]]:
    """Field paths (lists as ``[]``) whose schema carries CEL rules, which jsonschema cannot evaluate."""
    found = set()

    def walk(node: dict, path: tuple[str, ...]) -> None:
        if node.get("x-kubernetes-validations"):
            found.add(path)
        for key, child in node.get("properties", {}).items():
            walk(child, (*path, key))
        if isinstance(node.get("items"), dict):
            walk(node["items"], (*path, "[]"))
        if isinstance(node.get("additionalProperties"), dict):
            walk(node["additionalProperties"], (*path, "*"))

    walk(schema, ())
    return found


def field_paths(value, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    yield path
    if isinstance(value, dict):
        for key, child in value.items():
            yield from field_paths(child, (*path, key))
    elif isinstance(value, list):
        for child in value:
            yield from field_paths(child, (*path, "[]"))


@dataclass(frozen=True)
class CrdSchema:
    api_version: str
    kind: str
    validator: jsonschema.protocols.Validator
    cel_paths: frozenset[tuple[str, ...]]


@functools.cache
def load_crds(crd_dir: Path = CRD_DIR) -> dict[tuple[str, str], CrdSchema]:
    """``(apiVersion, kind) -> CrdSchema`` for every served version of every CRD in ``crd_dir``."""
    schemas = {}
    for path in sorted(crd_dir.glob("*.yaml")):
        with open(path) as f:
            crd = yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        if crd.get("kind") != "CustomResourceDefinition":
            continue
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            if not version.get("served"):
                continue
            schema = version["schema"]["openAPIV3Schema"]
            api_version = f"{group}/{version['name']}"
            schemas[(api_version, kind)] = CrdSchema(api_version, kind,
                                                     jsonschema.Draft4Validator(strict_schema(schema)),
                                                     frozenset(cel_paths(schema)))
    return schemas


def _error_text(error: jsonschema.ValidationError) -> str:
    where = ".".join(str(p) for p in error.absolute_path) or "(root)"
    return f"{where}: {error.message}"


def schema_problems(resource: dict, crds: dict[tuple[str, str], CrdSchema]) -> list[str]:
    """Everything wrong with ``resource`` according to its schema (CRD or Kubernetes' own)."""
    import kubernetes_validate

    name = name_of(resource)
    key = (resource.get("apiVersion"), resource.get("kind"))
    if key in crds:
        crd = crds[key]
        errors = sorted(crd.validator.iter_errors(resource), key=lambda e: list(e.absolute_path))
        problems = [f"{name}: {_error_text(e)}" for e in errors]
        unchecked = sorted(set(field_paths(resource)) & crd.cel_paths)
        problems += [f"{name}: {'.'.join(p)} has CEL rules (x-kubernetes-validations) that this check cannot "
                     f"evaluate: avoid the field or check it with a server-side dry run" for p in unchecked]
        return problems
    if str(key[0]).startswith("ray.io/") or key[0] is None or key[1] is None:
        return [f"{name}: no schema for apiVersion {key[0]!r} kind {key[1]!r}"]
    try:
        kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.SchemaNotFoundError:
        return [f"{name}: Kubernetes {KUBERNETES_VERSION} has no apiVersion {key[0]!r} kind {key[1]!r}"]
    except kubernetes_validate.ValidationError as e:
        return [f"{name}: {_error_text(e)}"]
    problems = []
    metadata_errors = jsonschema.Draft4Validator(OBJECT_META).iter_errors(resource.get("metadata", {}))
    problems += [f"{name}: metadata.{_error_text(e)}" for e in metadata_errors]
    return problems


# ---- what runs where

def quantity(value) -> float:
    """A Kubernetes quantity (``"8"``, ``500m``, ``64Gi``, ``1.5G``) as a number."""
    text = str(value)
    suffixes = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50,
                "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "m": 1e-3}
    for suffix, factor in suffixes.items():
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * factor
    return float(text)


@dataclass(frozen=True)
class PodTemplate:
    where: str  # "RayJob sprdiff-encode, worker group gpu"
    template: dict
    ray_start_params: dict | None = None  # None: not a Ray pod
    replicas_at_start: int = 1
    replicas_at_most: int = 1  # what the autoscaler may grow the group to

    @property
    def spec(self) -> dict:
        return self.template.get("spec", {})

    @property
    def main_container(self) -> dict:
        containers = self.spec.get("containers") or [{}]
        return containers[0]

    def limit(self, resource: str) -> float:
        resources = self.main_container.get("resources", {})
        value = resources.get("limits", {}).get(resource, resources.get("requests", {}).get(resource, 0))
        return quantity(value)

    def ray_cpus(self) -> float:
        params = self.ray_start_params or {}
        return quantity(params["num-cpus"]) if "num-cpus" in params else self.limit("cpu")

    def ray_gpus(self) -> float:
        params = self.ray_start_params or {}
        return quantity(params["num-gpus"]) if "num-gpus" in params else self.limit("nvidia.com/gpu")


def cluster_pods(where: str, cluster_spec: dict) -> list[PodTemplate]:
    head = cluster_spec.get("headGroupSpec", {})
    pods = [PodTemplate(f"{where}, head", head.get("template", {}), head.get("rayStartParams", {}))]
    for group in cluster_spec.get("workerGroupSpecs", []):
        lo, hi = group.get("minReplicas", 0), group.get("maxReplicas", 2**31 - 1)
        at_start = min(max(group.get("replicas", lo), lo), hi)
        pods.append(PodTemplate(f"{where}, worker group {group.get('groupName')}", group.get("template", {}),
                                group.get("rayStartParams", {}), at_start,
                                hi if cluster_spec.get("enableInTreeAutoscaling") else at_start))
    return pods


def pod_templates(resource: dict) -> list[PodTemplate]:
    kind, spec, where = resource.get("kind"), resource.get("spec", {}), name_of(resource)
    if kind == "RayCluster":
        return cluster_pods(where, spec)
    if kind == "RayJob":
        return cluster_pods(where, spec.get("rayClusterSpec", {}))
    if kind == "RayCronJob":
        return cluster_pods(where, spec.get("jobTemplate", {}).get("rayClusterSpec", {}))
    if kind == "CronJob":
        return [PodTemplate(where, spec.get("jobTemplate", {}).get("spec", {}).get("template", {}))]
    if kind in ("Job", "Deployment", "StatefulSet", "DaemonSet"):
        return [PodTemplate(where, spec.get("template", {}))]
    if kind == "Pod":
        return [PodTemplate(where, {"spec": spec})]
    return []


@dataclass(frozen=True)
class Command:
    """A command line a manifest runs: a Ray job's entrypoint, or a container's command."""

    where: str
    script: str | None  # shell text (entrypoints and `sh -c`), or None with argv given
    argv: tuple[str, ...] | None
    on_cluster: bool  # True: submitted to a Ray cluster (needs --address auto); False: Ray inside the pod
    pods: tuple[PodTemplate, ...]  # the cluster's pods (on_cluster) or the pod itself


def commands(resources: list[dict]) -> list[Command]:
    found = []
    for resource in resources:
        kind, spec, where = resource.get("kind"), resource.get("spec", {}), name_of(resource)
        if kind in ("RayJob", "RayCronJob"):
            job = spec if kind == "RayJob" else spec.get("jobTemplate", {})
            found.append(Command(where, job.get("entrypoint", ""), None, True, tuple(pod_templates(resource))))
        elif kind != "RayCluster":
            for pod in pod_templates(resource):
                for container in pod.spec.get("containers", []):
                    line = [*container.get("command", []), *container.get("args", [])]
                    at = f"{where}, container {container.get('name')}"
                    if len(line) == 3 and os.path.basename(line[0]) in ("sh", "bash") and line[1] == "-c":
                        found.append(Command(at, line[2], None, False, (pod,)))
                    elif line:
                        found.append(Command(at, None, tuple(line), False, (pod,)))
    return found


def settings_env(resources: list[dict], pod: PodTemplate) -> dict[str, str]:
    """The variables a pod's main container gets from ConfigMaps and literal ``env`` values."""
    maps = {r["metadata"]["name"]: r.get("data", {}) for r in resources if r.get("kind") == "ConfigMap"}
    env = {}
    for source in pod.main_container.get("envFrom", []):
        ref = source.get("configMapRef")
        if ref:
            env.update({k: str(v) for k, v in maps.get(ref["name"], {}).items()})
    env.update({e["name"]: str(e["value"]) for e in pod.main_container.get("env", []) if "value" in e})
    return env


SHELL_PRELUDE = """set -eu
sprdiff() { printf '%s\\0' "$@"; printf '\\001'; }
"""


def expand(script: str, env: dict[str, str]) -> list[list[str]]:
    """The argument vectors of the ``sprdiff`` calls ``script`` makes when ``sh`` runs it with ``env``
    (``set -eu``: an undefined variable is an error). ``sprdiff`` is a shell function here that
    prints its arguments, so nothing else of the job runs."""
    base_env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/tmp", "TZ": "UTC"}
    done = subprocess.run(["sh", "-c", SHELL_PRELUDE + script], env={**base_env, **env}, capture_output=True,
                          timeout=30)
    if done.returncode != 0:
        raise ValueError(f"sh failed ({done.returncode}): {done.stderr.decode(errors='replace').strip()}")
    calls = done.stdout.split(b"\x01")
    if calls[-1]:
        raise ValueError(f"the script printed something besides the sprdiff call: {calls[-1]!r}")
    return [[a.decode() for a in call.split(b"\0")[:-1]] for call in calls[:-1]]


def parse_sprdiff(argv: list[str]) -> argparse.Namespace:
    """``sprdiff ARGS...`` parsed by the real CLI parser; a ValueError with argparse's message if it refuses."""
    from jobs.cli import build_parser

    parser = build_parser()
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            args = parser.parse_args(argv)
    except SystemExit as e:
        raise ValueError(f"`sprdiff {' '.join(argv)}` does not parse: {stderr.getvalue().strip() or e}") from None
    # argparse also accepts unique prefixes (--actor for --actors); in a manifest such a prefix
    # breaks as soon as the command gains another option that starts the same way.
    [subparsers] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    options = {s for a in subparsers.choices[argv[0]]._actions for s in a.option_strings}
    given = [a.split("=", 1)[0] for a in argv[1: argv.index("--") if "--" in argv else len(argv)]]
    short = [a for a in given if a.startswith("--") and a not in options]
    if short:
        raise ValueError(f"`sprdiff {argv[0]}` is given abbreviated options {short}: spell them out")
    return args


def command_argv(command: Command, resources: list[dict]) -> list[str]:
    """The one ``sprdiff`` call of a command, without the leading ``sprdiff``."""
    if command.script is not None:
        calls = expand(command.script, settings_env(resources, command.pods[0]))
        if len(calls) != 1:
            raise ValueError(f"runs {len(calls)} sprdiff commands; expected exactly one")
        return calls[0]
    argv = list(command.argv or ())
    if os.path.basename(argv[0]) != "sprdiff":
        raise ValueError(f"runs {argv[0]!r}, not sprdiff")
    return argv[1:]


def demand(args: argparse.Namespace) -> tuple[float, float]:
    """(CPUs, GPUs) a parsed job needs from Ray when it starts; (0, 0) for commands without Ray."""
    if args.command in ("encode-job", "decode-job"):
        from pipeline.config import ComputeConfig

        io_cpus = ComputeConfig().io_cpus
        fewest = (args.actors or (1, None))[0]
        return fewest * args.cpus_per_actor + io_cpus, fewest * args.gpus_per_actor
    if args.command == "train":
        return args.workers * args.cpus_per_worker, args.workers * args.gpus_per_worker
    return 0.0, 0.0


def most_gpus(args: argparse.Namespace) -> float:
    """The GPUs a job's actor pool may grow to (``--actors MIN:MAX``)."""
    if args.command in ("encode-job", "decode-job"):
        fewest, most = args.actors or (1, None)
        return (most or fewest) * args.gpus_per_actor
    return demand(args)[1]


def command_problems(command: Command, resources: list[dict]) -> list[str]:
    """The command must be one parseable ``sprdiff`` call that fits where it runs."""
    try:
        args = parse_sprdiff(command_argv(command, resources))
    except ValueError as e:
        return [f"{command.where}: {e}"]
    problems = []
    uses_ray = args.command in ("encode-job", "decode-job", "train")
    cpus, gpus = demand(args)
    if command.on_cluster:
        if uses_ray and args.address != "auto":
            problems.append(f"{command.where}: `sprdiff {args.command}` runs on the cluster's head: pass "
                            f"--address auto, or it starts a Ray of its own there")
        have_cpus = sum(p.ray_cpus() * p.replicas_at_start for p in command.pods)
        have_gpus = sum(p.ray_gpus() * p.replicas_at_start for p in command.pods)
        can_grow_to = sum(p.ray_gpus() * p.replicas_at_most for p in command.pods)
        if most_gpus(args) > can_grow_to:
            problems.append(f"{command.where}: `sprdiff {args.command}` may grow to {most_gpus(args):g} GPUs, its "
                            f"cluster can grow to {can_grow_to:g}")
    else:
        if uses_ray and args.address is not None:
            problems.append(f"{command.where}: runs Ray inside its pod, so it takes no --address")
        pod = command.pods[0]
        have_cpus, have_gpus = pod.limit("cpu"), pod.limit("nvidia.com/gpu")
        if args.command in ("encode-job", "decode-job"):
            if args.num_cpus is None:
                problems.append(f"{command.where}: pass --num-cpus (the pod's {have_cpus:g} CPUs): inside a "
                                f"container Ray would count the node's CPUs")
            elif args.num_cpus > have_cpus:
                problems.append(f"{command.where}: --num-cpus {args.num_cpus} is more than the pod's "
                                f"{have_cpus:g} CPUs")
    if gpus > have_gpus:
        problems.append(f"{command.where}: `sprdiff {args.command}` needs {gpus:g} GPUs when it starts, its "
                        f"cluster starts with {have_gpus:g}")
    if cpus > have_cpus:
        problems.append(f"{command.where}: `sprdiff {args.command}` needs {cpus:g} CPUs when it starts, its "
                        f"cluster starts with {have_cpus:g}")
    return problems


# ---- pods, jobs, secrets

def pod_problems(pod: PodTemplate, resources: list[dict], secret_name: str) -> list[str]:
    where, spec, container = pod.where, pod.spec, pod.main_container
    problems = []
    if not spec.get("containers"):
        return [f"{where}: no containers"]
    image = str(container.get("image", ""))
    tag = image.rsplit("/", 1)[-1].partition(":")[2]
    if "@sha256:" not in image and (not tag or tag == "latest"):
        problems.append(f"{where}: image {image!r} is not pinned to a tag or digest (set it with `images:`)")
    security = spec.get("securityContext", {})
    if security.get("runAsNonRoot") is not True or security.get("runAsUser", 1000) == 0:
        problems.append(f"{where}: the pod must set securityContext.runAsNonRoot: true (and no runAsUser 0)")
    memory = pod.limit("memory")
    shm_volumes = {m["name"] for m in container.get("volumeMounts", []) if m.get("mountPath") == "/dev/shm"}
    shm = [v for v in spec.get("volumes", []) if v.get("name") in shm_volumes]
    if not shm or shm[0].get("emptyDir", {}).get("medium") != "Memory":
        problems.append(f"{where}: /dev/shm must be a memory-backed emptyDir (Ray's object store lives there)")
    else:
        size = quantity(shm[0]["emptyDir"].get("sizeLimit", 0))
        if not memory or size < SHM_FRACTION * memory:
            problems.append(f"{where}: /dev/shm sizeLimit {shm[0]['emptyDir'].get('sizeLimit')} is under "
                            f"{SHM_FRACTION:.0%} of the memory limit, the object store Ray creates by default")
    configmaps = {r["metadata"]["name"] for r in resources if r.get("kind") == "ConfigMap"}
    refs = container.get("envFrom", [])
    for ref in refs:
        if "configMapRef" in ref and ref["configMapRef"]["name"] not in configmaps:
            problems.append(f"{where}: envFrom ConfigMap {ref['configMapRef']['name']!r} is not in the rendered set")
    if {"secretRef": {"name": secret_name}} not in refs:
        problems.append(f"{where}: object-store credentials must come from envFrom secretRef {secret_name!r}")
    for c in [*spec.get("containers", []), *spec.get("initContainers", [])]:
        for e in c.get("env", []):
            if SECRET_LIKE.search(e.get("name", "")) and "value" in e:
                problems.append(f"{where}: container {c.get('name')} sets {e['name']} inline: use a Secret")
    return problems


def job_policy_problems(resource: dict) -> list[str]:
    kind, spec, where = resource.get("kind"), resource.get("spec", {}), name_of(resource)
    problems = []
    if kind in ("RayJob", "RayCronJob"):
        job = spec if kind == "RayJob" else spec.get("jobTemplate", {})
        if job.get("shutdownAfterJobFinishes") is not True:
            problems.append(f"{where}: set shutdownAfterJobFinishes: true (the job's cluster holds GPUs)")
        if not job.get("backoffLimit", 0) >= 1:
            problems.append(f"{where}: set backoffLimit >= 1: a retry resumes the job")
        if not job.get("activeDeadlineSeconds", 0) > 0:
            problems.append(f"{where}: set activeDeadlineSeconds, or a hung job holds its GPUs forever")
        if kind == "RayJob" and not resource.get("metadata", {}).get("labels", {}).get("sprdiff.io/job"):
            problems.append(f"{where}: label sprdiff.io/job missing (jobs are created with -l sprdiff.io/job=NAME)")
    if kind == "CronJob":
        job = spec.get("jobTemplate", {}).get("spec", {})
        if spec.get("concurrencyPolicy") != "Forbid":
            problems.append(f"{where}: concurrencyPolicy must be Forbid: two runs would write the same output")
        if not job.get("activeDeadlineSeconds", 0) > 0 or "backoffLimit" not in job:
            problems.append(f"{where}: set the Job's activeDeadlineSeconds and backoffLimit")
    if kind == "RayCluster":
        for group in spec.get("workerGroupSpecs", []):
            lo, hi = group.get("minReplicas", 0), group.get("maxReplicas", 0)
            if not 0 <= lo <= group.get("replicas", lo) <= hi:
                problems.append(f"{where}: worker group {group.get('groupName')}: need "
                                f"0 <= minReplicas <= replicas <= maxReplicas")
    for pod in pod_templates(resource):
        if pod.where.endswith(", head") and pod.limit("nvidia.com/gpu"):
            problems.append(f"{pod.where}: the head is CPU-only")
    return problems


def configmap_problems(resource: dict) -> list[str]:
    if resource.get("kind") != "ConfigMap":
        return []
    return [f"{name_of(resource)}: {key} looks like a credential: put it in the Secret"
            for key in resource.get("data", {}) if SECRET_LIKE.search(key)]


def referenced_files() -> set[Path]:
    """Every file a kustomization under infra/k8s names (resources, patches, components), resolved."""
    found = set()
    for kustomization in K8S.rglob("kustomization.yaml"):
        doc = load_yaml_documents(kustomization)[0]
        entries = [*doc.get("resources", []), *doc.get("components", []),
                   *(p["path"] for p in doc.get("patches", []) if "path" in p)]
        for entry in entries:
            path = (kustomization.parent / entry).resolve()
            found.add(path / "kustomization.yaml" if path.is_dir() else path)
    return found
