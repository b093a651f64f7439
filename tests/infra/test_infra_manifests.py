"""The Kubernetes manifests (infra/k8s): every overlay rendered by the real kustomize, validated
strictly against the KubeRay CRDs and Kubernetes' schemas, every command in them parsed by the
real ``sprdiff`` parser and sized against its cluster (the checks live in infra_checks.py)."""

from __future__ import annotations

import copy
import shutil

import infra_checks as ic
import pytest
import yaml

OVERLAYS = [d.name for d in ic.overlay_dirs()]
PLATFORM_OVERLAYS = [o for o in OVERLAYS if not o.endswith("-jobs")]
JOBS_OVERLAYS = [o for o in OVERLAYS if o.endswith("-jobs")]
# The jobs the issue asks for, by their sprdiff.io/job label, and the subcommands they run.
JOBS = {"encode": "encode-job", "decode": "decode-job", "make-shards": "make-shards",
        "train-stage1": "train", "train-stage2": "train", "train-stage2-lambda4": "train",
        "train-stage2-lambda2": "train"}
NIGHTLY = "sprdiff-nightly-archive"


@pytest.fixture(scope="module")
def crds():
    if not ic.CRD_DIR.is_dir():
        pytest.skip(f"{ic.CRD_DIR} is absent: the KubeRay CRDs (../shared/k8s/crds) are not beside this checkout")
    return ic.load_crds()


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    if ic.kustomize_command() is None:
        pytest.skip("rendering the overlays needs kustomize, or kubectl >= 1.27 (kustomize v5), on PATH")
    return {d.name: ic.render(d) for d in ic.overlay_dirs()}


@pytest.fixture(scope="module")
def secret_name() -> str:
    return ic.load_yaml_documents(ic.SECRET_TEMPLATE)[0]["metadata"]["name"]


def by_kind(resources: list[dict], kind: str) -> list[dict]:
    return [r for r in resources if r.get("kind") == kind]


def report(problems: list[str]) -> str:
    return f"{len(problems)} problem(s):\n" + "\n".join(problems)


def test_the_overlays_are_the_documented_ones():
    assert OVERLAYS == ["dev", "dev-jobs", "prod", "prod-jobs"]


# ---- schemas

@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_matches_the_crd_and_kubernetes_schemas(overlay, rendered, crds):
    resources = rendered[overlay]
    assert resources, f"{overlay} renders nothing"
    problems = [p for r in resources for p in ic.schema_problems(r, crds)]
    assert not problems, report(problems)


@pytest.mark.parametrize(("fixture", "expected"), [
    ("broken-rayjob.yaml", "'shutdownAfterJobFinish' was unexpected"),
    ("broken-raycluster-pod.yaml", "'volumeMount' was unexpected"),
    ("broken-cronjob.yaml", "'concurencyPolicy' was unexpected"),
])
def test_a_misspelled_field_fails_validation(fixture, expected, crds):
    [resource] = ic.load_yaml_documents(ic.FIXTURES / fixture)
    problems = ic.schema_problems(resource, crds)
    assert any(expected in p for p in problems), report(problems)


def test_a_typo_in_a_base_manifest_fails_every_overlay_that_renders_it(tmp_path, rendered, crds):
    """End to end: a misspelled field in base/raycluster.yaml reaches the RayCluster and, through
    the copied pod templates, every RayJob; the rendered overlay fails validation."""
    tree = tmp_path / "k8s"
    shutil.copytree(ic.K8S, tree)
    base = tree / "base" / "raycluster.yaml"
    base.write_text(base.read_text().replace("              volumeMounts:", "              volumeMount:", 1))
    problems = [p for r in ic.render(tree / "overlays" / "prod-jobs") for p in ic.schema_problems(r, crds)]
    broken = {p.split(":")[0] for p in problems if "'volumeMount' was unexpected" in p}
    assert broken == {"RayCluster sprdiff", "RayJob sprdiff-encode", "RayJob sprdiff-decode",
                      "RayJob sprdiff-train-stage1", "RayJob sprdiff-train-stage2",
                      "RayJob sprdiff-train-stage2-lambda4", "RayJob sprdiff-train-stage2-lambda2",
                      "RayCronJob sprdiff-nightly-archive"}, report(problems)


@pytest.mark.parametrize(("fixture", "typo", "field"), [
    ("broken-rayjob.yaml", "shutdownAfterJobFinish", "shutdownAfterJobFinishes"),
    ("broken-cronjob.yaml", "concurencyPolicy", "concurrencyPolicy"),
])
def test_the_broken_fixtures_fail_only_for_their_typo(fixture, typo, field, crds):
    [resource] = ic.load_yaml_documents(ic.FIXTURES / fixture)
    resource["spec"][field] = resource["spec"].pop(typo)
    assert ic.schema_problems(resource, crds) == []


def test_strictness_stops_at_preserve_unknown_fields():
    schema = {"type": "object", "properties": {
        "metadata": {"type": "object"},
        "spec": {"type": "object", "properties": {
            "strict": {"type": "object", "properties": {"a": {"type": "string"}}},
            "open": {"type": "object", "properties": {"a": {"type": "string"}},
                     "x-kubernetes-preserve-unknown-fields": True},
            "map": {"type": "object", "additionalProperties": {"type": "string"}}}}}}
    validator = ic.jsonschema.Draft4Validator(ic.strict_schema(schema))
    ok = {"metadata": {"name": "x"}, "spec": {"strict": {"a": "1"}, "open": {"b": 2}, "map": {"any": "v"}}}
    assert list(validator.iter_errors(ok)) == []
    assert [e.message for e in validator.iter_errors({"metadata": {"name": "x"}, "spec": {"strict": {"b": 1}}})] \
        == ["Additional properties are not allowed ('b' was unexpected)"]
    assert list(validator.iter_errors({"metadata": {"name": "x", "labelz": {}}}))


def test_fields_with_unevaluated_cel_rules_are_reported(crds):
    [resource] = ic.load_yaml_documents(ic.FIXTURES / "broken-rayjob.yaml")
    resource["spec"]["shutdownAfterJobFinishes"] = resource["spec"].pop("shutdownAfterJobFinish")
    resource["spec"]["deletionStrategy"] = {"onSuccess": {"policy": "DeleteCluster"},
                                            "onFailure": {"policy": "DeleteNone"}}
    problems = ic.schema_problems(resource, crds)
    assert any("spec.deletionStrategy has CEL rules" in p for p in problems), report(problems)


# ---- commands

def test_every_job_command_is_registered_in_the_cli():
    from jobs.cli import build_parser

    parser = build_parser()
    [subparsers] = [a for a in parser._actions if a.dest == "command"]
    missing = sorted(set(JOBS.values()) - set(subparsers.choices))
    assert not missing, f"`sprdiff {', '.join(missing)}` not registered in jobs/cli.py build_parser()"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_command_is_one_parseable_sprdiff_call_that_fits_its_cluster(overlay, rendered):
    resources = rendered[overlay]
    commands = ic.commands(resources)
    assert commands, f"{overlay}: no commands found"
    problems = [p for c in commands for p in ic.command_problems(c, resources)]
    assert not problems, report(problems)


@pytest.mark.parametrize("overlay", JOBS_OVERLAYS)
def test_the_jobs_overlays_hold_one_rayjob_per_job(overlay, rendered):
    resources = rendered[overlay]
    jobs = {r["metadata"]["labels"]["sprdiff.io/job"]: r for r in by_kind(resources, "RayJob")}
    assert sorted(jobs) == sorted(JOBS)
    for label, job in jobs.items():
        [command] = ic.commands([job])
        args = ic.parse_sprdiff(ic.command_argv(command, resources))
        assert args.command == JOBS[label], f"{label} runs sprdiff {args.command}"
    train2 = ic.parse_sprdiff(ic.command_argv(ic.commands([jobs["train-stage2"]])[0], resources))
    train1 = ic.parse_sprdiff(ic.command_argv(ic.commands([jobs["train-stage1"]])[0], resources))
    assert (train1.stage, train2.stage) == (1, 2)
    assert train2.model == train1.output.rstrip("/") + "/model", "stage 2 must start from stage 1's model"
    assert train1.resume and train2.resume, "a retried training job must resume from its checkpoints"
    rates = {}
    for label in ("train-stage2", "train-stage2-lambda4", "train-stage2-lambda2"):
        args = ic.parse_sprdiff(ic.command_argv(ic.commands([jobs[label]])[0], resources))
        assert args.model == train2.model and args.recipe == train1.recipe == "paper" and args.resume
        rates[args.lambda_rate] = args.output
    assert sorted(rates) == [2, 4, 8] and len(set(rates.values())) == 3, "one output per rate point"


@pytest.mark.parametrize("overlay", PLATFORM_OVERLAYS)
def test_applying_a_platform_overlay_starts_no_job_and_schedules_one_nightly_run(overlay, rendered):
    resources = rendered[overlay]
    assert by_kind(resources, "RayJob") == [], "`kubectl apply -k` of a platform overlay must not start jobs"
    nightly = [r for r in resources if r["kind"] in ("RayCronJob", "CronJob")]
    assert [r["metadata"]["name"] for r in nightly] == [NIGHTLY]
    [command] = ic.commands(nightly)
    args = ic.parse_sprdiff(ic.command_argv(command, resources))
    assert args.command == "encode-job"
    bucket = ic.settings_env(resources, command.pods[0])["SPRDIFF_BUCKET"]
    assert args.input.startswith(f"{bucket}/incoming/") and args.output.startswith(f"{bucket}/archive/daily/")
    assert args.input.rstrip("/").rsplit("/", 1)[1] == args.output.rstrip("/").rsplit("/", 1)[1]


def test_the_dev_and_prod_overlays_differ_only_in_their_parameters(rendered):
    dev, prod = rendered["dev-jobs"], rendered["prod-jobs"]
    entrypoints = {o: {r["metadata"]["name"]: r["spec"]["entrypoint"] for r in by_kind(rendered[o], "RayJob")}
                   for o in ("dev-jobs", "prod-jobs")}
    assert entrypoints["dev-jobs"] == entrypoints["prod-jobs"]
    assert {r["metadata"]["namespace"] for r in dev} == {"sprdiff-dev"}
    assert {r["metadata"]["namespace"] for r in prod} == {"sprdiff"}


def _job(resources: list[dict], label: str) -> dict:
    return next(r for r in by_kind(resources, "RayJob") if r["metadata"]["labels"]["sprdiff.io/job"] == label)


@pytest.mark.parametrize(("change", "expected"), [
    (lambda e: e.replace("--actors 1:16", "--actorz 1:16"), "does not parse"),
    (lambda e: e.replace("--actors 1:16", "--actor 1:16"), "abbreviated options ['--actor']"),
    (lambda e: e.replace("--actors 1:16", "--actors 16:1"), "does not parse"),
    (lambda e: e.replace("encode-job", "encode-jobs"), "invalid choice: 'encode-jobs'"),
    (lambda e: e.replace("$SPRDIFF_BUCKET", "$SPRDIFF_BUCKT"), "SPRDIFF_BUCKT"),
    (lambda e: e.replace('--input "', '--input "s3://x'), ""),  # still parses: no problem expected
    (lambda e: e.replace(" --address auto", ""), "pass --address auto"),
    (lambda e: e.replace("--actors 1:16", "--actors 2:16"), "needs 2 GPUs when it starts, its cluster starts with 1"),
    (lambda e: e.replace("--actors 1:16", "--actors 1:32"), "may grow to 32 GPUs, its cluster can grow to 16"),
    (lambda e: e + "; sprdiff info x", "runs 2 sprdiff commands"),
    (lambda e: e.replace('"$SPRDIFF_BUCKET/corpus/"', '"$SPRDIFF_BUCKET/a b/"'), ""),  # quoting holds: one arg
])
def test_the_command_check_catches_mistakes(change, expected, rendered):
    resources = copy.deepcopy(rendered["prod-jobs"])
    job = _job(resources, "encode")
    job["spec"]["entrypoint"] = change(job["spec"]["entrypoint"])
    [command] = ic.commands([job])
    problems = ic.command_problems(command, resources)
    if expected:
        assert any(expected in p for p in problems), report(problems)
    else:
        assert problems == []


def test_the_command_check_catches_an_embedded_ray_without_num_cpus(rendered):
    resources = copy.deepcopy(rendered["dev"])
    [cron] = by_kind(resources, "CronJob")
    container = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    container["command"][2] = container["command"][2].replace("--num-cpus 8", "")
    [command] = ic.commands([cron])
    problems = ic.command_problems(command, resources)
    assert any("pass --num-cpus" in p for p in problems), report(problems)


def test_expand_runs_the_script_like_the_pod_shell():
    calls = ic.expand('sprdiff eval --input "$B/x y/" --output "$(echo out)"', {"B": "s3://b"})
    assert calls == [["eval", "--input", "s3://b/x y/", "--output", "out"]]


# ---- pods, policies, files

@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pod_has_shared_memory_runs_as_non_root_and_reads_credentials_from_the_secret(
        overlay, rendered, secret_name):
    resources = rendered[overlay]
    pods = [p for r in resources for p in ic.pod_templates(r)]
    assert pods
    problems = [p for pod in pods for p in ic.pod_problems(pod, resources, secret_name)]
    assert not problems, report(problems)


@pytest.mark.parametrize(("change", "expected"), [
    (lambda spec: spec["volumes"][0]["emptyDir"].update(sizeLimit="1Gi"), "under 30% of the memory limit"),
    (lambda spec: spec["volumes"][0]["emptyDir"].pop("medium"), "memory-backed emptyDir"),
    (lambda spec: spec["containers"][0].setdefault("env", []).append({"name": "AWS_SECRET_ACCESS_KEY",
                                                                        "value": "x"}), "inline"),
    (lambda spec: spec["containers"][0]["envFrom"].pop(), "envFrom secretRef"),
    (lambda spec: spec["securityContext"].pop("runAsNonRoot"), "runAsNonRoot"),
    (lambda spec: spec["containers"][0].update(image="registry.example.com/sprdiff"), "not pinned"),
])
def test_the_pod_check_catches_mistakes(change, expected, rendered, secret_name):
    resources = copy.deepcopy(rendered["prod"])
    [cluster] = by_kind(resources, "RayCluster")
    change(cluster["spec"]["headGroupSpec"]["template"]["spec"])
    problems = ic.pod_problems(ic.pod_templates(cluster)[0], resources, secret_name)
    assert any(expected in p for p in problems), report(problems)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_jobs_clean_up_retry_and_have_deadlines(overlay, rendered):
    problems = [p for r in rendered[overlay] for p in ic.job_policy_problems(r) + ic.configmap_problems(r)]
    assert not problems, report(problems)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_resource_is_labelled_as_part_of_sprdiff(overlay, rendered):
    unlabelled = [ic.name_of(r) for r in rendered[overlay]
                  if r["metadata"].get("labels", {}).get("app.kubernetes.io/part-of") != "sprdiff"]
    assert not unlabelled


def test_the_policy_check_catches_a_job_that_keeps_its_cluster(rendered):
    job = copy.deepcopy(_job(rendered["prod-jobs"], "decode"))
    job["spec"]["shutdownAfterJobFinishes"] = False
    del job["spec"]["activeDeadlineSeconds"]
    problems = ic.job_policy_problems(job)
    assert len(problems) == 2, report(problems)


@pytest.mark.parametrize("overlay", PLATFORM_OVERLAYS)
def test_the_raycluster_has_a_cpu_head_and_an_autoscaling_gpu_group(overlay, rendered):
    [cluster] = by_kind(rendered[overlay], "RayCluster")
    assert cluster["spec"]["enableInTreeAutoscaling"] is True
    head, *workers = ic.pod_templates(cluster)
    assert head.ray_gpus() == 0 and head.ray_cpus() == 0
    [gpu] = [g for g in cluster["spec"]["workerGroupSpecs"] if g["groupName"] == "gpu"]
    assert gpu["minReplicas"] < gpu["maxReplicas"]
    assert all(w.ray_gpus() >= 1 for w in workers)


def test_every_manifest_file_is_rendered_by_some_overlay():
    referenced = ic.referenced_files()
    overlay_roots = {d / "kustomization.yaml" for d in ic.overlay_dirs()}
    files = {p.resolve() for p in ic.K8S.rglob("*.yaml")} - {ic.SECRET_TEMPLATE.resolve()}
    orphans = sorted(str(p.relative_to(ic.REPO)) for p in files - referenced - overlay_roots)
    assert not orphans, f"not in any kustomization, so never validated or deployed: {orphans}"


def test_the_secret_template_is_valid_holds_no_credentials_and_is_never_deployed(crds, secret_name):
    [secret] = ic.load_yaml_documents(ic.SECRET_TEMPLATE)
    assert secret["kind"] == "Secret" and secret_name == "sprdiff-object-store"
    assert ic.schema_problems(secret, crds) == []
    assert set(secret["stringData"]) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    assert all(v == "" for v in secret["stringData"].values())
    assert ic.SECRET_TEMPLATE.resolve() not in ic.referenced_files()


KUSTOMIZATION_FIELDS = {"apiVersion", "kind", "namespace", "resources", "components", "patches", "images",
                        "labels", "replacements"}


def test_the_kustomizations_are_well_formed():
    for path in ic.K8S.rglob("kustomization.yaml"):
        [doc] = ic.load_yaml_documents(path)
        where = path.relative_to(ic.REPO)
        assert (doc.get("apiVersion"), doc.get("kind")) in {
            ("kustomize.config.k8s.io/v1beta1", "Kustomization"),
            ("kustomize.config.k8s.io/v1alpha1", "Component")}, where
        assert set(doc) <= KUSTOMIZATION_FIELDS, f"{where}: unexpected fields {set(doc) - KUSTOMIZATION_FIELDS}"
        for entry in [*doc.get("resources", []), *doc.get("components", [])]:
            assert (path.parent / entry).exists(), f"{where}: {entry} does not exist"


def test_the_yaml_files_parse_as_yaml():
    for path in ic.K8S.rglob("*.yaml"):
        with open(path) as f:
            list(yaml.safe_load_all(f))
